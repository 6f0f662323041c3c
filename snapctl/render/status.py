"""`snapctl status` for people (text, or refreshed in place with --watch) and scripts (JSON).

The JSON document is built field by field here, not dumped from the core's objects, so that it
only changes on purpose: docs/status.schema.json is its published schema (``status_version``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Self

from snapctl.render import JSON_SCHEMA_VERSION, _age, _n
from snapctl.timestamps import utc_text
from snapctl.units import human_bytes

_COLOURS = {"info": "dim", "degraded": "yellow", "critical": "red"}
_VERDICT_COLOURS = {"healthy": "green", "degraded": "yellow", "critical": "red"}
_ALL_GROUPS_UP_TO = 12
_REFUSALS_SHOWN = 3  # on the verdict line; -o json lists them all

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text


# ---- JSON ---------------------------------------------------------------------------------------


def status_document(s) -> dict[str, Any]:
    from snapctl.status import STATUS_VERSION

    return {
        "status_version": STATUS_VERSION,
        "cluster": s.cluster,
        "checked_at": utc_text(s.checked_at),
        "filters": {"nodes": s.node_filter, "groups": s.group_filter},
        "verdict": {
            "level": s.verdict.level,
            "exit_code": int(s.exit_code),
            "safe_to_back_up": not s.preflight,
            "findings": [_finding(f) for f in s.verdict.findings],
            "preflight_refusals": [_finding(f) for f in s.preflight],
        },
        "nodes": [_node(s, p) for p in s.probes],
        "raft_groups": [_group(g) for g in s.verdict.groups],
        "backups": {
            "rpo_s": s.rpo_s,
            "latest_success": _unconfirmed(_run(s.latest_success, s.latest_success_age_s),
                                           s.latest_success_unconfirmed),
            "latest_failure": _run(s.latest_failure, None),
            "catalog_problems": list(s.catalog_problems),
        },
    }


def status_json_line(s) -> str:
    """One refresh of `--watch -o json`: the same envelope as `status -o json`, on one line."""
    return json.dumps({"schema_version": JSON_SCHEMA_VERSION, "kind": "status", "data": status_document(s)})


def _finding(f) -> dict[str, Any]:
    return {"severity": f.severity, "subject": f.subject, "message": f.message, "hint": f.hint,
            "forceable": f.forceable}


def _node(s, p) -> dict[str, Any]:
    doc: dict[str, Any] = {"node": p.node, "reachable": p.status is not None, "authorized": not p.unauthorized,
                           "http_status": p.http_status, "error": p.error, "elapsed_s": p.elapsed_s,
                           "agent_version": None, "engine": None, "lease": None, "free_bytes": None, "data_paths": []}
    if p.status is None:
        return doc
    e, lease = p.status.engine, p.status.lease
    doc.update(agent_version=p.status.agent_version, free_bytes=p.status.free_bytes,
               data_paths=list(p.status.data_paths))
    doc["engine"] = {"type": e.engine, "version": e.version, "up": e.reachable, "error": e.error, "held": e.held,
                     "held_by": e.held_by, "held_since": utc_text(e.held_since) if e.held_since else None}
    if lease is not None:
        doc["lease"] = {"run_id": lease.run_id, "acquired_at": utc_text(lease.acquired_at),
                        "expires_at": utc_text(lease.expires_at),
                        "age_s": (s.checked_at - lease.acquired_at).total_seconds(),
                        "expires_in_s": (lease.expires_at - s.checked_at).total_seconds()}
    return doc


def _group(g) -> dict[str, Any]:
    return {
        "group": g.group, "leader": g.leader, "leader_node": g.leader_node, "term": g.term,
        "members": [{
            "member": m.member, "node": m.node, "role": m.role, "term": m.term, "commit_index": m.commit_index,
            "applied_index": m.applied_index, "last_log_index": m.last_log_index,
            "last_snapshot_index": m.last_snapshot_index, "last_snapshot_term": m.last_snapshot_term,
            "snapshot_status": m.snapshot_status, "snapshot_busy_s": m.snapshot_busy_s,
            "lag_entries": m.lag_entries, "lag_seconds": m.lag_seconds, "replication_state": m.replication_state,
        } for m in g.members],
        "replicators_in_error": [{"peer": r.peer, "reported_by": r.reported_by, "direction": r.direction,
                                  "state": r.state, "error": r.error, "consecutive_errors": r.consecutive_errors}
                                 for r in g.replicators_in_error],
        "findings": [_finding(f) for f in g.findings],
    }


def _run(entry, age_s: float | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"run_id": entry.run_id, "status": entry.status, "started_at": utc_text(entry.started_at),
            "finished_at": utc_text(entry.finished_at) if entry.finished_at else None, "age_s": age_s,
            "error": entry.error}


def _unconfirmed(run: dict[str, Any] | None, unconfirmed: bool) -> dict[str, Any] | None:
    return None if run is None else {**run, "snapshots_unconfirmed": unconfirmed}


# ---- text (rich is imported here, never for JSON) -------------------------------------------------


def status_text(r, s) -> int:
    print_status(r.out, s)
    return s.exit_code


def print_status(out, s) -> None:
    """On a terminal, the screen as it is; into a log or a pipe, the tables, then the findings and
    the verdict each on one whole line: they quote agents and engines, and a log keeps them whole."""
    if out.is_terminal:
        out.print(status_view(s))
        return
    out.print(status_view(s, lines=False))
    for line in status_lines(s):
        out.print(line, soft_wrap=True)


def status_view(s, *, lines: bool = True) -> Group:
    """Everything on one screen: nodes, raft groups, backups, findings, the verdict line last."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [_nodes_table(s)]
    groups = s.verdict.groups
    if len(groups) > _ALL_GROUPS_UP_TO and not s.group_filter:
        # A store can hold thousands of regions: on one screen, only the groups with something to say.
        groups = [g for g in groups if any(f.severity != "info" for f in g.findings)]
        hidden = len(s.verdict.groups) - len(groups)
    else:
        hidden = 0
    if groups:
        parts.append(_raft_table(groups))
    if hidden:
        parts.append(Text(f"{hidden} healthy raft groups not shown (--group PATTERN or -o json shows them)"))
    parts.extend(_backups(s))
    if lines:
        parts.extend(status_lines(s))
    return Group(*parts)


def status_lines(s) -> list[Text]:
    """The findings, then the verdict line."""
    from rich.text import Text

    lines = [Text.from_markup(f"  [{_COLOURS[f.severity]}]{f.severity}[/] ") + Text(str(f))
             for f in s.verdict.findings]
    # The preflight's refusals, which may be info findings above (a held lease), said where they
    # decide: the reader should not have to find them in -o json.
    shown = "; ".join(str(f) for f in s.preflight[:_REFUSALS_SHOWN])
    more = f"; and {len(s.preflight) - _REFUSALS_SHOWN} more" if len(s.preflight) > _REFUSALS_SHOWN else ""
    safe = "yes" if not s.preflight else f"no, a backup would be refused: {shown}{more}"
    if not s.preflight and s.node_filter:  # a backup holds every node, and only these were asked
        safe = f"yes for the nodes asked ({', '.join(s.node_filter)}); a backup holds every node"
    colour = _VERDICT_COLOURS[s.verdict.level]
    lines.append(Text.from_markup(f"verdict: [bold {colour}]{s.verdict.level}[/] (exit {int(s.exit_code)}), "
                                  f"checked {s.checked_at:%H:%M:%S}Z, safe to back up: ")
                 + Text(safe))
    return lines


def _nodes_table(s) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"cluster {s.cluster}", title_justify="left")
    for column in ("node", "agent", "engine", "version", "lease", "free"):
        table.add_column(column)
    for p in s.probes:
        if p.status is None:
            state = ("[red]unauthorized[/]" if p.unauthorized else f"[red]HTTP {p.http_status}[/]"
                     if p.http_status is not None else "[red]unreachable[/]")
            table.add_row(p.node, state, "-", "-", "-", "-")
            continue
        e, lease = p.status.engine, p.status.lease
        if lease is not None:
            # An expired lease still shown is one whose engine would not release: say that, not a past expiry.
            ends = (f"[red]expired {lease.expires_at:%H:%M:%S}Z, still held[/]" if e.details.get("releasing")
                    else escape(f"expires {lease.expires_at:%H:%M:%S}Z"))
            held = escape(f"{lease.run_id}, {_age((s.checked_at - lease.acquired_at).total_seconds())} old, ") + ends
        else:
            held = f"[yellow]held by {escape(e.held_by or 'other')}[/]" if e.held else "-"
        table.add_row(p.node, escape(f"ok {p.status.agent_version}"),
                      f"{escape(e.engine)} {'up' if e.reachable else '[red]down[/]'}",
                      escape(e.version or "-"), held, human_bytes(p.status.free_bytes))
    return table


def _raft_table(groups) -> Table:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title="raft groups", title_justify="left")
    for column in ("group", "member", "node", "role", "term", "commit", "applied", "lag", "snapshot"):
        table.add_column(column)
    for g in groups:
        for index, m in enumerate(g.members):
            role = m.role if m.role in ("leader", "follower", "learner", "witness") else f"[yellow]{m.role}[/]"
            lag = "-" if m.lag_entries is None else str(m.lag_entries)
            if m.lag_seconds is not None:
                lag += f" ({m.lag_seconds:.1f}s)"
            snapshot = f"{_n(m.last_snapshot_index)}/{_n(m.last_snapshot_term)}"
            if m.snapshot_status and m.snapshot_status != "IDLE":
                busy = f" {_age(m.snapshot_busy_s)}" if m.snapshot_busy_s is not None else ""
                snapshot += f" [yellow]{escape(m.snapshot_status)}{busy}[/]"
            table.add_row(Text(g.group if index == 0 else ""), Text(_short(m.member)),
                          Text(m.node) if m.node else "[dim]seen by peers only[/]", role,
                          _n(m.term), _n(m.commit_index), _n(m.applied_index), lag, snapshot)
    return table


def _backups(s) -> list[Text]:
    from rich.text import Text

    lines: list[Text] = []
    if s.latest_success is not None:
        age = s.latest_success_age_s or 0
        when = f"{_age(age)} ago" if age >= 0 else f"started {_age(-age)} in the future"
        unconfirmed = ", its snapshots not confirmed complete (backup --no-wait)" if s.latest_success_unconfirmed \
            else ""
        lines.append(Text(f"newest good backup: {s.latest_success.run_id}, {when} (RPO {_age(s.rpo_s)}){unconfirmed}"))
    elif not s.catalog_read:
        lines.append(Text("newest good backup: unknown (the catalog cannot be read)"))
    else:
        lines.append(Text("newest good backup: none"))
    if s.latest_failure is not None:
        lines.append(Text(f"newest failure: {s.latest_failure.run_id}: {s.latest_failure.error or 'failed'}"))
    if s.drills is not None and s.drills.recorded:  # a cluster that never drilled: no line about it
        passed = s.drills.last_passed
        limit = f" (max age {_age(s.drill_max_age_s)})" if s.drill_max_age_s is not None else ""
        if passed is not None and passed.finished_at is not None:
            ago = _age(max(0.0, (s.checked_at - passed.finished_at).total_seconds()))
            lines.append(Text(f"newest passed drill: {passed.drill_id} (run {passed.run_id}), {ago} ago{limit}"))
        else:
            lines.append(Text(f"newest passed drill: none among the newest {s.drills.read} recorded{limit}"))
    return lines


def _short(member: str) -> str:
    return member if len(member) <= 20 else member[:8] + "…" + member[-8:]


# ---- --watch --------------------------------------------------------------------------------------


class LiveStatus:
    """`--watch` for a person: the same screen, redrawn in place on every refresh; into a log or a
    pipe (no terminal to redraw), every refresh's screen after the last."""

    def __init__(self, r) -> None:
        from rich.live import Live

        self._out = r.out
        self._live = Live(console=r.out, auto_refresh=False, transient=False) if r.out.is_terminal else None
        self.exit_code = 0

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def __call__(self, s) -> None:
        self.exit_code = int(s.exit_code)
        if self._live is None:
            print_status(self._out, s)
            self._out.file.flush()  # a `tail -f` of the log sees each refresh when it is made
        else:
            self._live.update(status_view(s), refresh=True)


class JsonLinesStatus:
    """`--watch -o json`: one status document per refresh, one per line (JSON Lines)."""

    exit_code = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, s) -> None:
        self.exit_code = int(s.exit_code)
        print(status_json_line(s), flush=True)
