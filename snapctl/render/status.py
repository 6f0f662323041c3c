"""`snapctl status` for people (text) and scripts (JSON)."""

from __future__ import annotations

from rich.table import Table

from snapctl.render import _age, _bytes, _n, jsonable


def status_document(s) -> dict:
    return {**jsonable(s), "verdict": {"level": s.verdict.level, "findings": jsonable(s.verdict.findings)}}


def status_text(r, s) -> int:
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
    r.out.print(table)
    _raft(r, s)
    if s.latest_success:
        age = (s.checked_at - (s.latest_success.finished_at or s.latest_success.started_at)).total_seconds()
        r.out.print(f"newest good backup: {s.latest_success.run_id}, {_age(age)} ago (RPO {_age(s.rpo_s)})")
    if s.latest_failure:
        r.out.print(f"newest failure: {s.latest_failure.run_id}: {s.latest_failure.error or 'failed'}")
    r._findings(s.verdict)
    colour = {"healthy": "green", "degraded": "yellow", "critical": "red"}[s.verdict.level]
    r.out.print(f"verdict: [bold {colour}]{s.verdict.level}[/]")
    return s.exit_code

def _raft(r, s) -> None:
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
    r.out.print(table)
