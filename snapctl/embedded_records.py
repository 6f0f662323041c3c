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

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.hold_record import HoldRecords, HoldRecordTaken, ready_state_dir
from snapctl.errors import SnapctlError

log = logging.getLogger("snapctl.agent")

EMBEDDED_DIR = Path("snapctl") / "embedded"
_POLL_S = 0.05
_FIX = "make $XDG_STATE_HOME (or ~/.local/state) a directory of snapctl's user, or run snapctl as that user"


def embedded_state_dir(env: Mapping[str, str], cluster: str) -> Path:
    """Where the embedded agents of ``cluster`` keep their hold records: under the XDG state home."""
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path("~/.local/state").expanduser()
    return base / EMBEDDED_DIR / cluster


def holds_outlive_the_process(engine: Any) -> bool:
    """Whether the engine's hold lives on after its process (what ``left_hold.release_left`` can
    release): only then is a record worth its fsync before each prepare."""
    return any(hasattr(engine, name) for name in ("release_recorded_hold", "release_left_hold"))


def embedded_hold_records(cluster: str, node: str, engine_type: str, engine: Any,
                          env: Mapping[str, str] | None = None, *, wait_s: float = 0.0) -> HoldRecords | None:
    """The node's hold records, taken for this process; None where its holds die with the process,
    where another live snapctl process of this cluster has the node's agent built past ``wait_s``
    (its holds are its own: this process only reads the engine's status), or where no record can
    be kept here (a warning says so: the command goes on, as before embedded records existed).
    ``wait_s``: how long a command that holds (a backup) waits for a status, which has the record
    only while it looks, to let it go; a command that only looks waits for nobody."""
    if not holds_outlive_the_process(engine):
        return None
    try:
        directory = ready_state_dir(embedded_state_dir(os.environ if env is None else env, cluster),
                                    "the embedded agent's", fix=_FIX)
        db_path = getattr(engine, "db_path", None)  # as node_agent.main names an agent's record
        records = HoldRecords(directory, node, engine_type, [db_path] if db_path else engine.data_paths(),
                              embedded=True)
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
