"""snapctl provider plugin: persistent-disk snapshots on Google Compute Engine.

Importing this package imports no Google module: the SDK (about 1.7 s to import) loads on the
provider's first call to GCP.
"""

from snapctl_gcp.provider import GcpProvider
from snapctl_gcp.settings import GcpSettings, GcpVolume

__all__ = ["GcpProvider", "GcpSettings", "GcpVolume"]
