"""Everything snapctl shows a person or a script. The only package that imports rich, and only
when it prints text: `-o json` never loads it (~40 ms).

Text goes to stdout, progress and errors to stderr; with ``--output json`` stdout carries exactly
one JSON document per command (README "Commands"; `status`'s schema is docs/status.schema.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from snapctl.errors import BadInputError, ExitCode, SnapctlError
from snapctl.logged_warnings import logged_warnings
from snapctl.printable import printable
from snapctl.timestamps import utc_text
from snapctl.units import human_bytes

JSON_SCHEMA_VERSION = 1
PIPED_WIDTH = 200  # text output's width when stdout is not a terminal (COLUMNS overrides it)
_json_mode = False  # so that errors raised before a renderer exists still come out as JSON


def json_mode() -> bool:
    """A command chose ``-o json``: its errors, too, are a document on stdout."""
    return _json_mode


def error(exc: SnapctlError) -> None:
    if _json_mode:
        error_document(exc)
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False)
    # escaped: a message quotes what it got (an address "[fd00::1]", a path), which is not markup,
    # and may hold a control character (a newline in -i's path), which is not a second line
    console.print(f"[bold red]snapctl: error:[/] {escape(printable(exc.message))}", markup=True, soft_wrap=True)
    if exc.hint:
        console.print(f"  hint: {printable(exc.hint)}", soft_wrap=True, markup=False)


def error_document(exc: SnapctlError) -> None:
    """The one JSON document of a command that failed: on stdout, as its result would have been."""
    hint = printable(exc.hint) if exc.hint else exc.hint  # one line each, as text says them
    print(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "error": printable(exc.message), "hint": hint,
                      "exit_code": int(exc.exit_code), **logged_warnings()}))


_PLAIN = frozenset({str, int, float, bool, type(None)})  # exact types: an IntEnum still becomes a plain int below


def jsonable(value: Any) -> Any:
    if type(value) in _PLAIN:  # most values of a large document: skip the checks below
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return utc_text(value)
    if hasattr(value, "value") and hasattr(value, "name") and isinstance(value.value, int):
        return int(value.value)
    return value


class _PipedLines:
    """stdout for a pipe or a log: every line without the spaces rich pads a table's cells and title
    with, up to the table's width (`snapctl list | awk '{print length}'` gave lines of the whole
    width, mostly blank). Only trailing spaces go, so the columns stay aligned. Spaces at the end of
    a write are held until what follows them shows whether they end a line."""

    def __init__(self) -> None:
        self._held = ""

    def write(self, text: str) -> int:
        lines = (self._held + text).split("\n")
        last = lines.pop()
        kept = last.rstrip(" ")
        self._held = last[len(kept):]
        sys.stdout.write("".join(line.rstrip(" ") + "\n" for line in lines) + kept)
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: rich asks the real stdout's
        return getattr(sys.stdout, name)


class Renderer:
    """Text for people. ``for_output`` picks the JSON renderer for scripts."""

    @cached_property
    def out(self):
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=False)
        if not console.is_terminal:
            console.file = _PipedLines()
            if "COLUMNS" not in os.environ:
                # A log or a pipe has no width to fit: rich's 80 columns would cut a run's table ("complet…").
                console.width = PIPED_WIDTH
        return console

    @cached_property
    def err(self):
        from rich.console import Console

        return Console(stderr=True, highlight=False)

    @staticmethod
    def for_output(output: str) -> Renderer:
        global _json_mode
        if output not in ("text", "json"):
            raise BadInputError(f"--output {output!r} is not one of: text, json",
                                hint="-o json for scripts, or leave it out")
        _json_mode = output == "json"
        return JsonRenderer() if _json_mode else Renderer()

    @contextmanager
    def bundle(self, name: str):
        yield

    def line(self, text: str) -> None:
        """One line as written: it quotes agents, engines, clouds and paths (never markup), and is
        not cut at the console's width (a log keeps it whole)."""
        self.out.print(printable(text), markup=False, soft_wrap=True)

    def progress(self):
        from snapctl.render.progress import LineProgress, LiveProgress

        return LiveProgress(self.err) if self.err.is_terminal else LineProgress(self.err.file)

    # ---- results ---------------------------------------------------------------------------

    def backup_result(self, result) -> int:
        from snapctl.preflight import BackupPlan

        if isinstance(result, BackupPlan):
            return self._plan(result)
        from rich.markup import escape
        from rich.table import Table

        m = result
        table = Table(title=f"backup {m.run_id}: {m.status}", title_justify="left")
        for column in ("node", "freeze window", "snapshots", "bytes", "state"):
            table.add_column(column, justify="right" if column in ("freeze window", "bytes") else "left",
                             no_wrap=column == "snapshots")
        for name, record in m.nodes.items():
            table.add_row(name, _seconds(record.freeze_window_s),
                          escape("\n".join(r.snapshot_id for r in record.snapshots)) or "-",
                          human_bytes(sum(r.bytes or 0 for r in record.snapshots)),
                          escape(", ".join(sorted({r.state for r in record.snapshots}))) or "-")
        self.out.print(table)
        holds = f"holds began within {_seconds(m.hold_skew_s)}, " if m.hold_skew_s is not None else ""
        self.line(f"{holds}prepare skew {_seconds(m.prepare_skew_s)}, longest freeze {_seconds(m.max_freeze_window_s)}"
                  + (f", degraded: {'; '.join(m.degradations)}" if m.degradations else ""))
        from snapctl.render.retention import backup_retention_line, backup_retention_warnings

        if retention := backup_retention_line(m):
            self.out.print(retention)
        for line in backup_retention_warnings(m):
            self.err.print(line, markup=False, highlight=False, soft_wrap=True)
        return ExitCode.OK

    def _plan(self, plan) -> int:
        self.line(f"dry run: would back up cluster {plan.cluster} with provider {plan.provider}")
        for node, volumes in plan.nodes.items():
            self.line(f"  {node}: {', '.join(volumes) or 'no volumes'}")
        self._findings(plan.verdict)
        refused = bool(plan.verdict.at_least("critical"))
        self.out.print("preflight: " + ("would refuse (see above)" if refused else "ok"))
        return ExitCode.PREFLIGHT_REFUSED if refused else ExitCode.OK

    def run_list(self, entries, problems, where: str = "the catalog", older: int = 0) -> int:
        """``older``: how many older runs were left out (``list --limit``)."""
        from snapctl.render.runs import run_list_text

        return run_list_text(self, entries, problems, where, older)

    def manifest(self, m, warnings: list[str] = ()) -> int:
        from snapctl.render.restore import _warnings

        _warnings(self, list(warnings))
        self.line(f"run {m.run_id} of cluster {m.cluster}: {m.status}, provider {m.provider}, by {m.owner}")
        holds = f"holds began within {_seconds(m.hold_skew_s)}, " if m.hold_skew_s is not None else ""
        self.line(f"started {m.started_at:%Y-%m-%d %H:%M:%S}Z, finished "
                  f"{f'{m.finished_at:%H:%M:%S}Z' if m.finished_at else '-'}, "
                  f"{holds}prepare skew {_seconds(m.prepare_skew_s)}")
        if m.error:
            self.line(f"error: {m.error}")
        if m.status == "succeeded" and not m.snapshots_completed:
            # Made for restore, not yet proven so: `verify` exits 7 until they are complete.
            self.line(f"snapshots not confirmed complete (backup --no-wait, or a run stopped in its wait): run `snapctl verify {m.run_id}`")
        if m.forced:  # a run --force took past critical preflight findings: say so before anything else
            self.line("forced: backed up with --force despite the preflight's critical findings")
        for degradation in m.degradations:
            self.line(f"degraded: {degradation}")
        if m.last_drill is not None:
            from snapctl.manifest import last_drill_interrupted_by

            d = m.last_drill
            outcome = "passed" if d.ok else "failed" + (f" ({', '.join(d.failed_nodes)})" if d.failed_nodes else "")
            if signal := last_drill_interrupted_by(m):
                outcome += f", interrupted by {signal}"
            rto = f", RTO {_seconds(d.rto_s)}" if d.rto_s is not None else ""
            self.line(f"last drill {d.drill_id}: {outcome}{rto}, finished {d.finished_at:%Y-%m-%d %H:%M:%S}Z; "
                      f"report {d.report}")
        for name, r in m.nodes.items():
            self.line(f"  {name}: freeze {_seconds(r.freeze_window_s)}, "
                      f"{len(r.snapshots)} snapshot(s) {', '.join(_snapshot_text(s) for s in r.snapshots)}"
                      + (f", error: {r.error}" if r.error else ""))
            if r.state and r.state.facts.tables:
                facts = ", ".join(f"{t}={f.rows}" for t, f in r.state.facts.tables.items())
                self.line(f"    facts at prepare: {facts}")
        return ExitCode.OK

    def status(self, s) -> int:
        from snapctl.render.status import status_text

        return status_text(self, s)

    def status_watch(self):
        """`status --watch`: a callable shown each refresh, and a context that ends the display."""
        from snapctl.render.status import LiveStatus

        return LiveStatus(self)

    def _findings(self, verdict) -> None:
        from rich.markup import escape

        colours = {"info": "dim", "degraded": "yellow", "critical": "red"}
        for f in verdict.findings:
            self.out.print(f"  [{colours[f.severity]}]{f.severity}[/] {escape(str(f))}",
                           soft_wrap=True)

    def restore_result(self, result) -> int:
        from snapctl.render.restore import restore_text

        return restore_text(self, result)

    def drill_result(self, report) -> int:
        from snapctl.render.restore import drill_text

        return drill_text(self, report)

    def verify_result(self, result) -> int:
        from snapctl.render.restore import verify_text

        return verify_text(self, result)

    def trigger_result(self, results) -> int:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="engine snapshots", title_justify="left")
        for column in ("node", "target", "status", "duration", "detail"):
            table.add_column(column)
        for r in results:
            if r.error:
                said = r.error + (f" (hint: {r.hint})" if r.hint else "")
                table.add_row(r.node, "-", "[red]failed[/]", "-", escape(said))
            for job in r.jobs:
                table.add_row(r.node, escape(job.target), _status_text(job.status), _seconds(job.duration_s),
                              escape(job.detail or ""))
        self.out.print(table)
        from snapctl.trigger import exit_code

        return exit_code(results)

    def prune_result(self, result) -> int:
        from snapctl.render.retention import prune_text

        return prune_text(self, result)

    def gc_result(self, result) -> int:
        from snapctl.render.retention import gc_text

        return gc_text(self, result)

    def demo_cluster(self, cluster) -> int:
        for n in cluster.nodes:
            state = f"agent pid {n.pid} at {n.url}" if cluster.action == "up" else (
                f"stopped agent pid {n.pid}" if n.pid else "was not running")
            self.line(f"demo {cluster.action}: {n.name}: {state}, database {n.database}")
        return ExitCode.OK


class JsonRenderer(Renderer):
    """Exactly one JSON document on stdout per command; `bundle` merges several into one."""

    def __init__(self) -> None:
        self._bundle: dict[str, Any] | None = None

    @contextmanager
    def bundle(self, name: str):
        self._bundle = {}
        try:
            yield
        except BaseException:  # the command's one document is then its error, which the CLI prints
            self._bundle = None
            raise
        doc, self._bundle = self._bundle, None
        self._emit(name, doc)

    def progress(self):
        # stdout is the document's; a script's `2>>log` (cron's) keeps what the run did, as in text
        # mode into a log: plain lines, a terminal or not, for a script reads them.
        from snapctl.render.progress import LineProgress

        return LineProgress(sys.stderr)

    def _emit(self, kind: str, payload: Any, *, plain: bool = False) -> None:
        """``plain``: the payload holds JSON types only (built field by field): no walk to convert it."""
        data = payload if plain else jsonable(payload)
        if self._bundle is not None:
            self._bundle[kind] = data
            return
        document = {"schema_version": JSON_SCHEMA_VERSION, "kind": kind, "data": data, **logged_warnings()}
        # Indented for a person at a terminal; compact for scripts, which lets json use its C encoder.
        print(json.dumps(document, indent=2 if sys.stdout.isatty() else None))

    def backup_result(self, result) -> int:
        from snapctl.preflight import BackupPlan

        if not isinstance(result, BackupPlan):
            from snapctl.render.retention import backup_retention_warnings

            for line in backup_retention_warnings(result):
                print(line, file=sys.stderr)
        self._emit("plan" if isinstance(result, BackupPlan) else "backup", result)
        if isinstance(result, BackupPlan) and result.verdict.at_least("critical"):
            return ExitCode.PREFLIGHT_REFUSED
        return ExitCode.OK

    @staticmethod
    def _warn(warnings) -> None:
        """On stderr as the text output says them: a log of `-o json 2>>log` has them too."""
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)

    def run_list(self, entries, problems, where: str = "the catalog", older: int = 0) -> int:
        self._warn(problems)
        # ``older``: how many runs --limit left out, so a script can tell a cut list from a whole one.
        self._emit("list", {"runs": entries, "problems": problems, "older": older})
        return ExitCode.OK

    def manifest(self, m, warnings: list[str] = ()) -> int:
        self._warn(warnings)  # stdout stays the manifest's document
        self._emit("manifest", m)
        return ExitCode.OK

    def status(self, s) -> int:
        from snapctl.render.status import status_document

        self._emit("status", status_document(s), plain=True)
        return s.exit_code

    def status_watch(self):
        from snapctl.render.status import JsonLinesStatus

        return JsonLinesStatus()

    def restore_result(self, result) -> int:
        from snapctl.render.restore import restore_document
        from snapctl.restore_plan import RestorePlan

        self._warn(result.warnings)
        if isinstance(result, RestorePlan):  # a dry run's, as `backup --dry-run`'s is kind "plan"
            self._emit("restore_plan", result)
            return ExitCode.OK
        self._emit("restore", restore_document(result))
        return ExitCode.OK if result.ok else ExitCode.VERIFY_MISMATCH

    def drill_result(self, report) -> int:
        from snapctl.render.restore import drill_document, drill_trouble

        self._warn(report.warnings)
        for label, said in drill_trouble(report):
            print(f"{label}: {said}", file=sys.stderr)
        self._emit("drill", drill_document(report))
        return report.exit_code

    def verify_result(self, result) -> int:
        from snapctl.render.restore import verify_document, verify_trouble

        self._warn(result.warnings)
        for line in verify_trouble(result):
            print(line, file=sys.stderr)
        self._emit("verify", verify_document(result))
        return ExitCode.OK if result.ok else ExitCode.VERIFY_MISMATCH

    def trigger_result(self, results) -> int:
        from snapctl.trigger import exit_code

        self._emit("trigger", {"nodes": [{**jsonable(r), "ok": r.ok} for r in results]})
        return exit_code(results)

    def prune_result(self, result) -> int:
        from snapctl.render.retention import prune_document, prune_exit, prune_warnings

        for line in prune_warnings(result):
            print(line, file=sys.stderr)
        self._emit("prune", prune_document(result))
        return prune_exit(result)

    def gc_result(self, result) -> int:
        from snapctl.render.retention import gc_document, gc_exit

        self._emit("gc", gc_document(result))
        return gc_exit(result)

    def demo_cluster(self, cluster) -> int:
        self._emit(f"demo_{cluster.action}", cluster)
        return ExitCode.OK


def _relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") or path if path.startswith(root) else path


def _status_text(status: str) -> str:
    return {"succeeded": "[green]succeeded[/]", "failed": "[red]failed[/]", "running": "[yellow]running[/]"}.get(
        status, status)


def _snapshot_text(ref) -> str:
    """A snapshot id, with the state the manifest recorded unless it was complete."""
    return ref.snapshot_id if ref.state == "completed" else f"{ref.snapshot_id} ({ref.state} when recorded)"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


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
