"""Which snapshots a prune deletes with a doomed run (snapctl.prune): those its manifest names, and
those tagged with its run id that no other run's manifest names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapctl.gc import named_by, stored_runs
from snapctl.providers import TAG_RUN, SnapshotRef

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.manifest import Manifest


def by_run(refs: list[SnapshotRef]) -> dict[str, list[SnapshotRef]]:
    grouped: dict[str, list[SnapshotRef]] = {}
    for ref in refs:
        grouped.setdefault(ref.tags.get(TAG_RUN, ""), []).append(ref)
    return grouped


class Owners:
    """Which readable run's manifest names each snapshot id. Read once a prune (its plan's serves
    its apply), and only for a run that has snapshots tagged with it which its manifest does not
    name. (A run whose manifest cannot be read keeps what is tagged with it, as gc does: those
    snapshots are not tagged with this run.) The manifests the plan read already (``note``) are
    not read again: the plan reads every doomed one, up to a megabyte each on S3."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._owners: dict[str, str] | None = None
        self._noted: dict[str, str] = {}
        self._noted_runs: set[str] = set()

    def note(self, manifest: Manifest) -> None:
        """``manifest`` as just read: before the first call, which then reads only the others."""
        self._noted.update((ref.snapshot_id, manifest.run_id) for ref in manifest.snapshot_refs())
        self._noted_runs.add(manifest.run_id)

    def __call__(self) -> dict[str, str]:
        if self._owners is None:
            unread = sorted(stored_runs(self.catalog) - self._noted_runs)
            self._owners = {**self._noted, **named_by(self.catalog, unread)[0]}
        return self._owners


def doomed_refs(manifest: Manifest, tagged: dict[str, list[SnapshotRef]], owners: Owners) -> list[SnapshotRef]:
    """A run's snapshots: its manifest's, and those tagged with it that it does not name (a backup
    killed before it recorded them), unless another run's manifest names them: a tag changed by
    hand, or by a policy, to this run's id must not cost that run its snapshot."""
    own = manifest.snapshot_refs()
    named = {ref.snapshot_id for ref in own}
    extra = [ref for ref in tagged.get(manifest.run_id, []) if ref.snapshot_id not in named]
    if extra:
        others = owners()
        extra = [ref for ref in extra if ref.snapshot_id not in others]
    return unique(own + extra)


def unique(refs: list[SnapshotRef]) -> list[SnapshotRef]:
    """The first of each snapshot id: the manifest's entry before the provider's, so that the
    cluster tag the manifest recorded is the one checked."""
    first: dict[str, SnapshotRef] = {}
    for ref in refs:
        first.setdefault(ref.snapshot_id, ref)
    return list(first.values())
