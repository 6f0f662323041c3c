"""A third-party provider, found through the ``snapctl.providers`` entry point like any other:
the local provider, with a configurable pause before each snapshot (a slow cloud, for tests).
Each ref names the process that made it (``extra.pid``; ``extra.argv0``, the name it was started
as: a forked one keeps snapctl's), whether that process's provider had
warmed up before the call (``extra.warm``) and how many objects that process had frozen out of
the garbage collector's scans (``extra.gc_frozen``); ``warm_up_s`` makes ``warm_up`` take that long, and
``fail_warm_up`` makes it fail with that message, as a cloud plugin's does without credentials.
Its "SDK" is ``snapctl_slow_sdk``, which ``warm_up`` imports and ``sdk_modules`` names;
``say`` makes ``warm_up`` print that line, as an SDK may; ``current_loop`` makes it run a coroutine
on asyncio's current event loop, as an SDK that wraps its async client in blocking calls does.
With ``async_calls`` it has the optional async create call (``snapshot_async``, its pause awaited
on the event loop; ``extra.async`` on its refs) with ``warm_up_async`` (which imports its async
"SDK", ``snapctl_slow_async_sdk``, named by ``sdk_async_modules``) and ``aclose``; each of
those, and each call, appends a line to ``events_file`` when one is named, and
``fail_warm_up_async`` makes ``warm_up_async`` fail with that message. ``warn`` makes ``warm_up``
log that as a warning, and each blocking snapshot call log it as an error with a traceback, as a
cloud plugin logs a cleanup that failed; with ``warn_apart`` it logs them on ``snapctl_slow.apart``,
a logger that does not propagate (as a plugin that keeps its records off the root logger's
handlers does)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

from snapctl_local import LocalProvider

from snapctl.providers import ProviderSettings

log = logging.getLogger("snapctl_slow")
apart = logging.getLogger("snapctl_slow.apart")
apart.propagate = False


class SlowSettings(ProviderSettings):
    type: Literal["slow"]
    store: str
    delay_s: float = 0.0
    fail_nodes: list[str] = []
    fail_warm_up: str | None = None
    warm_up_s: float = 0.0
    async_calls: bool = False
    fail_warm_up_async: str | None = None
    events_file: str | None = None
    say: str | None = None
    current_loop: bool = False
    warn: str | None = None
    warn_apart: bool = False


class SlowProvider:
    settings_model = SlowSettings
    sdk_modules = ("snapctl_slow_sdk",)
    sdk_async_modules = ("snapctl_slow_async_sdk",)

    def __init__(self, settings: SlowSettings, *, cluster: str, base_dir: Path) -> None:
        local_settings = LocalProvider.settings_model(type="local", store=settings.store)
        self._local = LocalProvider(local_settings, cluster=cluster, base_dir=base_dir)
        self._settings = settings
        self.name = "slow"
        self._warm = False
        if settings.async_calls:  # instance attributes: __getattr__ would otherwise find none
            self.snapshot_async = self._snapshot_async
            self.warm_up_async = self._warm_up_async
            self.aclose = self._aclose

    def _event(self, what: str) -> None:
        if self._settings.events_file:
            with open(self._settings.events_file, "a") as events:
                events.write(f"{what}\n")

    async def _warm_up_async(self):
        self._event("warm_up_async")
        await asyncio.to_thread(importlib.import_module, "snapctl_slow_async_sdk")
        if self._settings.fail_warm_up_async:
            from snapctl.errors import ProviderError

            raise ProviderError(self._settings.fail_warm_up_async, hint="check the async client's settings")

    async def _snapshot_async(self, volumes, tags):
        self._event(f"snapshot_async {volumes.node}")
        warm = self._warm
        # The cloud's side of the call, in a thread: it goes on whatever the caller does, so a call
        # snapctl stopped waiting for still makes its snapshot later, as an accepted create call does.
        refs = await asyncio.to_thread(self._cloud_side, volumes, tags)
        for ref in refs:
            ref.extra.update(pid=os.getpid(), warm=warm, gc_frozen=gc.get_freeze_count(), **{"async": True})
        return refs

    def _cloud_side(self, volumes, tags):
        time.sleep(self._settings.delay_s)
        if volumes.node in self._settings.fail_nodes:
            from snapctl.errors import ProviderError

            raise ProviderError(f"injected failure for node {volumes.node}")
        return self._local.snapshot(volumes, tags)

    async def _aclose(self):
        self._event("aclose")

    def __getattr__(self, name):
        return getattr(self._local, name)

    @property
    def _log(self):
        return apart if self._settings.warn_apart else log

    def warm_up(self):
        import snapctl_slow_sdk  # noqa: F401 - as a cloud plugin imports its SDK here

        if self._settings.say:
            print(self._settings.say)  # noqa: T201 - a stray print, as an SDK's
        if self._settings.current_loop:
            with warnings.catch_warnings():  # there is none yet: asyncio makes one, and warns
                warnings.simplefilter("ignore", DeprecationWarning)
                asyncio.get_event_loop().run_until_complete(asyncio.sleep(0))
        time.sleep(self._settings.warm_up_s)
        if self._settings.warn:
            self._log.warning("%s, as it warmed up", self._settings.warn)
        if self._settings.fail_warm_up:
            from snapctl.errors import ProviderError

            raise ProviderError(self._settings.fail_warm_up, hint="give the provider its credentials")
        self._warm = True

    def snapshot(self, volumes, tags):
        self._event(f"snapshot {volumes.node}")
        warm = self._warm
        time.sleep(self._settings.delay_s)
        if volumes.node in self._settings.fail_nodes:
            from snapctl.errors import ProviderError

            raise ProviderError(f"injected failure for node {volumes.node}")
        if self._settings.warn:
            try:
                raise OSError("no route to the cloud")
            except OSError:
                self._log.exception("%s, in the call of node %s", self._settings.warn, volumes.node)
        refs = self._local.snapshot(volumes, tags)
        for ref in refs:
            ref.extra["pid"] = os.getpid()
            ref.extra["warm"] = warm
            ref.extra["gc_frozen"] = gc.get_freeze_count()
            ref.extra["argv0"] = os.path.basename(sys.argv[0])
        return refs

    def wait(self, refs, deadline, progress=None):
        made_by = {ref.snapshot_id: {k: ref.extra.get(k) for k in ("pid", "warm", "gc_frozen", "async", "argv0")} for ref in refs}
        done = self._local.wait(refs, deadline, progress)
        for ref in done:
            ref.extra.update(made_by.get(ref.snapshot_id, {}))
        return done
