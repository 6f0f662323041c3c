"""The provider worker's first process, started: forked from snapctl's own process where that is
safe, else a new interpreter (``python -m snapctl.provider_child``).

A new interpreter needs ~0.15-0.2 s on this 2-core machine, beside the preflight, before it can
build the provider: its own start, then pydantic and snapctl's provider code, all of which
snapctl's process has loaded already. The run waits for it before the first hold, so it was the
wall time of every run that used the worker and whose preflight was shorter (docs/performance-log.md,
item 62). A forked child has all that from the first instant.

Forking is safe only while this process has one thread: a lock another thread held at that
instant (rich's live display, a logging handler's, an SDK's) would stay held in the child for
good. So: Linux, one thread (the main one), else the new interpreter, as on a terminal, where the
live progress display runs its own thread, in the test suite's workers, and where the system
refuses the fork. The forked child drops everything of this process that could act on it: the
signal handlers (stop signals are held back across the fork until it ignores them), the event
loop's wake-up descriptor and asyncio's current loop, every file descriptor but its pipes and
stderr, the Python-level output buffers. It runs ``provider_child.serve`` and exits from there;
it never returns into the caller's code or event loop.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, NoReturn

_unreaped: list[int] = []  # forked children nobody waited for: reaped at the next start
_inherited: list[object] = []  # in a forked child: what must never be finalized there
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_PR_SET_NAME = 15


def can_fork() -> bool:
    """Whether the worker's process may be forked from this one now: on Linux, from the main
    thread, the only one. Counted by the kernel, which sees the threads an extension started
    itself (an SDK's native ones) too, where ``threading`` sees only Python's."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # cannot tell: a new interpreter is always safe
        return False


class ForkedChild:
    """What the worker uses of ``subprocess.Popen``, for a child forked here."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its code is lost, as Popen says 0
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"provider worker process {self.pid}", timeout or 0.0)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def __del__(self) -> None:
        if self.returncode is None:
            _unreaped.append(self.pid)


def start_worker_process(pass_fds: list[int]) -> subprocess.Popen | ForkedChild:
    """The worker's first process, its stdin and stdout pipes to this one, ``pass_fds`` open in it
    too (at the same numbers), nothing else of ours but stderr. Forked where ``can_fork``; a fork
    the system refuses (under strict overcommit, no memory to promise a copy of snapctl's) starts a
    new interpreter instead, which ``subprocess`` does with vfork, promising none."""
    _reap_finished()
    if can_fork():
        forked = _fork(pass_fds)
        if forked is not None:
            return forked
    return subprocess.Popen([sys.executable, "-m", "snapctl.provider_child"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, close_fds=True, pass_fds=pass_fds)


def _fork(pass_fds: list[int]) -> ForkedChild | None:
    (to_read, to_write), (from_read, from_write) = os.pipe(), os.pipe()
    # Held back until the child ignores them: one arriving in between would run snapctl's own
    # handler in the child (a second Ctrl-C raises KeyboardInterrupt into snapctl's code there).
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        for fd in (to_read, to_write, from_read, from_write):
            os.close(fd)
        if isinstance(exc, OSError):
            return None
        raise
    if pid == 0:
        try:
            _serve_here(to_read, from_write, pass_fds, unblocked)
        finally:
            os._exit(70)
    signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    os.close(to_read)
    os.close(from_write)
    return ForkedChild(pid, os.fdopen(to_write, "wb"), os.fdopen(from_read, "rb"))


def _serve_here(to_read: int, from_write: int, pass_fds: list[int], unblocked: set) -> NoReturn:
    code = 70  # EX_SOFTWARE: the parent reports the exit code of a child that ends before it is ready
    try:
        for signum in _STOP_SIGNALS:  # as serve() has them
            signal.signal(signum, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)  # the parent's loop's: a signal here must not wake it
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        _forget_the_event_loop()
        # What the parent had stays alive and is never collected here: a finalizer run in this
        # process (a socket's, a file's) would close a descriptor number this process reuses. The
        # streams replaced below too: an embedding program's own sys.stdout is only referenced there.
        _inherited.extend((sys.stdout, sys.stderr))
        gc.freeze()
        os.dup2(to_read, 0)
        os.dup2(from_write, 1)
        _close_all_but({0, 1, 2, *pass_fds})
        # A fresh stream (serve() points sys.stdout at it too, keeping descriptor 1 for the results):
        # the inherited ones may hold output the parent has not written yet, which a print would repeat.
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        _name_this_process()
        from snapctl.provider_child import serve

        code = serve()
    except BaseException:  # noqa: BLE001 - said on stderr; the exit code tells the parent
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001, S110 - nothing is left to say it with
            pass
    finally:
        os._exit(code)  # never the parent's atexit handlers, buffers or event loop


def _forget_the_event_loop() -> None:
    """The parent's event loop is this thread's current one here too, running and with its
    descriptors closed below: a provider that asks asyncio for the current loop must get a new one,
    as in a new interpreter (what Python 3.12 does itself after a fork)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop_policy(None)


def _name_this_process() -> None:
    """``ps -o comm`` and ``pgrep snapctl`` tell the worker from snapctl (its command line, which
    ``ps aux`` and ``pgrep -f`` read, stays snapctl's)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, b"snapctl-worker", 0, 0, 0)
    except Exception:  # noqa: BLE001, S110 - a name only
        pass


def _close_all_but(keep: set[int]) -> None:
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every range between the ones kept, up to the highest possible
        below = -1
        for fd in sorted(keep):
            os.closerange(below + 1, fd)
            below = fd
        os.closerange(below + 1, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in open_fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, closed with it
                pass


def _reap_finished() -> None:
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _unreaped.remove(pid)
