"""A third-party provider for fault tests, found through the ``snapctl.providers`` entry point: the
local provider, which can stop at a chosen point of a run until the test lets it go on.

Signal files in ``control`` (a directory): ``<node>.entered`` when ``snapshot()`` of that node
begins; with ``stop: {node: before}`` it then waits for ``<node>.go`` before copying anything;
with ``stop: {node: after}`` it copies, writes ``<node>.made`` and waits for ``<node>.go`` before
returning. ``stop_wait`` does the same in ``wait()`` with ``wait.entered`` / ``wait.go``, and
``stop_delete`` in ``delete()`` (a prune's, or a backup's retention) with ``delete.entered`` /
``delete.go`` (``fail_delete``: it then fails); ``stop_warm_up`` in ``warm_up()``, which a run awaits after its preflight and before
its first prepare, with ``warm_up.entered`` / ``warm_up.go``. So a test can SIGKILL snapctl at an
exact step, or take an agent away between the preflight and the prepares, from outside, with no
hook in snapctl itself. With ``async_calls`` it has the optional async create call
(``snapshot_async``, which stops the same way without blocking snapctl's event loop). With
``create_rate`` (and ``create_burst``) it declares a create rate limit and takes a token per volume.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field
from snapctl_local import LocalProvider

from snapctl.errors import ProviderError
from snapctl.providers import ProviderSettings
from snapctl.ratelimit import TokenBucket


class FaultSettings(ProviderSettings):
    type: Literal["fault"]
    store: str
    control: str
    stop: dict[str, Literal["before", "after"]] = Field(default_factory=dict)
    stop_wait: bool = False
    stop_delete: bool = False
    stop_warm_up: bool = False
    fail_wait: str | None = None  # wait() ends in this error: a snapshot the cloud failed
    fail_delete: str | None = None  # delete() ends in this error: a rollback that cannot delete
    stop_timeout_s: float = 120.0
    async_calls: bool = False
    # A declared create rate limit, obeyed as the clouds' providers do: a token per volume's call.
    create_rate: float | None = None
    create_burst: int = 1


class FaultProvider:
    settings_model = FaultSettings

    def __init__(self, settings: FaultSettings, *, cluster: str, base_dir: Path) -> None:
        local_settings = LocalProvider.settings_model(type="local", store=settings.store)
        self._local = LocalProvider(local_settings, cluster=cluster, base_dir=base_dir)
        self._settings = settings
        self._control = Path(settings.control) if Path(settings.control).is_absolute() else base_dir / settings.control
        self._control.mkdir(parents=True, exist_ok=True)
        self.name = "fault"
        self._bucket = None
        if settings.create_rate:
            self.capabilities = replace(self._local.capabilities, max_creates_per_s=settings.create_rate,
                                        create_burst=settings.create_burst)
            self._bucket = TokenBucket(settings.create_rate, settings.create_burst)
        if settings.async_calls:  # an instance attribute: __getattr__ would otherwise find none
            self.snapshot_async = self._snapshot_async

    def __getattr__(self, name):
        return getattr(self._local, name)

    def snapshot(self, volumes, tags):
        node = volumes.node
        where = self._settings.stop.get(node)
        self._signal(f"{node}.entered")
        if where == "before":
            self._wait_for(f"{node}.go")
        if self._bucket is not None:
            for _ in volumes.volumes:
                self._bucket.acquire()
        refs = self._local.snapshot(volumes, tags)
        if where == "after":
            self._signal(f"{node}.made")
            self._wait_for(f"{node}.go")
        return refs

    async def _snapshot_async(self, volumes, tags):
        node = volumes.node
        where = self._settings.stop.get(node)
        self._signal(f"{node}.entered")
        if where == "before":
            await asyncio.to_thread(self._wait_for, f"{node}.go")
        refs = await asyncio.to_thread(self._local.snapshot, volumes, tags)
        if where == "after":
            self._signal(f"{node}.made")
            await asyncio.to_thread(self._wait_for, f"{node}.go")
        return refs

    def warm_up(self):
        self._signal("warm_up.entered")
        if self._settings.stop_warm_up:
            self._wait_for("warm_up.go")
        return self._local.warm_up()

    def wait(self, refs, deadline, progress=None):
        self._signal("wait.entered")
        if self._settings.stop_wait:
            self._wait_for("wait.go")
        if self._settings.fail_wait:
            raise ProviderError(f"snapshot {refs[0].snapshot_id} ended in error: {self._settings.fail_wait}")
        return self._local.wait(refs, deadline, progress)

    def delete(self, ref):
        self._signal("delete.entered")
        if self._settings.stop_delete:
            self._wait_for("delete.go")
        if self._settings.fail_delete:
            raise ProviderError(f"snapshot {ref.snapshot_id}: {self._settings.fail_delete}")
        return self._local.delete(ref)

    def _signal(self, name: str) -> None:
        (self._control / name).write_text(str(os.getpid()))  # which process got there

    def _wait_for(self, name: str) -> None:
        deadline = time.monotonic() + self._settings.stop_timeout_s
        while not (self._control / name).exists():
            if time.monotonic() > deadline:
                raise ProviderError(f"fault provider: nobody created {self._control / name}")
            time.sleep(0.02)
