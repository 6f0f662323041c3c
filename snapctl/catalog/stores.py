"""Which catalog an inventory names, and its store: an S3 bucket (``catalog.url``, boto3 imported
only then), a directory (``catalog.path``), or the per-user default under $XDG_STATE_HOME (snapctl.state_home)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from snapctl.catalog.catalog import Catalog
from snapctl.catalog.local import LocalBlobStore
from snapctl.errors import BadInputError, InventoryError
from snapctl.state_home import snapctl_state_dir

if TYPE_CHECKING:
    from snapctl.config import Inventory


def default_catalog_dir() -> Path:
    return snapctl_state_dir() / "catalog"


def check_catalog(inventory: Inventory) -> None:
    """The inventory's catalog block, refused as bad input (exit 2, naming file:line) where every
    command that opens the catalog would fail on it: both keys, a url that is no s3 url or carries
    a user and password, a path below a file; and no block where the default directory is below a
    file. Reads no catalog: `snapctl status` checks it before
    asking anything, as it checks the provider block."""
    config = inventory.catalog
    if config.url and config.path:
        raise InventoryError(f"{inventory.where('catalog')}: catalog: set either 'path' or 'url', not both",
                             hint="path: a local directory; url: s3://bucket/prefix for a shared catalog")
    if config.url:
        if not config.url.startswith("s3://"):
            raise InventoryError(f"{inventory.where('catalog', 'url')}: catalog.url {config.url!r} is not supported",
                                 hint="use s3://bucket/prefix, or catalog.path")
        from snapctl.catalog.s3 import parse_s3_url  # no boto3: that comes with the store

        try:
            parse_s3_url(config.url)
        except BadInputError as exc:
            raise inventory.located(exc, "catalog", "url") from None
    elif config.path:
        root = inventory.resolve(config.path)
        dangling = _dangling_symlink(root)
        if dangling is not None:
            link, target = dangling
            where = f"{root}" if link == root else f"{root}: {link}"
            raise InventoryError(f"{inventory.where('catalog', 'path')}: catalog.path {where} is a dangling "
                                 f"symlink (to {target}, which does not exist)",
                                 hint=f"create its target (mkdir -p {target}), or fix catalog.path")
        existing = _nearest_existing(root)
        # A file there failed every command later, as "cannot read <root>/<cluster>/index.json: not a directory".
        if existing is not None and not stat.S_ISDIR(existing[1].st_mode):
            found, _ = existing
            where = f"{root}" if found == root else f"{root}: {found}"
            raise InventoryError(f"{inventory.where('catalog', 'path')}: catalog.path {where} is not a directory",
                                 hint="set catalog.path to a directory; snapctl creates it if it is missing")
    else:
        root = default_catalog_dir()
        dangling = _dangling_symlink(root)
        if dangling is not None:
            link, target = dangling
            raise BadInputError(f"the default catalog directory {root}: {link} is a dangling symlink (to {target}, "
                                "which does not exist)",
                                hint=f"create its target (mkdir -p {target}), or set catalog.path in the inventory")
        existing = _nearest_existing(root)
        if existing is not None and not stat.S_ISDIR(existing[1].st_mode):
            found, _ = existing
            raise BadInputError(f"the default catalog directory {root} is not a directory: {found} is a file",
                                hint=f"move {found} out of the way, or set catalog.path in the inventory")


def _dangling_symlink(path: Path) -> tuple[Path, Path] | None:
    """The symlink on ``path`` (itself or a directory above it) whose target does not exist, and
    that target; None where there is none. The catalog's first write cannot make a directory
    there (mkdir says "file exists"), and reads found an empty catalog."""
    for candidate in (path, *path.parents):
        try:
            os.stat(candidate)
            return None  # this one exists: the symlinks above it, if any, lead somewhere
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(candidate):
                return candidate, candidate.parent / os.readlink(candidate)
        except OSError:
            return None
    return None


def _nearest_existing(path: Path) -> tuple[Path, os.stat_result] | None:
    """``path``, or the nearest directory above it that exists, which the catalog's first write
    makes the rest below; None where that cannot be told (a directory this user may not search:
    the catalog's own errors say so, naming the key they could not read)."""
    for candidate in (path, *path.parents):
        try:
            return candidate, os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
    return None


def open_catalog(inventory: Inventory) -> Catalog:
    """The catalog the inventory names: ``catalog.url`` (s3://), ``catalog.path``, else the per-user default."""
    check_catalog(inventory)
    config = inventory.catalog
    if config.url:
        # --- shared catalogs: the S3 store (boto3 is imported only here, on demand) -----------
        from snapctl.catalog.s3 import S3BlobStore

        store = S3BlobStore(config.url, endpoint_url=config.endpoint_url, region=config.region)
        return Catalog(store, inventory.cluster)
    root = inventory.resolve(config.path) if config.path else default_catalog_dir()
    return Catalog(LocalBlobStore(root), inventory.cluster)
