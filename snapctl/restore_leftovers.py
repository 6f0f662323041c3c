"""What restores killed outright (SIGKILL, the OOM killer) left beside their targets, for `snapctl gc`.

A local restore copies each volume into a hidden staging directory beside its target, with a
marker naming the restore's process; killed, it leaves both, a full-size copy nothing lists. A
rerun into the same place clears them; a restore run elsewhere instead never would. The catalog's
unfinished restore records say where each restore went (``--to DIR``, or each node's
``restore.path``), and the provider judges each place by its marker: only a restore whose process
is proven gone from this host (``drill_leftovers.gone_from_this_host``) counts, never a running one.

Such a restore's record stays unfinished too, and keeps its run from prune for a day. A record
names its process as a drill's does (``owner``, ``owner_process``): once that process is proven
gone from this host, and every one of its places was looked at and what the restore left there is
removed, gc finishes the record as abandoned (outcome ``interrupted``). A place gc could not look
at (a share not mounted, another user's directory) keeps the record open: finished, no later gc
would look there again. The places are those the record names (``places``, from its start); an
older record's are computed from the inventory as it is now. A record of an older snapctl, without
``owner_process``, is never judged: prune's day from its start still ends its hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapctl.errors import SnapctlError
from snapctl.evidence import volume_roots
from snapctl.timestamps import utc_text
from snapctl.units import human_bytes

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.config import Inventory
    from snapctl.providers import Provider

EACH_NODE = "each node's restore target"  # RestoreRecord.target without --to
UnfinishedRecord = tuple[str, dict[str, Any], bytes]  # key, record, its bytes


def find_killed_restores(records: list[UnfinishedRecord], inventory: Inventory,
                         provider: Provider) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(target, one line on what its killed restore left there), for the places of every unfinished
    restore record (``unfinished_restores``), and the places that could not be looked at, and why;
    none for a provider that restores into no directories."""
    find = getattr(provider, "find_killed_restores", None)
    if find is None:
        return [], {}
    places: dict[str, str | None] = {}
    for _, record, _ in records:
        root = _root(record)
        for place in _places(record, inventory):
            places[place] = root if places.get(place, root) == root else None  # two roots: the stricter
    found, unseen = find(dict(sorted(places.items())))
    return [(target, f"{target}: a killed restore's staging copy {staging or '(gone)'}, {human_bytes(size)}, and "
                     "its marker") for target, staging, size in found], unseen


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


@dataclass
class AbandonedRestore:
    """An unfinished restore record whose process is proven gone from this host."""

    key: str
    restore_id: str
    run_id: str
    owner: str
    places: set[str] = field(default_factory=set)  # where it restored to, as ``_places`` has them
    raw: bytes = field(repr=False, default=b"")

    def listed(self, unseen: dict[str, str] | None = None) -> str:
        """``unseen``: the places gc could not look at (``find_killed_restores``); those of this restore are named."""
        line = f"restore {self.restore_id} of run {self.run_id} ({self.owner}, no longer running): its record"
        return line + "".join(f"; could not look at {p}: {unseen[p]}" for p in sorted(self.places & set(unseen or ())))


def restore_gone(record: dict[str, Any]) -> bool:
    """The restore of an unfinished record is proven gone from this host (killed outright): as a
    drill is judged; a record without ``owner_process`` (an older snapctl's) never is."""
    from snapctl.drill_leftovers import gone_from_this_host

    owner = record.get("owner")
    return isinstance(owner, str) and gone_from_this_host(owner, record.get("owner_process"))


def find_abandoned_restores(records: list[UnfinishedRecord], inventory: Inventory) -> list[AbandonedRestore]:
    """The unfinished restore records (``unfinished_restores``) whose process is proven gone from this host."""
    return [AbandonedRestore(key, str(record.get("restore_id")), str(record.get("run_id")), str(record["owner"]),
                             _places(record, inventory), raw)
            for key, record, raw in records if restore_gone(record)]


def finish_abandoned_restores(catalog: Catalog, found: list[AbandonedRestore], failed: dict[str, str],
                              unseen: dict[str, str], by: str, check: Callable[[], None]) -> list[str]:
    """Each record of ``found`` finished as abandoned, but one with a place in ``failed`` (what it
    left there could not be removed) or in ``unseen`` (gc could not look there): the next gc finds
    the place by the record; a line on each. ``by``: who finishes them; ``check``: the cluster lock
    still held, before each."""
    lines = []
    for restore in found:
        check()
        if restore.places & set(unseen):
            lines.append(f"{restore.listed(unseen)}; left unfinished for the next gc to look again")
            continue
        stuck = sorted(p for p in restore.places if p in failed or os.path.realpath(p) in failed)
        if stuck:
            lines.append(f"{restore.listed()} left unfinished: what it left at {', '.join(stuck)} is still there")
            continue
        record = json.loads(restore.raw)
        record.update(finished_at=utc_text(datetime.now(UTC)), outcome="interrupted", abandoned=True,
                      error=f"abandoned: its process {restore.owner} was gone before the restore finished; "
                            f"finished by {by}")
        try:
            if catalog.store.replace(restore.key, json.dumps(record, indent=2).encode(), expected=restore.raw):
                lines.append(f"{restore.listed()} marked abandoned")
            else:
                lines.append(f"{restore.listed()} was finished meanwhile, by another")
        except SnapctlError as exc:
            failed[restore.key] = exc.message
            lines.append(f"{restore.listed()} could not be finished ({exc.message}): the next gc tries again")
    return lines


def unfinished_restores(catalog: Catalog) -> list[UnfinishedRecord]:
    """(key, record, its bytes) of each readable unfinished restore record of the cluster."""
    found = []
    for key in catalog.store.list(f"{catalog.cluster}/restores/"):
        try:
            raw = catalog.store.read(key) or b"null"
            record = json.loads(raw)
        except (ValueError, SnapctlError):
            continue  # unreadable: nothing to go by
        if isinstance(record, dict) and not record.get("finished_at"):
            found.append((key, record, raw))
    return found


def places_of(target: str, inventory: Inventory) -> list[str]:
    """Where a restore into ``target`` puts each node's volumes, as the inventory describes the nodes
    now: what a restore's record names from its start (``RestoreRecord.places``)."""
    return sorted(_inventory_places(target, inventory))


def _places(record: dict[str, Any], inventory: Inventory) -> set[str]:
    """Where the restore of ``record`` put each node's volumes: as its record names them, or for an
    older snapctl's record, as the inventory describes the nodes now."""
    places = record.get("places")
    if isinstance(places, list):
        return {str(place) for place in places}
    return _inventory_places(str(record.get("target") or ""), inventory)


def _root(record: dict[str, Any]) -> str | None:
    """The directory below which a restore into the record's target made what it needed (``--to DIR``);
    None for each node's own ``restore.path``, whose absence proves nothing."""
    target = str(record.get("target") or "")
    return target if Path(target).is_absolute() else None


def _inventory_places(target: str, inventory: Inventory) -> set[str]:
    places = set()
    for node in inventory.nodes:
        root = (Path(target) / node.name if Path(target).is_absolute() else
                inventory.resolve(node.restore.path) if target == EACH_NODE and node.restore.path else None)
        if root is not None:
            places |= {str(root / volume) for volume in volume_roots(node.volumes, inventory.resolve)}
    return places
