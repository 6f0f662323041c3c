"""The ``local`` snapshot provider: volume directories copied into a store on this machine."""

from .provider import LocalProvider
from .settings import LocalSettings, LocalVolume

__all__ = ["LocalProvider", "LocalSettings", "LocalVolume"]
