"""snapctl: consistent disk snapshots across a database cluster."""

__version__ = "0.1.0"
