"""The restores and drills that keep a run from being pruned while they use it.

A restore or drill reads a run's snapshots without the cluster lock (it would wait for, and hold
up, backups); each records itself in the catalog instead, for as long as it runs, and a prune
keeps a run any unfinished record names (snapctl.prune_plan's ``spared_while_in_use``). A record
left unfinished by a process killed outright protects its run only for a time, counted from its
start by either clock: the record's own ``started_at`` (its writer's) or the store's time of its
last write (``BlobStore.age_s``), so that no one host's clock running behind can end it early.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from snapctl.catalog import Catalog
from snapctl.restore_leftovers import restore_gone
from snapctl.timestamps import as_utc

_DRILL_TEARDOWN_S = 600.0  # beyond drill.timeout_s, what an unfinished drill record still protects
# What an unfinished restore record protects, from the restore's start. A restore has no time
# limit of its own (a large local copy can take hours); a day outlasts any plausible one, and a
# restore killed outright then holds back its run's deletion by a day at most.
RESTORE_GUARD_S = 86400.0


@dataclass(frozen=True)
class _InUse:
    """A command that restores a run without the cluster lock, and records itself instead in
    ``<cluster>/<folder>/<run>-<id>.json`` with ``started_at``, ``finished_at`` and ``<noun>_id``."""

    folder: str
    noun: str
    doing: str  # as in "being <doing>"


_RESTORE = _InUse("restores", "restore", "restored")
_DRILL = _InUse("drills", "drill", "drilled")


def in_use_records(catalog: Catalog) -> dict[str, list[str]]:
    """The keys of every restore's and drill's record, by folder: listed once, not twice for each
    run (on S3, a request each)."""
    return {use.folder: catalog.store.list(f"{catalog.cluster}/{use.folder}/") for use in (_RESTORE, _DRILL)}


def in_use(catalog: Catalog, run_id: str, drill_timeout_s: float,
           records: dict[str, list[str]] | None = None) -> str | None:
    """Why ``run_id`` must be kept, when a restore or drill of it is under way: it restores from
    the run's snapshots; else None. Its record says when it finished; one killed outright never
    does, so a record older than its time budget (a drill's: drill.timeout_s and its teardown) no
    longer counts: older by its start time and by the store's time of its write alike
    (``_within``). ``records``: each folder's keys as listed a moment ago (else listed now, for
    this run)."""
    now = datetime.now(UTC)
    dead: str | None = None  # a restore killed outright on this host: said only if nothing else is under way
    for use, budget_s in ((_RESTORE, RESTORE_GUARD_S), (_DRILL, drill_timeout_s + _DRILL_TEARDOWN_S)):
        prefix = f"{catalog.cluster}/{use.folder}/{run_id}-"
        keys = catalog.store.list(prefix) if records is None else [k for k in records[use.folder]
                                                                     if k.startswith(prefix)]
        for key in keys:
            try:
                record = json.loads(catalog.store.read(key) or b"{}")
                # Without an offset (hand-edited, another tool): UTC, as snapctl writes them.
                started = as_utc(datetime.fromisoformat(record["started_at"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # unreadable: it cannot say a restore or drill is running
            if record.get("finished_at") is None and _within(catalog, key, (now - started).total_seconds(), budget_s):
                what = f"{use.noun} {record.get(f'{use.noun}_id')}"
                if use is _RESTORE and restore_gone(record):  # kept still: gc needs the record to clear its places
                    dead = dead or (f"{what} (started {started:%Y-%m-%d %H:%M}Z) whose process {record['owner']} is "
                                    "gone left its record unfinished: `snapctl gc --delete` finishes it")
                    continue
                return f"being {use.doing} ({what}, started {started:%Y-%m-%d %H:%M}Z)"
    return dead


def _within(catalog: Catalog, key: str, age_s: float, budget_s: float) -> bool:
    """An unfinished record's age is within its budget, by its own start time or else by when the
    store wrote it: the start is its writer's clock, and a restore on a host (or under a faked
    clock) days behind the prune's had its record taken for a dead one's, its run deleted as it
    read it. Asked of the store only then: a record no clock calls young is seldom."""
    if age_s < budget_s:
        return True
    written_s = catalog.store.age_s(key)
    return written_s is not None and written_s < budget_s
