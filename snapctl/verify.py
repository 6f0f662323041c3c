"""`snapctl verify RUN`: without restoring, does every snapshot of a run still exist, complete?

The provider looks up each snapshot the manifest records by its id (an operator or a cloud policy
may have changed or removed its tags since): it must be there and completed. One whose tags no
longer name it as this run's is verified all the same, with a warning. Snapshots of the local
provider are also opened: every file their index lists must be there with its recorded size, and
every file PREPARE said the snapshot must contain (the engine's checkpoint, its saved backend)
must be in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from snapctl.catalog import open_catalog
from snapctl.config import Inventory
from snapctl.manifest import IndexEntry, Manifest
from snapctl.providers import TAG_CLUSTER, TAG_NODE, TAG_RUN, TAG_VOLUME, Provider, SnapshotRef, open_provider
from snapctl.usable_run import check_provider, usable_run

CheckState = Literal["ok", "missing", "pending", "failed", "damaged"]  # pending: not complete yet, nothing wrong
# How many problems one snapshot reports before "and N more": a gutted snapshot lists thousands.
_MAX_PROBLEMS = 5


@dataclass
class SnapshotCheck:
    node: str
    volume: str
    snapshot_id: str
    state: CheckState
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # nothing a restore minds: its tags changed
    progress: float | None = None
    bytes: int | None = None


@dataclass
class VerifyResult:
    run_id: str
    provider: str
    snapshots: list[SnapshotCheck]
    problems: list[str] = field(default_factory=list)  # about the run, not one snapshot
    warnings: list[str] = field(default_factory=list)  # newer runs `latest` passed over, and why

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.state == "ok" for s in self.snapshots)

    @property
    def pending(self) -> bool:
        """Not ok only because snapshots are not complete yet (a `backup --no-wait` run, a cloud
        still uploading): nothing is missing, failed or damaged."""
        return (not self.ok and not self.problems
                and all(s.state in ("ok", "pending") for s in self.snapshots))

    @property
    def verdict(self) -> str:
        if self.ok:
            return "every snapshot is there and complete"
        if not self.pending:
            return "the run cannot be restored as recorded"
        waiting = [s for s in self.snapshots if s.state == "pending"]
        if self.provider == "local":  # their files were checked: only the fsync is left, which verify never does
            return (f"every snapshot is there and holds its files; {len(waiting)} not yet durable: `snapctl prune`, "
                    "the next backup or a restore makes them durable")
        return f"every snapshot is there, {len(waiting)} still pending: verify again once the provider completes them"


def verify_run(inventory: Inventory, run_ref: str) -> VerifyResult:
    catalog = open_catalog(inventory)
    skipped: list[str] = []
    running: list[IndexEntry] = []  # for `latest`: the runs it may have passed over, as listed once
    manifest = usable_run(catalog, catalog.load(catalog.resolve(run_ref, skipped, running)),
                          "it has no snapshots to verify", skipped, latest=run_ref.strip() == "latest", running=running)
    provider = open_provider(inventory)
    check_provider(manifest, provider)
    recorded = [ref for record in manifest.nodes.values() for ref in record.snapshots]
    describe = getattr(provider, "describe", None)
    # A provider plugin older than describe() finds them by run tag: a snapshot re-tagged is then missing.
    now = describe(recorded) if describe is not None else provider.find({TAG_RUN: manifest.run_id})
    found = {ref.snapshot_id: ref for ref in now}
    result = VerifyResult(manifest.run_id, provider.name, [], warnings=skipped)
    for name, record in manifest.nodes.items():
        if not record.snapshots:
            result.problems.append(f"node {name}: the manifest records no snapshots")
        for ref in record.snapshots:
            check = _check(ref, found.get(ref.snapshot_id), manifest, provider)
            if ref.snapshot_id in found:
                check.warnings += _retagged(ref, found[ref.snapshot_id], inventory.cluster, manifest.run_id)
            result.snapshots.append(check)
    return result


def _retagged(recorded: SnapshotRef, current: SnapshotRef, cluster: str, run_id: str) -> list[str]:
    """A snapshot whose tags no longer say what the run made it as. It restores all the same (a
    restore goes by id), but what goes by tags treats it otherwise: `snapctl gc` and prune find
    it by snapctl-cluster (without it, prune's delete refuses it), and prune also deletes the
    snapshots tagged with the run it deletes."""
    expected = {TAG_CLUSTER: cluster, TAG_RUN: run_id, TAG_NODE: recorded.node, TAG_VOLUME: recorded.volume}
    changed = [f"{key} is {current.tags[key]!r}, not {value!r}" if key in current.tags else f"{key} is gone"
               for key, value in expected.items() if current.tags.get(key) != value]
    if not changed:
        return []
    return [f"snapshot {recorded.snapshot_id}: its tags were changed since the run ({'; '.join(changed)}): found by "
            f"its id, but gc and prune go by tags; put them back ({', '.join(f'{k}={v}' for k, v in expected.items())})"]


def _check(recorded: SnapshotRef, current: SnapshotRef | None, manifest: Manifest, provider: Provider) -> SnapshotCheck:
    check = SnapshotCheck(recorded.node, recorded.volume, recorded.snapshot_id, "ok")
    if current is None:
        # Unlisted can also mean unreadable: the local provider lists a snapshot by the tags in
        # its snapshot.json, so a damaged one is not found although its files are all there.
        damage, elsewhere = getattr(provider, "damage", None), getattr(provider, "elsewhere", None)
        ours = recorded.provider == provider.name
        why = damage(recorded) if damage is not None and ours else None
        where = elsewhere(recorded) if elsewhere is not None and ours and not why else None
        check.state = "damaged" if why else "missing"
        check.problems.append(f"snapshot {recorded.snapshot_id} is damaged: {why}" if why else
                              f"snapshot {recorded.snapshot_id}: {where}" if where else
                              f"snapshot {recorded.snapshot_id} no longer exists")
        return check
    check.progress, check.bytes = current.progress, current.bytes
    if current.state == "error":
        check.state = "failed"
        check.problems.append(f"snapshot {recorded.snapshot_id} is in error: {current.error or 'no reason given'}")
    elif current.state != "completed":
        check.state = "pending"
        done = f" ({current.progress:.0f}%)" if current.progress is not None else ""
        check.problems.append(f"snapshot {recorded.snapshot_id} is still {current.state}{done}")
        if current.provider == "local" and not manifest.snapshots_completed:
            check.problems.append("its run did not wait for the disk (backup --no-wait): a prune that keeps the run, "
                                  "the next backup while it is the newest, or a restore of it makes it durable")
    if current.provider == "local" and check.state in ("ok", "pending"):
        # A pending local snapshot is a whole copy not yet synced: its files are there to check.
        state = manifest.nodes[recorded.node].state
        damage = _local_contents(current, state.files if state else [])
        if damage:
            check.state, check.problems = "damaged", damage
    return check


def _local_contents(ref: SnapshotRef, engine_files: list[str]) -> list[str]:
    """Files of a local snapshot against its own index, and the engine's files against the copy."""
    from snapctl_local.store import DATA, read_metadata, size_problem

    snap_dir = Path(str(ref.extra.get("path") or ""))
    meta = read_metadata(snap_dir) if ref.extra.get("path") else None
    if meta is None:
        return [f"snapshot {ref.snapshot_id}: its snapshot.json is unreadable"]
    data = snap_dir / DATA
    problems = []
    for rel, facts in sorted((meta.get("files") or {}).items()):
        file = data / rel
        if not file.is_file():
            problems.append(f"file {rel} is missing")
        elif (wrong := size_problem(rel, file.stat().st_size, facts, meta)) is not None:
            problems.append(wrong)
    source = Path(str(meta.get("source") or "")).resolve()
    for engine_file in engine_files:
        path = Path(engine_file).resolve()
        if meta.get("source") and path.is_relative_to(source) and not (data / path.relative_to(source)).exists():
            problems.append(f"file {path.name} recorded at prepare is not in the snapshot")
    if len(problems) > _MAX_PROBLEMS:
        problems = problems[:_MAX_PROBLEMS] + [f"and {len(problems) - _MAX_PROBLEMS} more"]
    return problems
