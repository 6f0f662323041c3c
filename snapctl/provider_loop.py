"""Create calls awaited on snapctl's own event loop, for a provider whose SDK has an async client.

A blocking SDK needs a thread per concurrent create call, and at a thousand nodes those threads'
returns queue for the GIL with the event loop that sends the completes: that queue is most of the
freeze window beyond the create call itself (docs/performance-log.md, items 21 and 61). A provider
that defines ``snapshot_async`` (see ``snapctl.providers.Provider``) has its create calls made
as tasks on the run's loop instead: no thread, no process, no hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from snapctl.errors import ProviderError
from snapctl.provider_threads import ProviderThreads, not_ready

if TYPE_CHECKING:
    from snapctl.providers import Provider

# Closing the provider's async client (its connections) at the end of a run: it must not keep a
# finished run waiting on a network that stopped answering.
ACLOSE_S = 10.0


def has_async_create(provider: Provider) -> bool:
    return callable(getattr(provider, "snapshot_async", None))


class LoopCalls:
    """``snapshot`` calls made as ``snapshot_async`` tasks on the running loop; the provider's
    ``warm_up`` (its imports) and any other call in one thread of their own. At most ``calls``
    create calls are under way at once (``policy.concurrency``), as with that many threads."""

    def __init__(self, provider: Provider, calls: int) -> None:
        self._provider = provider
        self._snapshot = provider.snapshot
        self._snapshot_async = provider.snapshot_async  # type: ignore[attr-defined]
        self._thread = ProviderThreads(1, warm_up=provider.warm_up)
        self._tasks: set[asyncio.Task] = set()
        self._calls = calls
        self._slots: asyncio.Semaphore | None = None  # made on the loop that runs the calls
        self._warmed_on_loop = False

    def start(self) -> None:
        self._thread.start()

    async def ready(self, timeout: float) -> None:
        """The provider's ``warm_up`` (in the thread: imports block), then its ``warm_up_async``
        on the loop (its async client, a token), within ``timeout`` together."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self._thread.ready(timeout)
        warm_up_async = getattr(self._provider, "warm_up_async", None)
        if warm_up_async is None or self._warmed_on_loop:
            return
        try:
            async with asyncio.timeout_at(deadline):
                await warm_up_async()
        except TimeoutError:
            raise ProviderError(f"the provider's async client was not ready within {timeout:g}s",
                                hint="check the provider's credentials and network") from None
        except Exception as exc:
            raise not_ready(exc) from exc
        self._warmed_on_loop = True

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | asyncio.Future:
        if fn != self._snapshot:
            return self._thread.submit(fn, *args)
        # A task, not a coroutine awaited in place: the orchestrator shields it, so that a hold's
        # time budget running out leaves the call going for the rollback to await in its turn.
        task = asyncio.get_running_loop().create_task(self._bounded(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _bounded(self, *args: Any) -> Any:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._calls)
        async with self._slots:
            return await self._snapshot_async(*args)

    def shutdown(self, wait: bool = True) -> None:
        self._thread.shutdown(wait)

    async def aclose(self) -> None:
        """End what the run gave up on and close the provider's async client. A call still under
        way here is one the rollback stopped waiting for (its snapshots carry the run's tags:
        `snapctl gc` finds them), as a blocking call left in its thread would be."""
        self._thread.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=ACLOSE_S)
        close = getattr(self._provider, "aclose", None)
        if close is None:
            return
        # A client that will not close cannot fail a run whose snapshots are already recorded.
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(ACLOSE_S):
                await close()
