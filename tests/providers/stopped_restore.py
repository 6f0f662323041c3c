"""A restore stopped as a drill stops it: in a thread of its own (Ctrl-C never reaches it), under
the stop event the drill sets, while the cloud is still making its disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from snapctl.providers import stoppable_by


def stopped_while_making(restore: Callable[[], object], sent: Callable[[], bool],
                         finish: Callable[[], None]) -> BaseException | str:
    """What ``restore()`` ended with when stopped once ``sent()`` says its create went out;
    ``finish()`` lets the cloud's operation end, a second after the stop. "restored" if it was not
    stopped at all."""
    stop, outcome = threading.Event(), []

    def run() -> None:
        with stoppable_by(stop):
            try:
                restore()
                outcome.append("restored")
            except BaseException as exc:  # noqa: BLE001 - what the restore ended with is the point
                outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while not sent() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    threading.Timer(1, finish).start()
    worker.join(90)
    assert not worker.is_alive(), "the restore went on after its stop"
    return outcome[0]
