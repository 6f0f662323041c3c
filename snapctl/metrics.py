"""Prometheus text: the agent's ``GET /metrics``, and node_exporter textfiles written by
`snapctl backup --textfile` and `snapctl status --textfile`.

No secrets and no run ids in any metric: a scraper reads /metrics with its own token, which must
not be worth more than the page (it cannot freeze a database), and run ids would make a new series
per run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import stat
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from snapctl.errors import BadInputError, ExitCode, SnapctlError, os_reason
from snapctl.input_files import file_kind

if TYPE_CHECKING:
    from node_agent.service import AgentService
    from snapctl.config import Inventory
    from snapctl.status import ClusterStatus

log = logging.getLogger("snapctl.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
T = TypeVar("T")


@dataclass
class Exposition:
    """Metric families in the Prometheus text format, each with its HELP and TYPE once."""

    _families: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)

    def add(self, name: str, kind: str, help_text: str, value: float | bool | None, **labels: Any) -> None:
        if value is None:
            return
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels)} {_value(value)}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, Any]) -> str:
    pairs = [f'{key}="{_escape(value)}"' for key, value in labels.items() if value is not None]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return repr(value) if isinstance(value, float) else str(value)


# ---- the agent's /metrics ---------------------------------------------------------------------


def _engine_up(engine: Any) -> bool:
    """Up, as the agent answered: not when a status query of the engine was already waiting (another
    caller's): the rest of the answer is then the engine's last one, but up it is not, now."""
    return bool(engine.reachable and not engine.details.get("busy_status_query"))


def agent_metrics(service: AgentService) -> str:
    """The agent's counters and its engine's raft state. Blocking (asks the engine): call from a thread."""
    out = Exposition()
    stats = service.stats
    out.add("snapctl_agent_up", "gauge", "The agent answers (always 1 when scraped).", 1)
    out.add("snapctl_agent_info", "gauge", "The agent's node and version.", 1, node=service.node,
            version=_agent_version())
    out.add("snapctl_agent_lease_held", "gauge", "1 while a backup run holds this node's prepare lease.", stats.held)
    out.add("snapctl_agent_lease_expired_still_held", "gauge",
            "1 while the engine stays held after its lease expired (it would not release; the agent retries).",
            stats.releasing)
    out.add("snapctl_agent_lease_expirations_total", "counter",
            "Leases the agent released by itself because the run stopped renewing them.", stats.lease_expirations)
    out.add("snapctl_agent_prepares_total", "counter", "Engine prepares done.", stats.prepares)
    out.add("snapctl_agent_completes_total", "counter", "Engine completes done.", stats.completes)
    out.add("snapctl_agent_last_prepare_duration_seconds", "gauge", "How long the last engine prepare took.",
            stats.last_prepare_s)
    out.add("snapctl_agent_last_complete_duration_seconds", "gauge", "How long the last engine complete took.",
            stats.last_complete_s)
    try:
        status = service.status()
    except Exception as exc:  # noqa: BLE001 - a failing engine is a metric, never a failed scrape
        log.warning("engine status for /metrics failed: %s", exc)
        out.add("snapctl_engine_up", "gauge", "The engine answers the agent.", 0, engine=service.engine.name)
        return out.text()
    engine = status.engine
    out.add("snapctl_engine_up", "gauge", "The engine answers the agent.", _engine_up(engine), engine=engine.engine)
    out.add("snapctl_engine_held_elsewhere", "gauge",
            "The engine is held by something other than this agent (another backup tool).",
            engine.held and status.lease is None)
    out.add("snapctl_agent_free_bytes", "gauge", "Free bytes on the first data path.", status.free_bytes)
    for g in engine.raft:
        ids = {"group": g.group, "member": g.member}
        out.add("snapctl_raft_leader", "gauge", "1 when this member leads its raft group.",
                g.role in ("leader", "transferring"), **ids)
        out.add("snapctl_raft_role", "gauge", "This member's raft role (the role label), always 1.", 1,
                role=g.role, **ids)
        out.add("snapctl_raft_term", "gauge", "Raft term as this member sees it.", g.term, **ids)
        out.add("snapctl_raft_commit_index", "gauge", "Raft commit index.", g.commit_index, **ids)
        out.add("snapctl_raft_applied_index", "gauge", "Raft applied index.", g.applied_index, **ids)
        out.add("snapctl_raft_last_log_index", "gauge", "Index of the last raft log entry.", g.last_log_index, **ids)
        out.add("snapctl_raft_last_snapshot_index", "gauge", "Index of the last raft snapshot.",
                g.last_snapshot_index, **ids)
        out.add("snapctl_raft_snapshot_busy", "gauge", "1 while a snapshot is SAVING, LOADING or DOWNLOADING.",
                g.snapshot_status in ("SAVING", "LOADING", "DOWNLOADING"), **ids)
        for p in g.replication:
            out.add("snapctl_raft_peer_lag_entries", "gauge", "Entries a peer is behind, as this member sees it.",
                    p.lag_entries, peer=p.peer, **ids)
            out.add("snapctl_raft_peer_consecutive_errors", "gauge", "Consecutive replication errors to a peer.",
                    p.consecutive_errors, peer=p.peer, **ids)
    return out.text()


def _agent_version() -> str:
    from snapctl import __version__

    return __version__


# ---- node_exporter textfiles -----------------------------------------------------------------


def check_textfile_path(path: str | os.PathLike[str]) -> Path:
    """node_exporter reads only ``*.prom`` files in an existing directory: refuse anything else early."""
    target = Path(path)
    if target.suffix != ".prom":
        raise BadInputError(f"--textfile {target}: node_exporter only reads files ending in .prom",
                            hint="e.g. --textfile /var/lib/node_exporter/textfile_collector/snapctl.prom")
    if not target.parent.is_dir():
        problem = "is not a directory" if target.parent.exists() else "does not exist"
        raise BadInputError(f"--textfile {target}: {target.parent} {problem}",
                            hint="point it at node_exporter's --collector.textfile.directory")
    if target.is_dir():
        raise BadInputError(f"--textfile {target}: it is a directory",
                            hint=f"name a file in it, e.g. --textfile {target / 'snapctl.prom'}")
    try:
        mode = os.stat(target).st_mode
    except OSError:
        mode = None  # none yet: the first write makes it
    if mode is not None and not stat.S_ISREG(mode):
        # Each write renames a new file over it: as root, a device or a FIFO there would be replaced.
        raise BadInputError(f"--textfile {target}: it is {file_kind(mode)}, not a regular file",
                            hint="name a .prom file that is a regular file or not there yet: each write replaces it")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise BadInputError(f"--textfile {target}: {target.parent} is not writable by this user",
                            hint="run snapctl as a user that may write node_exporter's textfile directory")
    return target


def write_textfile(path: str | os.PathLike[str], text: str) -> None:
    """Atomically (node_exporter may read at any moment): a temp file in the same directory, renamed."""
    target = check_textfile_path(path)
    try:
        write_atomically(target, text)
    except OSError as exc:
        raise SnapctlError(f"cannot write the metrics textfile {target}: {os_reason(exc)}") from exc


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # no .prom suffix: never read half-written
    try:
        # 0644 whatever the umask: node_exporter (another user) must read it, and nobody else write it.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.fchmod(fd, 0o644)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def status_textfile(status: ClusterStatus) -> str:
    out = Exposition()
    c = {"cluster": status.cluster}
    level = {"healthy": 0, "degraded": 1, "critical": 2}[status.verdict.level]
    out.add("snapctl_status_verdict", "gauge", "Cluster verdict: 0 healthy, 1 degraded, 2 critical.", level, **c)
    out.add("snapctl_status_timestamp_seconds", "gauge", "When this status was taken.",
            status.checked_at.timestamp(), **c)
    out.add("snapctl_status_safe_to_back_up", "gauge", "1 when a backup preflight would go ahead now.",
            not status.preflight, **c)
    for severity in ("info", "degraded", "critical"):
        out.add("snapctl_status_findings", "gauge", "Findings by severity.",
                sum(1 for f in status.verdict.findings if f.severity == severity), severity=severity, **c)
    for p in status.probes:
        out.add("snapctl_status_node_reachable", "gauge",
                "The node's agent answered in time with its status (0: no answer, or an error answer).",
                p.status is not None, node=p.node, **c)
        # Always written, 0 for no answer: an alert can tell a network or host problem (0) from an
        # agent that answers but refuses or fails (401, 429, 500, ...).
        out.add("snapctl_status_node_http_status", "gauge",
                "HTTP status the node's agent answered status with (200 ok; 0: no answer at all).",
                p.http_status or 0, node=p.node, **c)
        if p.status is not None:
            out.add("snapctl_status_engine_up", "gauge", "The node's engine answers its agent.",
                    _engine_up(p.status.engine), node=p.node, **c)
            out.add("snapctl_status_lease_held", "gauge", "A backup run holds the node.",
                    p.status.lease is not None, node=p.node, **c)
            out.add("snapctl_status_free_bytes", "gauge", "Free bytes on the node's data path.",
                    p.status.free_bytes, node=p.node, **c)
    for g in status.verdict.groups:
        out.add("snapctl_status_raft_has_leader", "gauge", "The raft group has a leader.", g.leader is not None,
                group=g.group, **c)
        out.add("snapctl_status_raft_term", "gauge", "The raft group's term (its leader's).", g.term, group=g.group, **c)
        for m in g.members:
            out.add("snapctl_status_raft_lag_entries", "gauge", "Entries a member is behind its leader.",
                    m.lag_entries, group=g.group, member=m.member, **c)
    age = status.latest_success_age_s
    if age is None and status.catalog_read and not status.catalog_problems:
        age = math.inf  # none yet: over any RPO (an unreadable catalog leaves it unknown, absent)
    out.add("snapctl_status_last_success_age_seconds", "gauge",
            "Age of the newest successful backup (+Inf: none yet).", age, **c)
    out.add("snapctl_status_rpo_seconds", "gauge", "The inventory's RPO.", status.rpo_s, **c)
    drills = status.drills
    if drills is not None and drills.recorded:  # none recorded: a cluster that does not drill, nothing to alert on
        passed = drills.last_passed
        # 0 when none passed among those read: an absent series would keep an age alert from firing.
        out.add("snapctl_drill_last_success_timestamp_seconds", "gauge",
                "When the newest restore drill that passed finished (0: none passed among the newest read).",
                passed.finished_at.timestamp() if passed and passed.finished_at else 0, **c)
        if drills.newest is not None:
            out.add("snapctl_drill_last_ok", "gauge", "1 when the newest finished restore drill passed, 0 when it failed.",
                    drills.newest.ok, **c)
    out.add("snapctl_drill_max_age_seconds", "gauge", "The inventory's drill.max_age_s (absent: not checked).",
            status.drill_max_age_s, **c)
    return out.text()


@dataclass(frozen=True)
class Attempt:
    """How this host's `snapctl backup` ended: when, and its exit code (4: another run held the lock)."""

    ended_at: float
    exit_code: int


def backup_textfile(inventory: Inventory, attempt: Attempt | None = None) -> str:
    """This host's ``attempt``, the newest success in the catalog, and the newest run in the catalog
    (succeeded or failed), unless the attempt stood by because another run held the lock. The
    attempt needs no catalog: when the catalog cannot be read (an S3 outage, the likeliest cause
    of a failed run), it is written without the catalog's series, and ``snapctl_backup_catalog_read``
    says 0, rather than no textfile, which left node_exporter the previous attempt's."""
    from snapctl.catalog import open_catalog

    out = Exposition()
    c = {"cluster": inventory.cluster}
    if attempt is not None:
        out.add("snapctl_backup_last_attempt_timestamp_seconds", "gauge",
                "When snapctl backup last ended on this host, whatever the outcome (a standby's exit 4 too).",
                attempt.ended_at, **c)
        out.add("snapctl_backup_last_attempt_exit_code", "gauge",
                "Its exit code: 0 succeeded, 1 failed, 2 bad input, 3 refused by the preflight, 4 stood by (another run held "
                "the cluster lock), 130 interrupted.", attempt.exit_code, **c)
    read = "snapctl_backup_catalog_read"
    read_help = "1 when this textfile's catalog series were read; 0: the catalog could not be read, they are left out."
    try:
        catalog = open_catalog(inventory)
        entries, _ = catalog.list()
    except SnapctlError as exc:
        log.warning("cannot read the catalog for the metrics textfile, so it says only how this attempt ended: %s",
                    exc.message)
        out.add(read, "gauge", read_help, 0, **c)
        return out.text()
    out.add(read, "gauge", read_help, 1, **c)
    newest_success = next((e for e in entries if e.status == "succeeded"), None)
    # 0 when there is none: an absent series would keep `time() - ... > RPO` from ever firing for a
    # cluster whose backups have all failed since the first.
    out.add("snapctl_backup_last_success_timestamp_seconds", "gauge",
            "When the newest successful backup finished (0: none yet).",
            (newest_success.finished_at or newest_success.started_at).timestamp() if newest_success else 0, **c)
    if attempt is not None and attempt.exit_code == ExitCode.LOCK_HELD:
        # The newest run this host can see is being superseded by the lock holder's, which has not
        # finished: written here, a failure of the night before would read as this host's for a day.
        return out.text()
    newest = next((e for e in entries if e.status != "running"), None)
    if newest is None:
        return out.text()
    try:
        manifest = catalog.load(newest.run_id)
    except SnapctlError as exc:  # the list read, the manifest not: the run series are unknown, not the rest
        log.warning("cannot read run %s for the metrics textfile: %s", newest.run_id, exc.message)
        return out.text()
    out.add("snapctl_backup_last_run_timestamp_seconds", "gauge", "When the newest backup run finished.",
            (manifest.finished_at or manifest.started_at).timestamp(), **c)
    out.add("snapctl_backup_last_run_success", "gauge", "1 when the newest backup run succeeded, 0 when it failed.",
            manifest.status == "succeeded", **c)
    if manifest.finished_at:
        out.add("snapctl_backup_last_run_duration_seconds", "gauge", "How long the newest run took.",
                (manifest.finished_at - manifest.started_at).total_seconds(), **c)
    out.add("snapctl_backup_prepare_skew_seconds", "gauge", "Spread of prepare acknowledgements in the newest run.",
            manifest.prepare_skew_s, **c)
    out.add("snapctl_backup_hold_skew_seconds", "gauge",
            "Spread of the instants the engines began holding in the newest run (their own clocks).",
            manifest.hold_skew_s, **c)
    for name, record in manifest.nodes.items():
        out.add("snapctl_backup_freeze_seconds", "gauge", "How long each node was held in the newest run.",
                record.freeze_window_s, node=name, **c)
        if record.snapshots:
            out.add("snapctl_backup_snapshot_bytes", "gauge", "Bytes of each node's snapshots in the newest run.",
                    sum(s.bytes or 0 for s in record.snapshots), node=name, **c)
            out.add("snapctl_backup_snapshots", "gauge", "Snapshots of each node in the newest run.",
                    len(record.snapshots), node=name, **c)
    return out.text()


async def recording_backup(inventory: Inventory, path: str | os.PathLike[str], run: Awaitable[T]) -> T:
    """Await the backup ``run``, then write its textfile, however it ended (``Attempt``).
    A textfile that cannot be written is a warning, never the run's outcome: a backup that
    succeeded exits 0 with its manifest, one that failed with its own error. Check ``path`` first
    (``check_textfile_path``), so that a bad one refuses the run before it starts."""
    exit_code: int = ExitCode.RUN_FAILED
    try:
        result = await run
        exit_code = ExitCode.OK
        return result
    except SnapctlError as exc:
        exit_code = exc.exit_code
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        exit_code = ExitCode.INTERRUPTED
        raise
    finally:
        attempt = Attempt(time.time(), int(exit_code))
        try:
            await asyncio.to_thread(lambda: write_textfile(path, backup_textfile(inventory, attempt)))
        except SnapctlError as exc:
            log.warning("%s (the run's outcome stands; monitoring sees the previous textfile until the next run)",
                        exc)
