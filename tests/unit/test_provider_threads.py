"""ProviderThreads: results and errors reach the future, a call cancelled before it ran never
runs, calls submitted before the threads are up still run, and shutdown ends every thread."""

from __future__ import annotations

import sys
import threading
import time

import pytest

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
