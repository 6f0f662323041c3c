"""Server processes for real-engine tests: started in their own session, always killed.

Every process started here is registered until it is reaped, and an ``atexit`` hook kills
whatever is still registered, so an interrupted test run leaves nothing listening.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

_LIVE: dict[int, ServerProcess] = {}


def require_binary(name: str) -> str:
    """The binary's path, or skip the calling test with the reason."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} binary not found on PATH (Debian: apt-get install {_PACKAGES.get(name, name)})")
    return path


_PACKAGES = {"etcd": "etcd-server", "etcdctl": "etcd-client", "tarantool": "tarantool"}


class ServerProcess:
    """One server process with its output in a log file."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, log_path: Path, env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        self.env = env
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.argv[0]} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            # Own session: a kill reaches the whole group, and ^C in pytest does not reach it first.
            self._popen = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})}, start_new_session=True,
            )
        _LIVE[self._popen.pid] = self

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing is flushed."""
        self._signal_and_reap(signal.SIGKILL, wait_s=10)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        if not self._signal_and_reap(signal.SIGTERM, wait_s=grace_s):
            self.kill()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP for the duration: the kernel still accepts connections, nothing answers them."""
        assert self._popen is not None and self.alive(), "start the process first"
        os.killpg(self._popen.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            if self.alive():
                os.killpg(self._popen.pid, signal.SIGCONT)

    def _signal_and_reap(self, sig: int, *, wait_s: float) -> bool:
        popen = self._popen
        if popen is None:
            return True
        if popen.poll() is None:
            try:
                os.killpg(popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                return False
        _LIVE.pop(popen.pid, None)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str,
               processes: Sequence[ServerProcess] = ()) -> None:
    """Poll ``check`` until true; fail with the processes' log tails otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for proc in processes:
            if proc._popen is not None and not proc.alive():
                raise RuntimeError(f"{what}: {proc.argv[0]} exited early\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception as exc:  # the server is still coming up: keep polling
            last_error = exc
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.log_path}\n{p.log_tail()}" for p in processes)
    raise TimeoutError(f"{what}: not ready within {timeout_s:g}s (last error: {last_error})\n{logs}")


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        proc.kill()
