"""The threads a drill drills its nodes on, and how long a stopped drill waits for them.

Daemon threads, not a ``ThreadPoolExecutor``: leaving an executor's block joins its threads with
no timeout, and so does the interpreter's exit, so one node's drill stuck past a stop signal (a
hung mount, a call that never looks at the stop) held the drill's teardown, its report, its
record and the process's exit for good. A stopped drill waits for its nodes at most
``STOP_GRACE_S`` more, then goes on without those still running, and says which they are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from typing import TypeVar

T = TypeVar("T")

# Long enough for a node told to stop to end (a copy stops within a chunk, a starting engine at
# its next look), short against a CI job's grace before SIGKILL: teardown and report come after.
STOP_GRACE_S = 5.0
WAKE_S = 0.2  # how late the main thread may run a stop signal's handler while it waits


def start(work: Callable[[str], T], names: Sequence[str], threads: int, prefix: str) -> list[Future[T]]:
    """``work(name)`` for every name, in order, on ``threads`` daemon threads; a future per name.
    A future cancelled before its thread takes it up is skipped."""
    futures = [Future[T]() for _ in names]
    queue = list(zip(names, futures))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if not queue:
                    return
                name, future = queue.pop(0)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work(name))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future, as an executor does
                future.set_exception(exc)

    for i in range(max(1, min(threads, len(futures)))):
        threading.Thread(target=run, name=f"{prefix}_{i}", daemon=True).start()
    return futures


def wait_for(futures: Sequence[Future[T]], until: float | None = None) -> None:
    """Until every future is done, or ``until`` (``time.monotonic()``) has passed. In slices, never
    one wait to the end: a signal's handler runs only when the main thread runs Python code, and
    one the kernel gave another thread (or that came just before the wait began) would wait for
    the last node to end."""
    while wait(futures, timeout=WAKE_S).not_done:
        if until is not None and time.monotonic() >= until:
            return
