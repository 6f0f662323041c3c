"""snapctl.runner.run: asyncio.run's result and errors, without the task holding the result; SIGTERM
unwinds a command as Ctrl-C does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from snapctl.errors import RunFailed
from snapctl.runner import run


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


# SIGTERM: each case runs in a process of its own, which signals itself.
_SIGTERM_PROGRAM = """
import asyncio, os, signal, sys
from snapctl.runner import run

if sys.argv[1] == "ignored":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

async def command():
    os.kill(os.getpid(), signal.SIGTERM)
    try:
        await asyncio.sleep(1)
        return "finished"
    except asyncio.CancelledError:
        print("unwinding", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one must not cut the unwinding short
        await asyncio.sleep(0.2)
        print("unwound", flush=True)
        raise

try:
    print(run(command()), flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def _signalled(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SIGTERM_PROGRAM, mode], check=False, capture_output=True, text=True,
                          timeout=60)


def test_sigterm_unwinds_the_command_and_ends_as_an_interrupt():
    result = _signalled("default")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["unwinding", "unwound", "KeyboardInterrupt"]


def test_a_sigterm_ignored_from_the_start_stays_ignored():
    result = _signalled("ignored")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["finished"]
