"""The local provider's inventory blocks: ``provider:`` settings and each node's ``volumes:``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from snapctl.errors import BadInputError
from snapctl.providers import ProviderSettings
from snapctl.state_home import snapctl_state_dir
from snapctl.yaml_errors import NAME_PATTERN, Given

# Volume names become directory and snapshot-id parts, so they stay filename-safe.
VOLUME_NAME = re.compile(NAME_PATTERN)


class LocalSettings(ProviderSettings):
    """``provider: {type: local, store: DIR, reflink: auto|always|never}``."""

    type: Literal["local"] = "local"
    store: Given | None = None  # relative to the inventory's directory; default under $XDG_STATE_HOME
    reflink: Literal["auto", "always", "never"] = "auto"


class LocalVolume(BaseModel):
    """One directory on the node that gets snapshotted as a unit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: Path  # absolute


def default_store() -> Path:
    return snapctl_state_dir() / "snapshots"


def nearest_existing(path: Path) -> Path:
    """``path``, or the nearest of its parents that exists (what a mkdir -p of it would start from)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def resolve_store(settings: LocalSettings, base_dir: Path) -> Path:
    """The store's directory. It need not exist yet (the first snapshot creates it), but the
    nearest part of its path that does must be a directory: found now, not by a traceback later."""
    if settings.store:
        store = Path(os.path.expanduser(settings.store))
        store = store if store.is_absolute() else (base_dir / store)
    else:
        store = default_store()
    existing = nearest_existing(store)
    if not existing.is_dir():
        raise BadInputError(f"provider.store {store}: {existing} is not a directory",
                            hint="set provider.store to a directory; snapctl creates it if it is missing")
    return store


def parse_volumes(node: str, raw: list[Any], *, base_dir: Path) -> list[LocalVolume]:
    """Turn a node's ``volumes:`` list into checked volumes, or raise a one-line BadInputError."""
    if not raw:
        raise BadInputError(
            f"node {node}: no volumes listed",
            hint="add e.g. volumes: [{name: data, path: /var/lib/db}] to the node",
        )
    volumes: list[LocalVolume] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(raw):
        name, raw_path = _name_and_path(node, index, item)
        path = Path(os.path.expanduser(raw_path))
        path = path if path.is_absolute() else base_dir / path
        path = Path(os.path.abspath(path))
        if not VOLUME_NAME.match(name):
            raise BadInputError(
                f"node {node}: volume name {name!r} (volumes[{index}]) must be letters, digits, '.', '_' or '-'",
                hint="give the volume an explicit name: {name: data, path: ...}",
            )
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise BadInputError(f"node {node}: volume {name} path {path} {what}")
        if name in seen:
            raise BadInputError(
                f"node {node}: volume name {name!r} is used twice ({seen[name]} and {path})",
                hint="volume names must be unique per node; set name: explicitly",
            )
        seen[name] = str(path)
        volumes.append(LocalVolume(name=name, path=path))
    return volumes


def _name_and_path(node: str, index: int, item: Any) -> tuple[str, str]:
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        return Path(text.rstrip("/") or "/").name, text
    if isinstance(item, LocalVolume):
        return item.name, str(item.path)
    if isinstance(item, dict):
        unknown = sorted(set(item) - {"name", "path"})
        if unknown:
            raise BadInputError(f"node {node}: volumes[{index}]: unknown key {unknown[0]!r} (valid keys: name, path)")
        path = item.get("path")
        if path is not None and not isinstance(path, str):  # `path: yes` is there, and no path
            raise BadInputError(f"node {node}: volumes[{index}]: path must be a directory path, not "
                                f"{type(path).__name__} {path!r}", hint="e.g. {name: data, path: /var/lib/db}")
        if not path:
            raise BadInputError(f"node {node}: volumes[{index}] needs a 'path'", hint="e.g. {name: data, path: /var/lib/db}")
        name = item.get("name")
        if name is None:
            name = Path(path.rstrip("/") or "/").name
        if not isinstance(name, str):
            raise BadInputError(f"node {node}: volumes[{index}].name must be a string")
        return name, path
    raise BadInputError(
        f"node {node}: volumes[{index}] must be a path or {{name, path}}, not {type(item).__name__}",
    )
