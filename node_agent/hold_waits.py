"""Prepares waiting for their ``hold_at``, and the completes that cancel them.

Over HTTP the wait is a timer on the event loop (``wait_async``), not a blocked worker thread:
starlette runs every engine call in anyio's pool of 40 threads, and prepares from a token holder,
each naming an instant seconds ahead, once occupied all of them, so snapctl's renew and complete
queued until those instants passed. The service's direct callers (the embedded agent, tests) wait
in their own thread (``wait``). Either way a complete of the same run that arrives meanwhile
(a run rolling back) wakes the wait, and the prepare is refused: the engine is never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator

_Wake = Callable[[], None]


class HoldWaits:
    def __init__(self) -> None:
        # Not the service's lock: an engine call can hold that one for minutes, and the event loop
        # must never wait for it.
        self._lock = threading.Lock()
        self._wakes: dict[str, list[_Wake]] = {}  # run id -> how to wake each prepare waiting
        self._cancelled: set[str] = set()  # runs whose waiting prepares are to be refused

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._wakes

    def cancel(self, run_id: str) -> bool:
        """Wake every prepare of ``run_id`` still waiting, to be refused; False when none waits."""
        with self._lock:
            wakes = list(self._wakes.get(run_id, ()))
            if wakes:
                self._cancelled.add(run_id)
        for wake in wakes:
            wake()
        return bool(wakes)

    def wait(self, run_id: str, lead: float) -> bool:
        """Wait ``lead`` seconds in this thread; False when the run was cancelled meanwhile."""
        woken = threading.Event()
        wake = woken.set
        self._begin(run_id, wake)
        try:
            woken.wait(lead)
        finally:
            cancelled = self._end(run_id, wake)
        return not cancelled

    async def wait_async(self, run_id: str, lead: float) -> bool:
        """Wait ``lead`` seconds on the running event loop; False when the run was cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:  # called from the thread of the complete
            with contextlib.suppress(RuntimeError):  # the loop closed (the agent stopping): nobody to wake
                loop.call_soon_threadsafe(woken.set)

        self._begin(run_id, wake)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), lead)
        finally:
            cancelled = self._end(run_id, wake)
        return not cancelled

    def _begin(self, run_id: str, wake: _Wake) -> None:
        with self._lock:
            self._wakes.setdefault(run_id, []).append(wake)

    def _end(self, run_id: str, wake: _Wake) -> bool:
        with self._lock:
            wakes = self._wakes[run_id]
            wakes.remove(wake)
            cancelled = run_id in self._cancelled
            if not wakes:
                del self._wakes[run_id]
                self._cancelled.discard(run_id)
            return cancelled


class Preparing:
    """The runs whose prepare has arrived and is not answered yet: waiting for its ``hold_at``, for
    the engine, or in its prepare call. ``/v1/status`` names them (``preparing``): such a hold has
    not begun, so no lease shows it, yet it will, and a run that takes a dead run's lock over must
    wait for it as for a lease (snapctl/dead_holds.py), or that run's prepare is refused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: Counter[str] = Counter()

    @contextlib.contextmanager
    def of(self, run_id: str) -> Iterator[None]:
        with self._lock:
            self._runs[run_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs[run_id] -= 1
                if not self._runs[run_id]:
                    del self._runs[run_id]

    def runs(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)
