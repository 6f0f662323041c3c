"""Everything snapctl shows a person or a script. The only module that imports rich.

Text goes to stdout, progress and errors to stderr; with ``--output json`` stdout carries exactly
one JSON document per command (schemas in docs/json-output.md).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.table import Table

from snapctl.errors import BadInputError, ExitCode, SnapctlError

JSON_SCHEMA_VERSION = 1
_json_mode = False  # so that errors raised before a renderer exists still come out as JSON


def error(exc: SnapctlError) -> None:
    if _json_mode:
        print(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "error": exc.message, "hint": exc.hint,
                          "exit_code": int(exc.exit_code)}))
    console = Console(stderr=True, highlight=False)
    console.print(f"[bold red]snapctl: error:[/] {exc.message}", markup=True, soft_wrap=True)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", soft_wrap=True, markup=False)


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value") and hasattr(value, "name") and isinstance(value.value, int):
        return int(value.value)
    return value


class Renderer:
    """Text for people. ``for_output`` picks the JSON renderer for scripts."""

    def __init__(self) -> None:
        self.out = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    @staticmethod
    def for_output(output: str) -> Renderer:
        global _json_mode
        if output not in ("text", "json"):
            raise BadInputError(f"--output {output!r} is not one of: text, json")
        _json_mode = output == "json"
        return JsonRenderer() if _json_mode else Renderer()

    @contextmanager
    def bundle(self, name: str):
        yield

    def progress(self):
        return LiveProgress(self.err) if self.err.is_terminal else LineProgress(self.err)

    # ---- results ---------------------------------------------------------------------------

    def backup_result(self, result) -> int:
        from snapctl.orchestrator import BackupPlan

        if isinstance(result, BackupPlan):
            return self._plan(result)
        m = result
        table = Table(title=f"backup {m.run_id}: {m.status}", title_justify="left")
        for column in ("node", "freeze window", "snapshots", "bytes", "state"):
            table.add_column(column, justify="right" if column in ("freeze window", "bytes") else "left")
        for name, record in m.nodes.items():
            table.add_row(name, _seconds(record.freeze_window_s),
                          "\n".join(r.snapshot_id for r in record.snapshots) or "-",
                          _bytes(sum(r.bytes or 0 for r in record.snapshots)),
                          ", ".join(sorted({r.state for r in record.snapshots})) or "-")
        self.out.print(table)
        self.out.print(f"prepare skew {_seconds(m.prepare_skew_s)}, longest freeze {_seconds(m.max_freeze_window_s)}"
                       + (f", degraded: {'; '.join(m.degradations)}" if m.degradations else ""))
        return ExitCode.OK

    def _plan(self, plan) -> int:
        self.out.print(f"dry run: would back up cluster {plan.cluster} with provider {plan.provider}")
        for node, volumes in plan.nodes.items():
            self.out.print(f"  {node}: {', '.join(volumes) or 'no volumes'}")
        self._findings(plan.verdict)
        refused = bool(plan.verdict.at_least("critical"))
        self.out.print("preflight: " + ("would refuse (see above)" if refused else "ok"))
        return ExitCode.PREFLIGHT_REFUSED if refused else ExitCode.OK

    def run_list(self, entries, problems) -> int:
        table = Table(title="backups (newest first)", title_justify="left")
        for column in ("run", "status", "started", "nodes", "snapshots", "max freeze", "error"):
            table.add_column(column)
        for e in entries:
            table.add_row(e.run_id, _status_text(e.status), f"{e.started_at:%Y-%m-%d %H:%M:%S}Z", str(e.nodes),
                          str(e.snapshots), _seconds(e.max_freeze_window_s), (e.error or "")[:60])
        self.out.print(table if entries else "no backups yet")
        for problem in problems:
            self.err.print(f"[yellow]warning:[/] {problem}")
        return ExitCode.OK

    def manifest(self, m) -> int:
        self.out.print(f"run {m.run_id} of cluster {m.cluster}: {m.status}, provider {m.provider}, by {m.owner}")
        self.out.print(f"started {m.started_at:%Y-%m-%d %H:%M:%S}Z, finished "
                       f"{f'{m.finished_at:%H:%M:%S}Z' if m.finished_at else '-'}, skew {_seconds(m.prepare_skew_s)}")
        if m.error:
            self.out.print(f"error: {m.error}")
        for name, r in m.nodes.items():
            self.out.print(f"  {name}: freeze {_seconds(r.freeze_window_s)}, "
                           f"{len(r.snapshots)} snapshot(s) {', '.join(s.snapshot_id for s in r.snapshots)}"
                           + (f", error: {r.error}" if r.error else ""))
            if r.state and r.state.facts.tables:
                facts = ", ".join(f"{t}={f.rows}" for t, f in r.state.facts.tables.items())
                self.out.print(f"    facts at prepare: {facts}")
        return ExitCode.OK

    def status(self, s) -> int:
        table = Table(title=f"cluster {s.cluster}", title_justify="left")
        for column in ("node", "agent", "engine", "version", "held", "free"):
            table.add_column(column)
        for p in s.probes:
            if p.status is None:
                table.add_row(p.node, "[red]unauthorized[/]" if p.unauthorized else "[red]unreachable[/]",
                              "-", "-", "-", "-")
                continue
            e, lease = p.status.engine, p.status.lease
            table.add_row(p.node, "ok", f"{e.engine} {'up' if e.reachable else '[red]down[/]'}", e.version or "-",
                          f"{lease.run_id} until {lease.expires_at:%H:%M:%S}Z" if lease else
                          ("[yellow]by " + (e.held_by or "other") + "[/]" if e.held else "no"),
                          _bytes(p.status.free_bytes))
        self.out.print(table)
        self._raft(s)
        if s.latest_success:
            age = (s.checked_at - (s.latest_success.finished_at or s.latest_success.started_at)).total_seconds()
            self.out.print(f"newest good backup: {s.latest_success.run_id}, {_age(age)} ago (RPO {_age(s.rpo_s)})")
        if s.latest_failure:
            self.out.print(f"newest failure: {s.latest_failure.run_id}: {s.latest_failure.error or 'failed'}")
        self._findings(s.verdict)
        colour = {"healthy": "green", "degraded": "yellow", "critical": "red"}[s.verdict.level]
        self.out.print(f"verdict: [bold {colour}]{s.verdict.level}[/]")
        return s.exit_code

    def _raft(self, s) -> None:
        from snapctl.health import raft_groups

        groups = raft_groups(s.probes)
        if not groups:
            return
        table = Table(title="raft groups", title_justify="left")
        for column in ("group", "node", "role", "term", "commit", "applied", "snapshot", "lag"):
            table.add_column(column)
        for name, members in sorted(groups.items()):
            for node, g in members:
                lag = max((p.lag_entries or 0 for p in g.replication), default=None)
                table.add_row(name, node, g.role, _n(g.term), _n(g.commit_index), _n(g.applied_index),
                              f"{_n(g.last_snapshot_index)} {g.snapshot_status or ''}".strip(), _n(lag))
        self.out.print(table)

    def _findings(self, verdict) -> None:
        colours = {"info": "dim", "degraded": "yellow", "critical": "red"}
        for f in verdict.findings:
            self.out.print(f"  [{colours[f.severity]}]{f.severity}[/] {f.subject}: {f.message}")

    def restore_result(self, result) -> int:
        table = Table(title=f"restore of {result.run_id} into {result.target}", title_justify="left")
        for column in ("node", "volumes", "tables (rows)", "matches prepare"):
            table.add_column(column)
        for n in result.nodes:
            tables = ", ".join(f"{t}={f.rows}" for t, f in (n.facts.tables.items() if n.facts else []))
            verdict = "-" if n.facts is None else ("[green]yes[/]" if not n.mismatches else
                                                   "[red]no: " + "; ".join(n.mismatches) + "[/]")
            table.add_row(n.node, ", ".join(n.volumes.values()), tables or "-", verdict)
        self.out.print(table)
        return ExitCode.OK if result.ok else ExitCode.VERIFY_MISMATCH

    def demo_cluster(self, cluster) -> int:
        for n in cluster.nodes:
            state = f"agent pid {n.pid} at {n.url}" if cluster.action == "up" else (
                f"stopped agent pid {n.pid}" if n.pid else "was not running")
            self.out.print(f"demo {cluster.action}: {n.name}: {state}, database {n.database}")
        return ExitCode.OK


class JsonRenderer(Renderer):
    """Exactly one JSON document on stdout per command; `bundle` merges several into one."""

    def __init__(self) -> None:
        super().__init__()
        self._bundle: dict[str, Any] | None = None

    @contextmanager
    def bundle(self, name: str):
        self._bundle = {}
        try:
            yield
        finally:
            doc, self._bundle = self._bundle, None
            self._emit(name, doc)

    def progress(self):
        from snapctl.events import NullReporter

        return NullReporter()

    def _emit(self, kind: str, payload: Any) -> None:
        if self._bundle is not None:
            self._bundle[kind] = jsonable(payload)
            return
        print(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "kind": kind, "data": jsonable(payload)}, indent=2))

    def backup_result(self, result) -> int:
        from snapctl.orchestrator import BackupPlan

        self._emit("plan" if isinstance(result, BackupPlan) else "backup", result)
        if isinstance(result, BackupPlan) and result.verdict.at_least("critical"):
            return ExitCode.PREFLIGHT_REFUSED
        return ExitCode.OK

    def run_list(self, entries, problems) -> int:
        self._emit("list", {"runs": entries, "problems": problems})
        return ExitCode.OK

    def manifest(self, m) -> int:
        self._emit("manifest", m)
        return ExitCode.OK

    def status(self, s) -> int:
        self._emit("status", {**jsonable(s), "verdict": {"level": s.verdict.level,
                                                         "findings": jsonable(s.verdict.findings)}})
        return s.exit_code

    def restore_result(self, result) -> int:
        self._emit("restore", {**jsonable(result), "ok": result.ok})
        return ExitCode.OK if result.ok else ExitCode.VERIFY_MISMATCH

    def demo_cluster(self, cluster) -> int:
        self._emit(f"demo_{cluster.action}", cluster)
        return ExitCode.OK


class LineProgress:
    """Progress for logs and cron: one timestamped line per event on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.console.print(f"{datetime.now(UTC):%H:%M:%S} {text}", markup=False, highlight=False)

    def step(self, name: str, message: str) -> None:
        self._line(f"{name}: {message}")

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        self._line(f"  {node}: {phase}" + (f" ({detail})" if detail else ""))

    def finding(self, finding) -> None:
        self._line(f"  {finding.severity}: {finding}")

    def snapshot_progress(self, ref) -> None:
        pass

    def finished(self, manifest) -> None:
        self._line(f"run {manifest.run_id} {manifest.status}")

    def close(self) -> None:
        pass


class LiveProgress(LineProgress):
    """On a terminal: a live table of nodes and their phases (counts only for big clusters)."""

    MAX_ROWS = 20

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.phases: dict[str, tuple[str, str]] = {}
        self.current = "starting"
        self.started = time.monotonic()
        self.live = Live(self._table(), console=console, transient=True, refresh_per_second=8)
        self.live.start()

    def _table(self) -> Table:
        table = Table(title=f"{self.current}  ({time.monotonic() - self.started:.1f}s)", title_justify="left")
        if len(self.phases) > self.MAX_ROWS:
            table.add_column("phase")
            table.add_column("nodes", justify="right")
            for phase, count in Counter(p for p, _ in self.phases.values()).most_common():
                table.add_row(phase, str(count))
            return table
        table.add_column("node")
        table.add_column("phase")
        table.add_column("detail")
        for node, (phase, detail) in self.phases.items():
            table.add_row(node, phase, detail)
        return table

    def step(self, name: str, message: str) -> None:
        self.current = message
        self.live.update(self._table())

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        self.phases[node] = (phase, detail or "")
        self.live.update(self._table())

    def finished(self, manifest) -> None:
        self.close()

    def close(self) -> None:
        self.live.stop()


def _status_text(status: str) -> str:
    return {"succeeded": "[green]succeeded[/]", "failed": "[red]failed[/]"}.get(status, status)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _n(value) -> str:
    return "-" if value is None else str(value)
