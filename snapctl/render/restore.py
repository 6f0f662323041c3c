"""`snapctl restore`, `drill` and `verify` for people (text) and scripts (JSON)."""

from __future__ import annotations

from snapctl.errors import ExitCode
from snapctl.render import _relative, _seconds, jsonable
from snapctl.units import human_bytes

_VERDICT = {"passed": "[green]passed[/]", "mismatch": "[red]mismatch[/]", "error": "[red]error[/]"}


def restore_document(result) -> dict:
    return {**jsonable(result), "ok": result.ok}


def restore_plan_text(r, plan) -> int:
    """`restore --dry-run`: each node's volumes, each to its snapshot and place, and its engine."""
    r.line(f"dry run: would restore run {plan.run_id} of cluster {plan.cluster} with provider {plan.provider} "
           f"into {plan.target}")
    for n in plan.nodes:
        r.line(f"  {n.node}:")
        for v in n.volumes:
            r.line(f"    {v.volume} -> {v.snapshot_id} -> {_place(v)}")
        engine = (f"{n.engine}, restore-prepared in-process" if n.prepared == "in-process" else
                  f"scratch agent {n.prepared}" if n.prepared else "none")
        said = n.note and n.prepared in (None, "in-process")  # the scratch agent's note says what the line does
        r.line(f"    engine: {engine}" + (f" ({n.note})" if said else ""))
    _warnings(r, plan.warnings)
    unchecked = "" if plan.record_checked else "; not checked: an S3 catalog answers only a real write"
    r.line("restore: would go ahead; nothing restored, no record written"
           + (f" (the restore would put its record in the catalog's {plan.record}/{unchecked})" if plan.record else ""))
    return ExitCode.OK


def _place(v) -> str:
    if v.path is not None:
        return v.path
    where = f"new volume in zone {v.zone}" if v.zone else "new volume in the provider's default place"
    if v.instance:
        where += f", attached to {v.instance}" + (f" at {v.device}" if v.device else "")
    return where


def restore_text(r, result) -> int:
    from rich.markup import escape
    from rich.table import Table

    from snapctl.restore_plan import RestorePlan

    if isinstance(result, RestorePlan):
        return restore_plan_text(r, result)

    table = Table(title=escape(f"restore of {result.run_id} into {result.target}"), title_justify="left")
    for column in ("node", "volumes", "prepared", "tables (rows)", "matches prepare"):
        table.add_column(column)
    for n in result.nodes:
        tables = ", ".join(f"{t}={f.rows}" for t, f in (n.facts.tables.items() if n.facts else []))
        if n.mismatches:
            verdict = "[red]no: " + escape("; ".join(n.mismatches)) + "[/]"
        elif n.facts is not None:
            verdict = "[green]yes[/]"
        else:
            verdict = "-"
        table.add_row(n.node, escape("\n".join(_relative(v, result.target) for v in n.volumes.values())) or "-",
                      escape(n.prepared or "-"), tables or "-", verdict)
    r.out.print(table)
    _warnings(r, result.warnings)
    for n in result.nodes:
        if n.note:
            r.out.print(f"  {n.node}: {escape(n.note)}", soft_wrap=True)
    return ExitCode.OK if result.ok else ExitCode.VERIFY_MISMATCH


def drill_document(report) -> dict:
    return {**jsonable(report), "ok": report.ok, "exit_code": int(report.exit_code)}


def drill_text(r, report) -> int:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"drill of run {report.run_id} (cluster {report.cluster})", title_justify="left")
    for column in ("node", "engine", "runs on", "restore", "start", "verify", "verdict"):
        table.add_column(column, justify="right" if column in ("restore", "start", "verify") else "left")
    for n in report.nodes:
        table.add_row(n.node, n.engine or "-", escape(n.runs_on or "-"), _seconds(n.restore_s), _seconds(n.start_s),
                      _seconds(n.verify_s), _VERDICT[n.verdict])
    r.out.print(table)
    _warnings(r, report.warnings)
    for n in report.nodes:
        for mismatch in n.mismatches:
            r.out.print(f"  [red]{n.node}[/]: {escape(mismatch)}", soft_wrap=True)
        if n.error:
            r.out.print(f"  [red]{n.node}[/]: {escape(n.error)}" + (f" (hint: {escape(n.hint)})" if n.hint else ""),
                        soft_wrap=True)
    for line in report.cleaned_up:
        r.out.print(f"cleaned up: {escape(line)}", soft_wrap=True)
    for label, said in drill_trouble(report):
        r.err.print(f"[yellow]{label}:[/] {escape(said)}", soft_wrap=True)
    outcome = "[bold green]passed[/]" if report.ok else "[bold red]failed[/]"
    rto = f", RTO {_seconds(report.rto_s)}" if report.rto_s is not None else ""
    r.out.print(f"drill {report.drill_id}: {outcome}{rto}; junit report {escape(report.junit or '-')}", soft_wrap=True)
    return report.exit_code


def drill_trouble(report) -> list[tuple[str, str]]:
    """What the drill's teardown could not do, and what it left, as stderr says it (label, words):
    in text and with -o json alike, so that a log of stderr has them either way."""
    return ([("teardown", problem) for problem in report.teardown_errors]
            + [("left behind", item + ("" if report.kept else " (delete it by hand)")) for item in report.leftovers])


def _warnings(r, warnings: list[str]) -> None:
    from rich.markup import escape

    for warning in warnings:
        r.err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def verify_trouble(result) -> list[str]:
    """For `-o json`, on stderr: what text shows of a verify that is not ok (its problems, the
    snapshots' warnings, the verdict, naming the run), so that a log of `verify -o json 2>>log`
    says why it exited 7; nothing for one that is ok and says nothing more."""
    lines = [f"{s.node}/{s.volume}: warning: {w}" for s in result.snapshots for w in s.warnings]
    if result.ok:
        return lines
    lines += [f"{s.node}/{s.volume}: {problem}" for s in result.snapshots for problem in s.problems]
    return [*lines, *result.problems, f"verify: run {result.run_id}: {result.verdict}"]


def verify_document(result) -> dict:
    return {**jsonable(result), "ok": result.ok, "pending": result.pending, "verdict": result.verdict}


def verify_text(r, result) -> int:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"snapshots of run {result.run_id} ({result.provider})", title_justify="left")
    for column in ("node", "volume", "snapshot", "bytes", "state"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for s in result.snapshots:
        state = "[green]ok[/]" if s.state == "ok" else f"[red]{s.state}[/]"
        table.add_row(s.node, s.volume, escape(s.snapshot_id), human_bytes(s.bytes), state)
    r.out.print(table)
    _warnings(r, result.warnings)
    for s in result.snapshots:
        for problem in s.problems:
            r.out.print(f"  [red]{s.node}/{s.volume}[/]: {escape(problem)}", soft_wrap=True)
        for warning in s.warnings:
            r.out.print(f"  [yellow]{s.node}/{s.volume}[/]: warning: {escape(warning)}", soft_wrap=True)
    for problem in result.problems:
        r.out.print(f"  [red]{escape(problem)}[/]", soft_wrap=True)
    colour = "bold green" if result.ok else ("bold yellow" if result.pending else "bold red")
    r.out.print(f"verify: [{colour}]{escape(result.verdict)}[/]", soft_wrap=True)
    return ExitCode.OK if result.ok else ExitCode.VERIFY_MISMATCH
