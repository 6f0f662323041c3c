"""``run``: ``asyncio.run`` for the CLI's coroutines, which SIGTERM interrupts as Ctrl-C does.

SIGTERM is how cron's and CI's timeouts, systemd, Kubernetes and ``timeout(1)`` stop a command.
By default it kills the process where it stands: a backup's nodes would stay held until their
leases ran out and its manifest would say "running". Here it cancels the command's task, as
``asyncio.run`` does on Ctrl-C, so the command unwinds (a backup rolls back: every held node is
completed first). Either signal then ends ``run`` with ``Interrupted``, which the CLI reports
(exit 130) like any other error. A second SIGTERM does not cut the unwinding short;
SIGKILL does. A SIGTERM that was ignored when snapctl started (``nohup``-style) stays ignored, as
an ignored SIGINT does.

``asyncio.run`` installs a SIGINT handler that refers to its main task; restoring the old handler
at exit converts it through an enum, which formats the task's repr, and a finished task's repr
includes its result. For a 1000-node manifest that repr costs 10-50 ms of pure waste per command.
Keeping the result out of the task avoids it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from snapctl.errors import Interrupted

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    result: list[T] = []
    terminated = threading.Event()

    async def main() -> None:
        _cancel_on_sigterm(asyncio.current_task(), terminated)
        result.append(await coro)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # asyncio.run's answer to Ctrl-C, once the task has unwound
        raise Interrupted() from None
    except asyncio.CancelledError:
        if terminated.is_set():
            raise Interrupted() from None
        raise
    return result[0]


def _cancel_on_sigterm(task: asyncio.Task | None, terminated: threading.Event) -> None:
    if task is None or threading.current_thread() is not threading.main_thread():
        return  # only the main thread gets signals
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # ignored on purpose, or someone else's handler

    def on_sigterm() -> None:
        if not terminated.is_set():
            terminated.set()
            task.cancel()

    # The loop removes it when it closes, which puts SIGTERM back to its default.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
