"""snapctl.runner: ``run`` gives asyncio.run's result and errors, without the task holding the
result; SIGTERM unwinds a command as Ctrl-C does (``sigterm_as_ctrl_c`` for synchronous code, the
main task cancelled for a coroutine), a second SIGTERM does not cut the unwinding short, and a
coroutine ends as ``Interrupted``; the garbage collector leaves what existed before a command alone
while it runs."""

from __future__ import annotations

import gc
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


async def _freeze_count() -> int:
    return gc.get_freeze_count()


def test_what_existed_before_the_command_is_left_out_of_collections_while_it_runs():
    before = len(gc.get_objects())
    assert run(_freeze_count()) >= before  # frozen: a collection during the run does not scan them
    assert gc.get_freeze_count() == 0  # and back to normal afterwards, failed run or not
    with pytest.raises(RunFailed):
        run(_fail())
    assert gc.get_freeze_count() == 0


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


_SYNC_PROGRAM = """
import os, signal, sys, time
from snapctl.runner import run, sigterm_as_ctrl_c

async def answer():
    return "answered"

with sigterm_as_ctrl_c():
    print(run(answer()), flush=True)  # a coroutine run inside puts the handler back when it ends
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("slept", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored while the code unwinds
        time.sleep(0.2)
        print("unwound", flush=True)
print("default" if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else "changed", flush=True)
"""


def test_sigterm_interrupts_synchronous_code_as_ctrl_c_does_and_only_once():
    result = subprocess.run([sys.executable, "-c", _SYNC_PROGRAM], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["answered", "interrupted", "unwound", "default"]


_NESTED_PROGRAM = """
import asyncio, os, signal
from snapctl.errors import Interrupted
from snapctl.runner import run, sigterm_as_ctrl_c

async def command():
    os.kill(os.getpid(), signal.SIGTERM)
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        print("cancelled", flush=True)  # unwound as a task, not cut through by KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.2)
        raise

with sigterm_as_ctrl_c():
    try:
        run(command())
    except Interrupted:
        print("interrupted", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # still unwinding: ignored
    print("survived", flush=True)
"""


def test_a_coroutine_under_sigterm_as_ctrl_c_is_cancelled_and_a_later_sigterm_ignored():
    result = subprocess.run([sys.executable, "-c", _NESTED_PROGRAM], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cancelled", "interrupted", "survived"]


_DEFERRED_PROGRAM = """
import os, signal, sys
from snapctl.runner import interrupts_deferred, sigterm_as_ctrl_c

sig = signal.SIGINT if sys.argv[1] == "sigint" else signal.SIGTERM
with sigterm_as_ctrl_c():
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), sig)
            print("block finished", flush=True)
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


@pytest.mark.parametrize("mode", ["sigterm", "sigint"])
def test_interrupts_deferred_act_when_the_block_ends(mode):
    result = subprocess.run(with_ctrl_c([sys.executable, "-c", _DEFERRED_PROGRAM, mode]), check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["block", "finished", "interrupted"]


_SIGNALLED_AS_DEFERRAL_BEGINS = """
import os, signal
from snapctl.runner import interrupts_deferred, sigterm_as_ctrl_c

swap = signal.signal


def swapped_then_sigterm(signum, handler):
    # SIGTERM lands just after the first of the deferral's swaps (SIGINT's): its handler runs there.
    previous = swap(signum, handler)
    if signum == signal.SIGINT and handler is not signal.default_int_handler:
        signal.signal = swap
        os.kill(os.getpid(), signal.SIGTERM)
    return previous


with sigterm_as_ctrl_c():
    signal.signal = swapped_then_sigterm
    try:
        with interrupts_deferred():
            print("block ran", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
print("ctrl-c acts" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "ctrl-c deferred for good",
      flush=True)
"""


def test_a_signal_as_the_deferral_begins_leaves_no_signal_deferred_for_good():
    # It interrupted, but SIGINT kept the deferral's handler: every later Ctrl-C only appended to a
    # list nobody read.
    result = subprocess.run(with_ctrl_c([sys.executable, "-c", _SIGNALLED_AS_DEFERRAL_BEGINS]), check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["interrupted", "ctrl-c acts"]
