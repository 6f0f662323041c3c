"""What one backup run holds while snapctl.orchestrator runs it: the nodes held, the snapshot calls
in flight, the times each hold began. Kept in one place so that a rollback finds and releases all
of it, whatever step failed."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapctl.agent_client import AgentClient
    from snapctl.catalog import Catalog
    from snapctl.config import Inventory
    from snapctl.errors import SnapctlError
    from snapctl.events import Reporter
    from snapctl.manifest import Manifest
    from snapctl.pacing import CreateCallPacer
    from snapctl.provider_threads import CallRunner
    from snapctl.providers import NodeVolumes, Provider, SnapshotRef


@dataclass
class BackupRun:
    """Everything one run holds, so that rollback can find and release all of it."""

    inventory: Inventory
    manifest: Manifest
    catalog: Catalog
    provider: Provider
    agents: dict[str, AgentClient]
    volumes: dict[str, NodeVolumes]
    reporter: Reporter
    executor: CallRunner
    held: set[str] = field(default_factory=set)  # prepare sent and not yet completed
    lost_hold: dict[str, str] = field(default_factory=dict)  # node -> why its lease was lost
    in_flight: list[tuple[str, Future[list[SnapshotRef]] | asyncio.Future[list[SnapshotRef]]]] = field(
        default_factory=list)  # (node, its snapshot call)
    timed_out: dict[str, SnapctlError | None] = field(default_factory=dict)  # node -> how its call ended later
    unrecorded: str | None = None  # why the failed run's manifest could not be saved
    recorded: bool = False  # step 8 saved the manifest naming every snapshot
    prepare_sent: dict[str, float] = field(default_factory=dict)  # monotonic
    prepare_acked: dict[str, float] = field(default_factory=dict)
    pacer: CreateCallPacer | None = None  # per-node runs: the provider's create budget, mirrored
    fan_out_s: float = 0.0  # how long the preflight took to ask every agent: the cost of one fan-out
    hold_at_mono: float = 0.0  # cluster runs: manifest.hold_at on the monotonic clock

    def frozen_since(self, node: str) -> float:
        """When ``node``'s hold began at the latest: its prepare was sent, or the agreed instant."""
        return max(self.prepare_sent[node], self.hold_at_mono)
