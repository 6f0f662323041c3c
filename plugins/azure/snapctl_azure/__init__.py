"""snapctl provider plugin: incremental snapshots of Azure managed disks.

Importing this package imports no azure module: the SDK loads on the provider's first call.
"""

from snapctl_azure.provider import AzureProvider
from snapctl_azure.settings import AzureSettings, AzureVolume

__all__ = ["AzureProvider", "AzureSettings", "AzureVolume"]
