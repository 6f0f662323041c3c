"""Threads for the provider's blocking calls, all started before the first hold.

Cloud SDKs block, so N snapshots created at once need N threads. ``ThreadPoolExecutor`` starts its
threads one per ``submit`` while none is idle, and ``threading.Thread.start`` waits until the new
thread has run, which needs the GIL the busy event loop holds for up to a switch interval (5 ms):
1000 threads took 1-2 s, and during the holds. Here they are started up front with
``_thread.start_new_thread``, which does not wait (1000 in ~50 ms), and each waits on one queue;
calls submitted before a thread is up simply queue.
"""

from __future__ import annotations

import _thread
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from snapctl.errors import ProviderError, SnapctlError

if TYPE_CHECKING:  # the provider worker's child imports this module and never runs a loop
    import asyncio


class CallRunner(Protocol):
    """Where the provider's blocking calls of one run are made (see also provider_worker.py)."""

    def start(self) -> None:
        """Begin getting ready; returns at once."""

    async def ready(self, timeout: float) -> None:
        """Return once calls submitted from now on start without delay (the provider warmed up,
        in the process that makes them); raise ``ProviderError`` if that cannot be."""

    def submit(self, call: Callable[..., Any], *args: Any) -> Future | asyncio.Future:
        """Run ``call(*args)`` (a method of the run's provider). The future (concurrent, or of the
        running loop) is never cancelled by the runner once the call is under way: await it
        through ``asyncio.wrap_future``, shielded wherever the wait may time out, so that whoever
        gave up waiting can still learn what the call made."""

    def shutdown(self, wait: bool = True) -> None:
        """Let the calls already submitted finish, then free everything; never waits for a call.
        ``wait=False``: only say that no more calls will come, so that whatever has to wind down
        (a child process) does it while the run goes on; a later ``shutdown()`` frees the rest.
        Either may be called again."""

    async def aclose(self) -> None:
        """At the end of the run: ``shutdown()``, then free what needs the event loop to be freed
        (a provider's async client). Never fails; waits for no call of the provider's threads."""


def not_ready(exc: Exception) -> SnapctlError:
    """A failed warm-up as the error a run reports: a plugin's own error, or what it was."""
    if isinstance(exc, SnapctlError):
        return exc
    return ProviderError(f"the provider could not get ready: {type(exc).__name__}: {exc}")


class ProviderThreads:
    """``count`` threads; the first of them runs ``warm_up`` (the provider's) before any call."""

    def __init__(self, count: int, warm_up: Callable[[], None] | None = None) -> None:
        self.count = max(1, count)
        self._work: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._started = 0
        self._closed = False
        self._lock = threading.Lock()
        self._warm_up = warm_up
        self._warmed: Future | None = None

    def start(self) -> None:
        """Start every thread, the provider's warm-up queued first; returns at once."""
        if self._warm_up is not None and self._warmed is None:
            self._warmed = self.submit(self._warm_up)
        with self._lock:
            for _ in range(self.count - self._started):
                if self._closed:
                    return
                # Like a daemon thread: a provider call that never returns must not keep snapctl
                # from exiting; whatever it made carries the run's tags, so `snapctl gc` finds it.
                _thread.start_new_thread(self._serve, ())
                self._started += 1

    async def ready(self, timeout: float) -> None:
        """Wait for the warm-up (calls queue until a thread takes them, which start() set going)."""
        if self._warmed is None:
            return
        import asyncio

        try:
            async with asyncio.timeout(timeout):
                await asyncio.wrap_future(self._warmed)
        except TimeoutError:
            raise ProviderError(f"the provider was not ready within {timeout:g}s (loading its SDK, finding "
                                "its credentials)", hint="check the provider's credentials and network") from None
        except Exception as exc:
            raise not_ready(exc) from exc

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._work.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Let every thread end once the calls already submitted are done (at once either way: a
        thread is never waited for)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in range(self._started):
                self._work.put(None)

    async def aclose(self) -> None:
        self.shutdown()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the future
                future.set_exception(exc)
            else:
                future.set_result(result)
