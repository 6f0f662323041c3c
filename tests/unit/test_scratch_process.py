"""The drill's scratch engine process: an interrupted drill stops waiting for it at once, and the
process is killed when its block ends."""

from __future__ import annotations

import sys
import threading

import pytest

from snapctl.drill_engines import ScratchProcess
from snapctl.errors import EngineError

_NEVER_READY = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_an_interrupted_drill_stops_waiting_for_a_starting_engine(tmp_path):
    cancelled = threading.Event()
    checks = []

    def ready() -> bool:
        checks.append(1)
        if len(checks) == 3:
            cancelled.set()  # as the drill's main thread does on Ctrl-C or SIGTERM
        return False

    interrupted = r"the drill was interrupted \(SIG[A-Z]+\) while engine was starting"
    with ScratchProcess(_NEVER_READY, tmp_path, "engine") as process, pytest.raises(EngineError, match=interrupted):
        process.wait_until(ready, 60, "engine on restored data", cancelled)
    assert len(checks) == 3
    assert process.popen.poll() is not None, "the engine is killed when its block ends"


def test_without_a_cancel_the_wait_ends_at_its_timeout(tmp_path):
    with ScratchProcess(_NEVER_READY, tmp_path, "engine") as process, \
            pytest.raises(EngineError, match="did not come up within 0.3s"):
        process.wait_until(lambda: False, 0.3, "engine on restored data", threading.Event())
