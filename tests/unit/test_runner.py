"""snapctl.runner.run: asyncio.run's result and errors, without the task holding the result; SIGTERM
unwinds a command as Ctrl-C does, and both end it as ``Interrupted``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from snapctl.errors import ExitCode, RunFailed
from snapctl.runner import run
from tests.conftest import with_ctrl_c


async def _answer(value):
    return value


async def _fail():
    raise RunFailed("backup run r1 failed")


class _CountsRepr:
    calls = 0

    def __repr__(self) -> str:
        type(self).calls += 1
        return "big"


def test_run_returns_the_result_and_never_formats_it():
    result = _CountsRepr()
    assert run(_answer(result)) is result
    assert _CountsRepr.calls == 0


def test_run_raises_what_the_coroutine_raised():
    with pytest.raises(RunFailed, match="backup run r1 failed"):
        run(_fail())


# Signals: each case runs in a process of its own, which signals itself.
_SIGNALLED_PROGRAM = """
import asyncio, os, signal, sys
from snapctl.errors import Interrupted
from snapctl.runner import run

mode = sys.argv[1]
sig = signal.SIGINT if mode == "sigint" else signal.SIGTERM
if mode == "ignored":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

async def command():
    os.kill(os.getpid(), sig)
    try:
        await asyncio.sleep(1)
        return "finished"
    except asyncio.CancelledError:
        print("unwinding", flush=True)
        if sig == signal.SIGTERM:
            os.kill(os.getpid(), sig)  # a second SIGTERM must not cut the unwinding short
        await asyncio.sleep(0.2)
        print("unwound", flush=True)
        raise

try:
    print(run(command()), flush=True)
except Interrupted as exc:
    print(f"{type(exc).__name__}:{exc.exit_code}", flush=True)
"""


def _signalled(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(with_ctrl_c([sys.executable, "-c", _SIGNALLED_PROGRAM, mode]), check=False,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["sigterm", "sigint"])
def test_sigterm_and_ctrl_c_unwind_the_command_and_end_as_interrupted(mode):
    result = _signalled(mode)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["unwinding", "unwound", f"Interrupted:{ExitCode.INTERRUPTED}"]


def test_a_sigterm_ignored_from_the_start_stays_ignored():
    result = _signalled("ignored")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["finished"]
