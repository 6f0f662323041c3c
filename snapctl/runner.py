"""SIGTERM stops a command as Ctrl-C does, and ``run`` (``asyncio.run`` for the CLI's coroutines).

SIGTERM is how cron's and CI's timeouts, systemd, Kubernetes and ``timeout(1)`` stop a command.
By default it kills the process where it stands: a backup's nodes would stay held until their
leases ran out, its manifest would say "running", a restore would leave its half-copied staging
directory and a drill its scratch engines. The CLI wraps every command in ``sigterm_as_ctrl_c``,
so SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does and the command unwinds through its own
``finally`` blocks. While a coroutine runs, ``run`` swaps that for a handler that cancels the
command's task, as ``asyncio.run`` does on Ctrl-C: an exception raised in the middle of the event
loop's callbacks would cut through whatever they were doing, where a cancelled task unwinds (a
backup rolls back: every held node is completed first). Either way the command ends with
``Interrupted``, which the CLI reports (exit 130) like any other error. A second SIGTERM does
not cut the unwinding (a backup's rollback) short; SIGKILL does. ``interrupts_deferred`` holds
both signals back over the few steps that must not be cut at all. A SIGTERM that was ignored or
handled when snapctl started (``nohup``-style) stays as it was, as an ignored SIGINT does.
``KeyboardInterrupt`` reaches the main thread only: a drill, which restores its nodes in threads
of its own, tells their restores to stop through ``snapctl.providers.stoppable_by``.

``asyncio.run`` installs a SIGINT handler that refers to its main task; restoring the old handler
at exit converts it through an enum, which formats the task's repr, and a finished task's repr
includes its result. For a 1000-node manifest that repr costs 10-50 ms of pure waste per command.
Keeping the result out of the task avoids it.

While a coroutine runs, what existed before it is frozen out of the garbage collector's scans
(``gc.freeze``): it stays alive to the command's end anyway, and scanning it again is what made
a full collection in the middle of a 1000-node backup's holds take tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from snapctl.errors import Interrupted

T = TypeVar("T")


_taken: list[int] = []  # the first stop signal of the command (SIGTERM, SIGHUP), once one came


def stopped_by() -> str:
    """The signal that stopped the command, as its "interrupted (...)" names it: SIGTERM or SIGHUP
    when one of them came first, else SIGINT (Ctrl-C; ``KeyboardInterrupt`` is SIGINT's own)."""
    return signal.Signals(_taken[0]).name if _taken else "SIGINT"


def _took(signum: int) -> None:
    if not _taken:
        _taken.append(signum)


class _CtrlCOnSigterm:
    """The SIGTERM handler: the first raises ``KeyboardInterrupt``; later ones do nothing, so that
    they do not cut the unwinding short. (Not ``SIG_IGN``: processes started meanwhile would
    inherit it.)"""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum, frame) -> None:
        if not self.fired:
            self.fired = True
            _took(signum)
            raise KeyboardInterrupt


# SIGHUP too: an ssh session or terminal that goes away sends it, and by default it killed a
# backup or drill where it stood, as SIGKILL does (nodes left to their leases, a drill's scratch
# engines and restored volumes left behind). `nohup` ignores it, and then it stays ignored.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within it, the first SIGTERM (or SIGHUP) raises ``KeyboardInterrupt`` in the main thread, as
    Ctrl-C does, and later ones are ignored: the code unwinds and its cleanup runs. Nested uses,
    other threads and signals someone else handles or ignores are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is signal.SIG_DFL]
    if ours:  # the command's outermost: what stopped an earlier one (in the same process) is not this one's
        _taken.clear()
    handler = _CtrlCOnSigterm()  # one for both: a SIGHUP after a SIGTERM does not cut the unwinding short
    for signum in ours:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive within the block take effect as it ends, for code that must
    not be cut in the middle: a ``KeyboardInterrupt`` inside ``ThreadPoolExecutor.submit`` (which
    waits for the thread it starts) leaves that thread running the work with no future to wait for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    deferred = {}
    try:  # a signal handled between two of these swaps restores those made: none may keep deferring
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            handler = signal.getsignal(signum)
            if callable(handler):  # ignored or default (a kill) signals stay as they are
                deferred[signum] = handler
                signal.signal(signum, lambda signum, frame: arrived.append(signum))
        yield
    finally:
        for signum, handler in deferred.items():
            signal.signal(signum, handler)
        if arrived:
            deferred[arrived[0]](arrived[0], None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    result: list[T] = []
    terminated = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} if main_thread else {}
    stopping = [signum for signum, handler in handlers.items() if handler is signal.SIG_DFL
                or (isinstance(handler, _CtrlCOnSigterm) and not handler.fired)]

    async def main() -> None:
        _cancel_on_sigterm(asyncio.current_task(), terminated, stopping)
        result.append(await coro)

    # What the command imported and built before it runs (modules, models, the inventory) stays
    # alive to its end: the collector need not look at it again. Unfrozen, a full collection in a
    # 1000-node backup took 25-62 ms, in the middle of the holds; frozen, 11-25 ms (item 47).
    gc.freeze()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # asyncio.run's answer to Ctrl-C, once the task has unwound
        raise Interrupted() from None
    except asyncio.CancelledError:
        if terminated.is_set():
            raise Interrupted() from None
        raise
    finally:
        gc.unfreeze()
        for signum, handler in handlers.items():
            if isinstance(handler, _CtrlCOnSigterm):  # the loop put it back to its default on closing
                handler.fired = handler.fired or terminated.is_set()
                signal.signal(signum, handler)
    return result[0]


def _cancel_on_sigterm(task: asyncio.Task | None, terminated: threading.Event, signals: list[int]) -> None:
    if task is None:
        return

    def on_sigterm(signum: int) -> None:
        if not terminated.is_set():
            _took(signum)
            terminated.set()
            task.cancel()

    # The loop removes them when it closes, which puts each back to its default.
    for signum in signals:
        asyncio.get_running_loop().add_signal_handler(signum, on_sigterm, signum)
