"""The agent's lease and counters, as the service keeps them (node_agent/service.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from node_agent.models import EngineState, LeaseInfo


@dataclass
class AgentStats:
    """Counters for /metrics. ``last_*_s``: how long the last engine prepare/complete took."""

    prepares: int = 0
    completes: int = 0
    lease_expirations: int = 0
    last_prepare_s: float | None = None
    last_complete_s: float | None = None
    held: bool = False
    releasing: bool = False  # the lease expired and the engine would not release: still held, no run


@dataclass
class Lease:
    run_id: str
    lease_s: float
    acquired_at: datetime  # wall clock, for humans and the wire
    acquired_mono: float  # the service clock, for expiry
    expires_mono: float
    state: EngineState
    release_error: str | None = None  # expired, and the engine would not release: why, the last time
    retry_mono: float = 0.0  # when the watcher tries the release again

    @property
    def releasing(self) -> bool:
        return self.release_error is not None

    def info(self) -> LeaseInfo:
        ttl = timedelta(seconds=self.expires_mono - self.acquired_mono)
        return LeaseInfo(run_id=self.run_id, acquired_at=self.acquired_at, expires_at=self.acquired_at + ttl)


def free_bytes(path: Path) -> int | None:
    # The data directory may not exist yet (a fresh node); its nearest existing parent is on the same volume.
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
