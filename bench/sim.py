"""A simulated engine and a simulated cloud provider, registered as real plugins (entry points in
bench/plugins/*.dist-info), so benchmarks drive snapctl's own code paths end to end.

The engine's prepare and complete take a configurable time (the database's own work). The
provider's create call takes a configurable time and is metered by EC2's token bucket (100
burst, 5 per second by default), exactly as the AWS plugin paces its calls. By default the call
blocks its thread, as boto3's and the GCP SDK's do; with ``async_create`` the provider also has
the optional async create call (``snapshot_async``), as the aws (aiobotocore) and azure plugins'
async clients make it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from node_agent.engines.base import EngineSettings
from node_agent.models import EngineState, EngineStatus, JobResult, VerifyFacts
from snapctl.errors import BadInputError, EngineBusy, SnapshotNotFound
from snapctl.providers import (
    TAG_CLUSTER,
    TAG_VOLUME,
    Capabilities,
    NodeVolumes,
    ProgressFn,
    ProviderSettings,
    RestoreTarget,
    SnapshotRef,
)
from snapctl.ratelimit import TokenBucket


class SimEngineSettings(EngineSettings):
    type: Literal["sim"] = "sim"
    prepare_latency_s: float = Field(default=0.0, ge=0)
    complete_latency_s: float = Field(default=0.0, ge=0)


class SimEngine:
    """An engine whose hold is a flag and whose work is a sleep."""

    name = "sim"
    settings_model = SimEngineSettings

    def __init__(self, settings: SimEngineSettings, *, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = Path(base_dir)
        self._held_by: str | None = None
        self._state: EngineState | None = None

    def prepare(self, run_id: str) -> EngineState:
        if self._held_by == run_id and self._state is not None:
            return self._state
        if self._held_by is not None:
            raise EngineBusy(f"sim engine held by run {self._held_by}", holder=self._held_by)
        time.sleep(self.settings.prepare_latency_s)
        self._held_by = run_id
        # prepared_at marks the instant the hold began: the engine-side view of prepare skew.
        self._state = EngineState(engine=self.name, version="sim", prepared_at=datetime.now(UTC),
                                  facts=VerifyFacts(position={"lsn": 1}))
        return self._state

    def complete(self, run_id: str) -> None:
        if self._held_by == run_id:
            time.sleep(self.settings.complete_latency_s)
            self._held_by, self._state = None, None

    def trigger(self, target: str | None) -> list[JobResult]:
        return [JobResult(target=target or "all", status="succeeded", duration_s=0.0)]

    def status(self) -> EngineStatus:
        return EngineStatus(engine=self.name, version="sim", reachable=True, held=self._held_by is not None,
                            held_by=self._held_by)

    def verify(self) -> VerifyFacts:
        return VerifyFacts(position={"lsn": 1})

    def restore_prepare(self, path: Path | None) -> None:
        pass

    def data_paths(self) -> list[Path]:
        return []

    def close(self) -> None:
        pass


class SimProviderSettings(ProviderSettings):
    type: Literal["sim"]
    create_latency_s: float = Field(default=0.3, ge=0)
    create_rate: float = Field(default=5.0, gt=0)  # EC2 CreateSnapshot(s): 5 per second ...
    create_burst: int = Field(default=100, ge=1)  # ... after a burst of 100
    warm_up_s: float = Field(default=0.0, ge=0)  # a cloud SDK's import and client, paid once per process
    async_create: bool = False  # also an async create call, awaited on snapctl's loop (no thread per call)
    # CPU a real SDK spends on each call (request, signing, answer; aiobotocore's CreateSnapshot:
    # ~0.75 ms), half before the wait and half after, in the thread or on the loop that makes it.
    create_cpu_s: float = Field(default=0.0, ge=0)


class SimProvider:
    """Snapshots that exist only in memory. Each ref's ``extra.issued_at`` is the wall-clock
    instant its create call was let through the token bucket (what a cloud's limiter meters), and
    ``extra.returned_at`` the instant the call was about to return."""

    name = "sim"
    settings_model = SimProviderSettings

    def __init__(self, settings: SimProviderSettings, *, cluster: str, base_dir: Path) -> None:
        self.settings = settings
        self.cluster = cluster
        self.capabilities = Capabilities(instant=False, max_creates_per_s=settings.create_rate,
                                          create_burst=settings.create_burst)
        self.bucket = TokenBucket(settings.create_rate, settings.create_burst)
        self._snapshots: dict[str, SnapshotRef] = {}
        self._deleted: set[str] = set()
        self._lock = threading.Lock()
        self._warm = False
        if settings.async_create:  # an instance attribute: snapctl looks for it to pick its call runner
            self.snapshot_async = self._snapshot_async

    def validate_volumes(self, node: str, raw: list[Any], *, base_dir: Path) -> NodeVolumes:
        if not raw or not all(isinstance(v, str) and v for v in raw):
            raise BadInputError(f"node {node}: sim volumes are a non-empty list of names")
        return NodeVolumes(node=node, volumes=list(raw))

    def warm_up(self) -> None:
        if self._warm:
            return
        with self._lock:  # callers wait for the one who loads, as for a cloud plugin's client
            if not self._warm:
                end = time.perf_counter() + self.settings.warm_up_s
                while time.perf_counter() < end:
                    pass  # an import is CPU, under the GIL: a sleep would leave the loop alone
                self._warm = True

    def snapshot(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        self.warm_up()  # done already if snapctl warmed up; else the first call pays, as a lazy SDK client does
        refs = []
        for volume in volumes.volumes:
            self.bucket.acquire()
            self._spend(self.settings.create_cpu_s / 2)
            issued = time.time()
            time.sleep(self.settings.create_latency_s)
            self._spend(self.settings.create_cpu_s / 2)
            refs.append(self._made(volumes.node, volume, tags, issued))
        return refs

    async def _snapshot_async(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        refs = []
        for volume in volumes.volumes:
            if wait := self.bucket.reserve():
                await asyncio.sleep(wait)
            self._spend(self.settings.create_cpu_s / 2)
            issued = time.time()
            await asyncio.sleep(self.settings.create_latency_s)
            self._spend(self.settings.create_cpu_s / 2)
            refs.append(self._made(volumes.node, volume, tags, issued))
        return refs

    @staticmethod
    def _spend(cpu_s: float) -> None:
        end = time.thread_time() + cpu_s
        while time.thread_time() < end:
            pass

    def _made(self, node: str, volume: str, tags: Mapping[str, str], issued: float) -> SnapshotRef:
        ref = SnapshotRef(provider=self.name, snapshot_id=f"snap-{uuid.uuid4().hex[:17]}", node=node,
                          volume=volume, created_at=datetime.fromtimestamp(issued, UTC).isoformat(),
                          tags={**tags, TAG_VOLUME: volume}, extra={"issued_at": issued})
        # When the call really came back, which under a crowd of threads (or a busy loop) is later
        # than the latency says: the time spent getting the GIL (the loop) back and building the result.
        ref.extra["returned_at"] = time.time()
        with self._lock:
            self._snapshots[ref.snapshot_id] = ref
        return ref

    def wait(self, refs: list[SnapshotRef], deadline: float, progress: ProgressFn | None = None) -> list[SnapshotRef]:
        done = []
        for ref in refs:
            # A create made in snapctl's provider worker process is only in that process's memory;
            # the cluster tag says it is ours all the same.
            if ref.snapshot_id in self._deleted or ref.tags.get(TAG_CLUSTER) != self.cluster:
                raise SnapshotNotFound(f"node {ref.node}: snapshot {ref.snapshot_id} is gone")
            done.append(ref.model_copy(update={"state": "completed", "progress": 100.0}))
            if progress:
                progress(done[-1])
        return done

    def delete(self, ref: SnapshotRef) -> None:
        with self._lock:
            self._snapshots.pop(ref.snapshot_id, None)
            self._deleted.add(ref.snapshot_id)

    def find(self, tags: Mapping[str, str]) -> list[SnapshotRef]:
        wanted = {TAG_CLUSTER: self.cluster, **tags}
        with self._lock:
            return [r for r in self._snapshots.values() if all(r.tags.get(k) == v for k, v in wanted.items())]

    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        raise BadInputError("the sim provider cannot restore")
