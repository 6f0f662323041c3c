"""ProviderThreads: results and errors reach the future, a call cancelled before it ran never
runs, calls submitted before the threads are up still run, shutdown ends every thread, and the
provider's warm-up is what ``ready`` waits for, and says why it failed."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from snapctl.errors import ProviderError
from snapctl.provider_threads import ProviderThreads


def _threads_of(pool: ProviderThreads) -> int:
    """Threads waiting in, or running a call from, this pool's ``_serve``."""
    count = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_serve" and frame.f_locals.get("self") is pool:
                count += 1
                break
            frame = frame.f_back
    return count


def test_calls_run_concurrently_and_return_results_and_errors():
    pool = ProviderThreads(8)
    pool.start()
    barrier = threading.Barrier(8, timeout=5)  # only passes if 8 calls run at the same time
    futures = [pool.submit(lambda i=i: (barrier.wait(), i)[1]) for i in range(8)]
    assert sorted(f.result(timeout=5) for f in futures) == list(range(8))
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    pool.shutdown()


def test_a_call_submitted_before_start_runs_and_a_cancelled_one_never_does():
    pool = ProviderThreads(1)
    ran: list[str] = []
    blocker = threading.Event()
    first = pool.submit(lambda: (blocker.wait(5), ran.append("first")))
    cancelled = pool.submit(lambda: ran.append("cancelled"))
    assert cancelled.cancel()
    pool.start()
    blocker.set()
    first.result(timeout=5)
    last = pool.submit(lambda: ran.append("last"))
    last.result(timeout=5)
    assert ran == ["first", "last"]
    pool.shutdown()


def test_shutdown_ends_every_thread_once_its_call_is_done():
    pool = ProviderThreads(5)
    pool.start()
    deadline = time.monotonic() + 5
    while _threads_of(pool) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _threads_of(pool) == 5
    pool.shutdown()
    while _threads_of(pool) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _threads_of(pool) == 0


def test_ready_waits_for_the_warm_up_so_calls_after_it_find_the_provider_warm():
    warm = threading.Event()
    release = threading.Event()

    def warm_up() -> None:
        release.wait(5)
        warm.set()

    pool = ProviderThreads(4, warm_up=warm_up)
    pool.start()

    async def ready() -> bool:
        waiting = asyncio.ensure_future(pool.ready(5))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # still loading
        release.set()
        await waiting
        return await asyncio.wrap_future(pool.submit(warm.is_set))

    assert asyncio.run(ready()) is True
    pool.shutdown()


@pytest.mark.parametrize(("failure", "message"), [
    (ProviderError("aws: no usable credentials (NoCredentialsError)"), "aws: no usable credentials"),
    (RuntimeError("boom"), "the provider could not get ready: RuntimeError: boom"),
])
def test_a_failed_warm_up_fails_ready_with_a_provider_error(failure, message):
    def warm_up() -> None:
        raise failure

    pool = ProviderThreads(1, warm_up=warm_up)
    pool.start()
    with pytest.raises(ProviderError, match=message):
        asyncio.run(pool.ready(5))
    pool.shutdown()


def test_a_warm_up_still_running_at_the_deadline_fails_ready_saying_what_it_waited_for():
    release = threading.Event()
    pool = ProviderThreads(1, warm_up=lambda: release.wait(5))
    pool.start()
    with pytest.raises(ProviderError, match=r"the provider was not ready within 0.2s \(loading its SDK"):
        asyncio.run(pool.ready(0.2))
    release.set()
    pool.shutdown()
