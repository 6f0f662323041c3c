"""The manifest: one per run, the record a restore and a drill rely on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from node_agent.models import EngineState
from snapctl.providers import SnapshotRef
from snapctl.timestamps import UtcTime

MANIFEST_VERSION = 1

RunStatus = Literal["running", "succeeded", "failed", "pruning"]  # pruning: being deleted by retention


class NodeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    engine: str | None = None
    state: EngineState | None = None
    snapshots: list[SnapshotRef] = Field(default_factory=list)
    prepare_sent_at: UtcTime | None = None
    prepare_acked_at: UtcTime | None = None
    complete_acked_at: UtcTime | None = None
    freeze_window_s: float | None = None  # complete acknowledged - the later of prepare sent and hold_at
    error: str | None = None


class DrillSummary(BaseModel):
    """The newest restore drill of a run; the whole report is in the catalog under ``report``."""

    model_config = ConfigDict(extra="forbid")

    drill_id: str
    ok: bool
    started_at: UtcTime
    finished_at: UtcTime
    rto_s: float | None = None  # restore start -> every engine verified
    failed_nodes: list[str] = Field(default_factory=list)
    report: str  # the catalog key of the drill's report: <cluster>/drills/<run>-<drill>.json


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest_version: int = MANIFEST_VERSION
    cluster: str
    run_id: str
    status: RunStatus = "running"
    provider: str
    snapctl_version: str
    owner: str  # user@host:pid that ran it
    started_at: UtcTime
    finished_at: UtcTime | None = None
    nodes: dict[str, NodeRecord] = Field(default_factory=dict)
    prepare_skew_s: float | None = None  # spread of prepare acknowledgements, at snapctl
    hold_at: UtcTime | None = None  # the instant every node was asked to begin its hold (cluster mode)
    hold_skew_s: float | None = None  # spread of the instants the engines began holding (their clocks)
    max_freeze_window_s: float | None = None
    consistency: Literal["cluster", "per-node"] = "cluster"
    forced: bool = False
    degradations: list[str] = Field(default_factory=list)
    error: str | None = None
    snapshots_completed: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)
    last_drill: DrillSummary | None = None

    def snapshot_refs(self) -> list[SnapshotRef]:
        return [ref for node in self.nodes.values() for ref in node.snapshots]

    def measure(self) -> None:
        """Derive the run's skews and longest freeze from its nodes' records."""
        acks = [r.prepare_acked_at for r in self.nodes.values() if r.prepare_acked_at]
        if len(acks) > 1:
            self.prepare_skew_s = round((max(acks) - min(acks)).total_seconds(), 6)
        holds = [r.state.prepared_at for r in self.nodes.values() if r.state]
        if len(holds) > 1:
            self.hold_skew_s = round((max(holds) - min(holds)).total_seconds(), 6)
        windows = [r.freeze_window_s for r in self.nodes.values() if r.freeze_window_s is not None]
        self.max_freeze_window_s = max(windows) if windows else None


# Beside ``last_drill``, in ``extra``, not a field of DrillSummary: a snapctl from before it reads
# a ``last_drill`` with a key it does not know as a damaged manifest, and drops the run's index line.
DRILL_INTERRUPTED_BY = "last_drill_interrupted_by"


def record_interrupted_by(manifest: Manifest, drill_id: str, signal: str | None) -> None:
    """The signal that stopped drill ``drill_id``, now the run's ``last_drill``; none said for one
    that was not interrupted."""
    if signal:
        manifest.extra[DRILL_INTERRUPTED_BY] = {"drill_id": drill_id, "signal": signal}
    else:
        manifest.extra.pop(DRILL_INTERRUPTED_BY, None)


def last_drill_interrupted_by(manifest: Manifest) -> str | None:
    """The signal that stopped the run's ``last_drill``: None when it was not interrupted, or its
    summary is older than this record (recorded by a snapctl from before it, which leaves it)."""
    said, drill = manifest.extra.get(DRILL_INTERRUPTED_BY), manifest.last_drill
    if drill is None or not isinstance(said, dict) or said.get("drill_id") != drill.drill_id:
        return None
    return str(said.get("signal") or "") or None


class IndexEntry(BaseModel):
    """One line of the catalog index: enough to list runs without reading every manifest."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    status: RunStatus
    started_at: UtcTime
    finished_at: UtcTime | None = None
    nodes: int
    snapshots: int
    max_freeze_window_s: float | None = None
    error: str | None = None
