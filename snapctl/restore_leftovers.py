"""What restores killed outright (SIGKILL, the OOM killer) left beside their targets, for `snapctl gc`.

A local restore copies each volume into a hidden staging directory beside its target, with a
marker naming the restore's process; killed, it leaves both, a full-size copy nothing lists. A
rerun into the same place clears them; a restore run elsewhere instead never would. The catalog's
unfinished restore records say where each restore went (``--to DIR``, or each node's
``restore.path``), and the provider judges each place by its marker: only a restore whose process
is proven gone from this host (``drill_leftovers.gone_from_this_host``) counts, never a running one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from snapctl.errors import SnapctlError
from snapctl.evidence import volume_roots
from snapctl.units import human_bytes

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.config import Inventory
    from snapctl.providers import Provider

EACH_NODE = "each node's restore target"  # RestoreRecord.target without --to


def find_killed_restores(catalog: Catalog, inventory: Inventory, provider: Provider) -> list[tuple[str, str]]:
    """(target, one line on what its killed restore left there), for the places of every unfinished
    restore record; none for a provider that restores into no directories."""
    find = getattr(provider, "find_killed_restores", None)
    if find is None:
        return []
    places: set[str] = set()
    for key in catalog.store.list(f"{catalog.cluster}/restores/"):
        try:
            record = json.loads(catalog.store.read(key) or b"null")
        except (ValueError, SnapctlError):
            continue  # unreadable: nothing to go by
        if isinstance(record, dict) and not record.get("finished_at"):
            places |= _places(str(record.get("target") or ""), inventory)
    return [(target, f"{target}: a killed restore's staging copy {staging or '(gone)'}, {human_bytes(size)}, and "
                     "its marker") for target, staging, size in find(sorted(places))]


def clean_killed_restores(provider: Provider, found: list[tuple[str, str]], failed: dict[str, str],
                          check: Callable[[], None]) -> list[str]:
    """Remove what ``find_killed_restores`` found (``check``: the cluster lock still held, before
    each); a line on each, and ``failed`` gets the places that could not be cleared, and why."""
    lines = []
    for target, line in found:
        check()
        try:
            provider.clear_killed_restore(target)  # type: ignore[attr-defined]  # found, so it has one
            lines.append(f"{line}: removed")
        except SnapctlError as exc:
            failed[target] = exc.message
            lines.append(f"{line}: NOT removed: {exc.message}")
    return lines


def _places(target: str, inventory: Inventory) -> set[str]:
    """Where a restore into ``target`` put each node's volumes, as the inventory describes the nodes now."""
    places = set()
    for node in inventory.nodes:
        root = (Path(target) / node.name if Path(target).is_absolute() else
                inventory.resolve(node.restore.path) if target == EACH_NODE and node.restore.path else None)
        if root is not None:
            places |= {str(root / volume) for volume in volume_roots(node.volumes, inventory.resolve)}
    return places
