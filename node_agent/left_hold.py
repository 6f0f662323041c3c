"""A hold the agent process before this one left behind (killed outright while it held, or while
it was making the hold): found at start in the hold record, released through the engine, and
retried by the lease watcher while the engine cannot be reached (docs/agent.md, "An engine left
held"). An embedded agent's record (``HoldRecords.embedded``) was left by an earlier snapctl
process, which the agent lived in: what is said of it names that process, not an agent's.

The dead run is never adopted as a live lease: an engine whose hold died with the process
(SQLite's lock) may have been written to since, so its renew and complete are answered that
its hold was lost, and snapctl fails the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from node_agent.hold_record import HoldRecord, HoldRecords
from snapctl.errors import EngineError, LeaseConflict, SnapctlError
from snapctl.timestamps import utc_text

log = logging.getLogger("snapctl.agent")

RETRY_S = 2.0  # as an expired lease's release is retried

_RELEASED = {True: "released what it held on the engine", False: "its hold on the engine had already ended",
             None: "nothing of it was held on the engine"}


@dataclass
class LeftHold:
    record: HoldRecord
    error: str | None = None  # why the last release failed
    retry_mono: float = 0.0  # when the watcher tries again
    tried: bool = False  # the first release, the watcher's at start, has been tried
    embedded: bool = False  # left by an earlier snapctl process, its agent embedded in it

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def died(self) -> str:
        """Whose process died holding, as the log lines begin."""
        if self.embedded:
            return f"an earlier snapctl process died while run {self.run_id} held the engine through its embedded agent"
        return f"the agent process before this one died while run {self.run_id} held the engine"

    @property
    def _process(self) -> str:
        return "snapctl" if self.embedded else "agent"

    @property
    def _a_process(self) -> str:
        return "a snapctl process" if self.embedded else "an agent process"

    def details(self) -> dict[str, str]:
        """What ``/v1/status`` adds to ``engine.details``. ``releasing`` while the engine would not
        release: snapctl shows it as a critical finding no --force overrides, as for an expired lease
        the engine would not release. Not while the engine only cannot tell yet whether the dead
        prepare will still take effect: nothing is held then, so nothing is said to be."""
        left_by = f"the hold of run {self.run_id}, left by {self._a_process} that died"
        if not self.tried:
            first = "this snapctl's" if self.embedded else "the agent's"
            return {"releasing": f"{left_by}, is being released ({first} first try since it started)"}
        if self.error is not None:
            return {"releasing": f"{left_by}, is not released yet: {self.error}"}
        return {"left_hold_watch": f"the prepare of run {self.run_id}, cut short when its {self._process} process "
                                   "died, may still take effect on the engine: watched for, and released if it does"}

    def refusal(self, node: str, verb: str) -> LeaseConflict:
        if self.error is None:
            return LeaseConflict(f"cannot {verb}: on node {node}, the prepare of run {self.run_id}, cut short when "
                                 f"its {self._process} process died, may still take effect on the engine; the "
                                 "agent watches for it", holder=self.run_id,
                                 hint="retry once it is over (questdb: late_create_window_s after that prepare)")
        # An embedded agent retries only while its snapctl runs: the next command that builds it tries again.
        retries = ("each snapctl command that builds the node's agent (`snapctl status`, a backup) tries the "
                   "release first" if self.embedded else "the agent retries the release until the engine answers")
        return LeaseConflict(f"cannot {verb}: node {node} is still held for run {self.run_id}, left by "
                             f"{self._a_process} that died; the agent is releasing it ({self.error})",
                             holder=self.run_id, hint=f"{retries}; start a new run once it is released")

    def said(self, outcome: str) -> str:
        """The one WARNING line once it is released. An embedded agent's dead run has no snapctl left
        to renew or complete it: nothing to say of those."""
        said = f"{self.died} (lease until {utc_text(self.record.lease_expires_at)} as prepared): {outcome}"
        return said if self.embedded else f"{said}; that run's renew and complete are answered that its hold was lost"


def release_left(engine: Any, record: HoldRecord) -> str | None:
    """Release on ``engine`` what ``record``'s run left there, fenced by what the record proves is
    that run's, never anyone else's. Returns what was done, in words; None when the engine cannot
    tell yet (a QuestDB create that may still run late), to be asked again later. Raises
    ``EngineError`` while the engine cannot be reached."""
    if (release := getattr(engine, "release_recorded_hold", None)) is not None:
        return release(record.run_id, record.began_at, record.facts)
    if (release_pin := getattr(engine, "release_left_hold", None)) is not None:
        return _RELEASED[release_pin(record.run_id)]
    return "its hold ended with that process (nothing of it lives on the engine)"


class HoldBook:
    """The service's side of the hold record: written before each prepare, given the engine's facts
    once it holds, removed when the hold has ended; and the hold the process before this one left,
    until it is released. Called with the service's lock held."""

    def __init__(self, records: HoldRecords | None, engine: Any, engine_type: str, clock: Callable[[], float],
                 busy: Callable[[str], AbstractContextManager[None]]) -> None:
        self.records, self.engine, self.engine_type = records, engine, engine_type
        self._clock, self._busy = clock, busy
        record = records.load() if records is not None else None
        self.left = LeftHold(record, embedded=records.embedded) if records is not None and record is not None else None

    def write(self, run_id: str, lease_s: float) -> HoldRecord | None:
        """Raises ``EngineError`` if the record cannot be written: the prepare is refused, as a hold
        that no later agent process could find must not be made."""
        if self.records is None:
            return None
        began = datetime.now(timezone.utc)
        record = HoldRecord(run_id, self.engine_type, began, began + timedelta(seconds=lease_s))
        self.records.write(record)
        return record

    def add_facts(self, record: HoldRecord | None, run_id: str) -> None:
        """What the engine knows of its hold once it holds (QuestDB: its checkpoint's start)."""
        if record is None or (facts := getattr(self.engine, "hold_facts", None)) is None:
            return
        try:
            self.records.write(replace(record, facts=facts(run_id)), durable=False)  # type: ignore[union-attr]
        except EngineError as exc:  # the first record still finds the hold, only less precisely
            log.warning("run %s: %s", run_id, exc)

    def remove(self) -> None:
        if self.records is not None and self.left is None:  # the left hold's record stays until it is released
            self.records.remove()

    def details(self) -> dict[str, str]:
        """What ``/v1/status`` adds to ``engine.details`` for the record: a left hold, and records
        moved aside as unreadable (snapctl status: a finding), said until deleted by hand."""
        said = self.left.details() if self.left is not None else {}
        if self.records is not None and (aside := self.records.unreadable()):
            more = f" (and {len(aside) - 1} more)" if len(aside) > 1 else ""
            said["unreadable_hold_record"] = (
                f"a hold record the agent could not read was moved to {aside[0]}{more}: a hold it named, "
                "if any, was not released")
        return said

    def due(self) -> bool:
        return self.left is not None and self._clock() >= self.left.retry_mono

    def refuse_if_left(self, node: str, verb: str) -> None:
        if self.left is not None:
            self.release_left()
        if self.left is not None:
            raise self.left.refusal(node, verb)

    def release_left(self) -> None:
        left = self.left
        assert left is not None and self.records is not None
        if not left.tried:  # an engine that hangs keeps this waiting: the log says what the agent does
            timeout = getattr(getattr(self.engine, "settings", None), "timeout_s", None)
            log.info("releasing what run %s left held on the engine, found in its hold record%s", left.run_id,
                     f" (each engine call waits up to {timeout:g}s)" if timeout else "")
        try:
            with self._busy(f"release of what run {left.run_id} left held"):
                outcome = release_left(self.engine, left.record)
        except Exception as exc:  # noqa: BLE001 - the engine is down: the watcher tries again
            left.tried = True
            if left.error is None:
                log.error("%s, and the engine would not release: %s; retrying every %gs %s",
                          left.died, exc, RETRY_S,
                          "while this snapctl runs (and in the next that builds the node's agent)" if left.embedded
                          else "until it does")
            left.error, left.retry_mono = str(exc), self._clock() + RETRY_S
            return
        left.tried = True
        if outcome is None:  # the engine answers, but cannot tell yet: asked again
            left.error, left.retry_mono = None, self._clock() + RETRY_S
            return
        log.warning("%s", left.said(outcome))
        self.left = None
        self.records.remove()


def release_before_refusing(records: HoldRecords, engine: Any) -> str | None:
    """Release what the hold record names before the agent stops on a state_dir it cannot write: a
    killed agent's hold must not outlive it because its successor will not start. Done here, in
    the process about to exit, as the lease watcher would have once serving (tried once while the
    engine cannot be reached; asked again while it cannot tell yet). The record stays: it cannot be
    removed, and the next start's release of it is fenced to that run's hold. Returns what to add
    to the refusal, None when no record names a hold."""
    if (record := records.load()) is None:
        return None
    left = LeftHold(record, embedded=records.embedded)
    log.info("releasing what run %s left held on the engine, found in its hold record, before stopping",
             left.run_id)
    try:
        while (outcome := release_left(engine, record)) is None:
            time.sleep(RETRY_S)
    except Exception as exc:  # noqa: BLE001 - said, and the refusal stands
        log.error("%s, and the engine would not release: %s; it stays held until an agent with a writable "
                  "state_dir starts", left.died, exc)
        # The message alone: the refusal this is added to has a hint of its own, and the line above
        # keeps the engine's.
        reason = exc.message if isinstance(exc, SnapctlError) else exc
        return f"the hold run {left.run_id} left on the engine is not released ({reason})"
    log.warning("%s; its hold record %s stays, as the state_dir cannot be written", left.said(outcome), records.path)
    return (f"what run {left.run_id} left held on the engine was released first ({outcome}); its hold record "
            f"{records.path} stays")
