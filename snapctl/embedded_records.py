"""Hold records for embedded agents whose holds outlive snapctl's process.

An embedded agent lives in snapctl's process. A hold that dies with that process (SQLite's lock)
needs no record; one that lives on the engine (QuestDB's checkpoint, Tarantool's pin) outlives
a snapctl killed outright (SIGKILL, the OOM killer), and no lease watcher is left to release it.
So such an embedded agent keeps the same hold record a ``snapctl-agent`` keeps in its state_dir,
here in a directory of snapctl's own per cluster, and the next snapctl process of that cluster
that builds the node's agent (a backup, a status) releases what it names, as a restarted agent
does (docs/agent.md, "An engine left held").
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.hold_record import HoldRecord, HoldRecords, HoldRecordTaken, engine_record_paths, ready_state_dir
from snapctl.errors import SnapctlError
from snapctl.state_home import snapctl_state_dir

log = logging.getLogger("snapctl.agent")

EMBEDDED_DIR = "embedded"
_POLL_S = 0.05
_FIX = ("make $XDG_STATE_HOME (or systemd's $STATE_DIRECTORY, or ~/.local/state) a directory of snapctl's user, or "
        "run snapctl as that user")


def embedded_state_dir(env: Mapping[str, str], cluster: str) -> Path:
    """Where the embedded agents of ``cluster`` keep their hold records: in snapctl's state directory."""
    return snapctl_state_dir(env) / EMBEDDED_DIR / cluster


def holds_outlive_the_process(engine: Any) -> bool:
    """Whether the engine's hold lives on after its process (what ``left_hold.release_left`` can
    release): only then is a record worth its fsync before each prepare."""
    return any(hasattr(engine, name) for name in ("release_recorded_hold", "release_left_hold"))


def embedded_hold_records(cluster: str, node: str, engine_type: str, engine: Any,
                          env: Mapping[str, str] | None = None, *, wait_s: float = 0.0,
                          keep: bool = True) -> HoldRecords | None:
    """The node's hold records, taken for this process; None where its holds die with the process,
    where another live snapctl process of this cluster has the node's agent built past ``wait_s``
    (its holds are its own: this process only reads the engine's status), or where no record can
    be kept here (a warning says so: the command goes on, as before embedded records existed).
    ``wait_s``: how long a command that holds (a backup) waits for a status, which has the record
    only while it looks, to let it go; a command that only looks waits for nobody. ``keep``: False
    (a dry run) keeps none and writes nothing, and only warns of a hold a killed snapctl left."""
    if not holds_outlive_the_process(engine):
        return None
    if not keep:
        warn_of_a_left_hold(cluster, node, engine_type, engine, env)
        return None
    try:
        directory = ready_state_dir(embedded_state_dir(os.environ if env is None else env, cluster),
                                    "the embedded agent's", fix=_FIX)
        records = _records(directory, node, engine_type, engine)
        if not _locked(records, wait_s):
            (log.warning if wait_s else log.info)(
                "node %s: another snapctl process of cluster %s has its embedded agent's hold record %s; this "
                "one keeps none", node, cluster, records.path)
            return None
    except (SnapctlError, OSError, RuntimeError) as exc:  # RuntimeError: no home directory to expand ~ in
        # A status that failed here would show nothing of a node that is fine: it goes on without
        # the record, as snapctl did before embedded records, and says what that costs.
        said = exc.message if isinstance(exc, SnapctlError) else str(exc)
        log.warning("node %s: its embedded agent keeps no hold record (%s): a hold of a snapctl killed outright "
                    "stays on the engine until released by hand; %s", node, said, _FIX)
        return None
    records.warn_of_others()
    return records


def warn_of_a_left_hold(cluster: str, node: str, engine_type: str, engine: Any,
                        env: Mapping[str, str] | None = None) -> None:
    """For a command that keeps no record (a dry run): warn of a hold a snapctl killed outright
    left, which the next backup or status releases, reading its record without taking, writing or
    moving it. A record a live snapctl process has (its lock taken) is that process's hold."""
    try:
        records = _records(embedded_state_dir(os.environ if env is None else env, cluster), node, engine_type, engine)
        record = HoldRecord.from_json(records.path.read_text())
        if _taken_by_a_live_process(records):
            return
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # none, or one the next backup says of
        return
    log.warning("node %s: run %s's hold on the engine, left by a snapctl killed outright, is recorded in %s: the "
                "next backup or status releases it; this command leaves it", node, record.run_id, records.path)


def _records(directory: Path, node: str, engine_type: str, engine: Any) -> HoldRecords:
    return HoldRecords(directory, node, engine_type, engine_record_paths(engine), embedded=True)


def _taken_by_a_live_process(records: HoldRecords) -> bool:
    try:
        fd = os.open(records.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared lock, let go at once: nothing is written
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def _locked(records: HoldRecords, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            records.lock("the inventory")
            return True
        except HoldRecordTaken:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
