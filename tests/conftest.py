"""Shared fixtures: everything listens on loopback only."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
_LOWEST_PORT = 10000


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback port for a server a test starts later, chosen below the ephemeral range. A port
    the kernel hands out (bind to 0) can be taken, before the server binds it, as the local end of
    any outgoing connection on the machine: an etcd member once failed "address already in use"
    that way while the suite's other workers were busy connecting. A port is also reserved for a
    while across every test process on the machine (``_reserve``): two workers, or two suites,
    once picked the same free port before either server had bound it."""
    first_ephemeral, _ = _ephemeral_ports()
    candidates = range(_LOWEST_PORT, first_ephemeral)
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        if _reserve(port):
            return port
    with socket.socket() as sock:  # no range below the ephemeral ports on this machine
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


_RESERVATIONS = Path(tempfile.gettempdir()) / "snapctl-test-ports"
_RESERVED_FOR_S = 120  # longer than any server takes to bind the port it was given


def _reserve(port: int) -> bool:
    """Claim ``port`` for this process unless another test process claimed it lately: a file per
    port, created exclusively. One older than ``_RESERVED_FOR_S`` is taken over by renaming it
    away first, which only one process can do to the same file."""
    try:
        _RESERVATIONS.mkdir(exist_ok=True)
        _RESERVATIONS.chmod(0o1777)  # every user's suites share it, as they share the ports (like /tmp)
    except PermissionError:
        pass  # another user's directory: its mode is already set
    path = _RESERVATIONS / str(port)
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            pass
        except PermissionError:
            return True  # no reservations here: the port is free, as free_port checked
        moved = path.with_name(f"{port}.{os.getpid()}.stale")
        try:
            if time.time() - path.stat().st_mtime < _RESERVED_FOR_S:
                return False
            os.rename(path, moved)
            if time.time() - moved.stat().st_mtime < _RESERVED_FOR_S:  # just taken over by another
                os.rename(moved, path)
                return False
            moved.unlink()
        except FileNotFoundError:
            pass
        except PermissionError:  # another user's reservation, in the shared sticky directory
            return False
    return False


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, the run's one moto server starts here in the controller, before any worker,
    which finds it in $SNAPCTL_TEST_MOTO_URL (tests/moto_server.py). A run without workers starts
    it on first use instead: most such runs need none."""
    from tests.moto_server import URL_ENV, start_for_run

    # The agents the tests start keep their hold records in this process's own directory, never in
    # the user's state directory, where a record of one suite would be another's left hold.
    os.environ.pop("STATE_DIRECTORY", None)
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="snapctl-test-state-")
    is_controller = not hasattr(config, "workerinput")
    if is_controller and (getattr(config.option, "numprocesses", None) or 0) and not os.environ.get(URL_ENV):
        start_for_run()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = os.environ.get("XDG_STATE_HOME", "")
    if Path(state).name.startswith("snapctl-test-state-"):
        shutil.rmtree(state, ignore_errors=True)


def with_ctrl_c(argv: list[str]) -> list[str]:
    """``argv`` (a Python program's) started with SIGINT at its default, as a terminal's foreground
    job gets it. A shell without job control starts background commands with SIGINT ignored, and
    Python keeps an inherited ignore: in a suite launched that way, a child would never see the
    Ctrl-C a test sends it."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *argv]


# argv: MODULE FUNCTION SNAPCTL-ARGS...; FUNCTION runs, then SIGTERM arrives.
_STOPPED_AFTER = """
import importlib, os, signal, sys, threading, time

import snapctl.cli as cli

module = importlib.import_module(sys.argv[1])
original = getattr(module, sys.argv[2])
sent = threading.Event()


def told_of(args):
    # How a step in another thread learns it was told to stop: a drill's node by its `cancelled`,
    # a file copy by its `stopped()`; None for a step of the main thread.
    cancelled = getattr(args[0], "cancelled", None) if args else None
    return cancelled.is_set if cancelled is not None else next((a for a in args if callable(a)), None)


def until_told(told):
    deadline = time.monotonic() + 30
    while told is not None and not told() and time.monotonic() < deadline:
        time.sleep(0.01)


def then_sigterm(*args, **kwargs):
    if sent.is_set():
        # The same step in another thread, after the signal: it waits to be told too, or on a
        # loaded machine the work (a copy's other files) could run to its end before the main
        # thread handled the signal, and there would be nothing left to stop.
        until_told(told_of(args))
        return original(*args, **kwargs)
    result = original(*args, **kwargs)
    if not sent.is_set():
        sent.set()
        # To the main thread, as a kill from outside lands: sent to the process from this thread,
        # Linux may deliver it here, and the main thread's wait for a lock would not be woken.
        signal.pthread_kill(threading.main_thread().ident, getattr(signal, os.environ['SNAPCTL_TEST_STOP_WITH']))
        # In the main thread the handler interrupts this wait. In another thread it ends once the
        # step has been told.
        told = told_of(args)
        if told is None:
            threading.Event().wait(30)
        until_told(told)
    return result


setattr(module, sys.argv[2], then_sigterm)
sys.argv = ["snapctl", *sys.argv[3:]]
cli.main()
"""


def snapctl_sigtermed_after(module: str, function: str, *snapctl_args: str, cwd: Path,
                            signal_name: str = "SIGTERM") -> subprocess.CompletedProcess:
    """The real CLI in a process of its own, which sends itself SIGTERM (or ``signal_name``) once
    ``module.function`` (a step of the command's work) has returned: the signal lands at a known
    point on any machine."""
    return subprocess.run([sys.executable, "-c", _STOPPED_AFTER, module, function, *snapctl_args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SNAPCTL_TEST_STOP_WITH": signal_name})


@pytest.fixture
def port() -> int:
    return free_port()
