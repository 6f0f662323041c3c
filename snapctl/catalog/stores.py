"""Which catalog an inventory names, and its store: an S3 bucket (``catalog.url``, boto3 imported
only then), a directory (``catalog.path``), or the per-user default under $XDG_STATE_HOME."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from snapctl.catalog.catalog import Catalog
from snapctl.catalog.local import LocalBlobStore
from snapctl.errors import BadInputError

if TYPE_CHECKING:
    from snapctl.config import Inventory


def default_catalog_dir() -> Path:
    state_home = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state_home) if state_home and os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "snapctl" / "catalog"


def open_catalog(inventory: Inventory) -> Catalog:
    """The catalog the inventory names: ``catalog.url`` (s3://), ``catalog.path``, else the per-user default."""
    config = inventory.catalog
    if config.url:
        if config.path:
            raise BadInputError("catalog: set either 'path' or 'url', not both")
        # --- shared catalogs: the S3 store (boto3 is imported only here, on demand) -----------
        if config.url.startswith("s3://"):
            from snapctl.catalog.s3 import S3BlobStore

            store = S3BlobStore(config.url, endpoint_url=config.endpoint_url, region=config.region)
            return Catalog(store, inventory.cluster)
        raise BadInputError(f"catalog url {config.url!r} is not supported", hint="use s3://bucket/prefix, or catalog.path")
    root = inventory.resolve(config.path) if config.path else default_catalog_dir()
    return Catalog(LocalBlobStore(root), inventory.cluster)
