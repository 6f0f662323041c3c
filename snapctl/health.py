"""One health verdict, used by `snapctl status` and by the backup preflight.

Findings are graded: ``critical`` refuses a backup (unless --force), ``degraded`` is reported
and recorded in the manifest, ``info`` is shown only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from node_agent.models import AgentStatus, RaftGroup
from snapctl.config import Inventory

Severity = Literal["info", "degraded", "critical"]
_RANK = {"info": 0, "degraded": 1, "critical": 2}


@dataclass(frozen=True)
class Finding:
    severity: Severity
    subject: str  # node name or raft group
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass
class NodeProbe:
    """What one fan-out call learned about a node: its status, or why there is none."""

    node: str
    status: AgentStatus | None = None
    error: str | None = None
    unauthorized: bool = False
    elapsed_s: float | None = None


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)

    @property
    def level(self) -> Literal["healthy", "degraded", "critical"]:
        worst = max((_RANK[f.severity] for f in self.findings), default=0)
        return ("healthy", "degraded", "critical")[worst]

    def at_least(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if _RANK[f.severity] >= _RANK[severity]]


def assess(inventory: Inventory, probes: list[NodeProbe], *, for_backup: bool = False) -> Verdict:
    """Grade the cluster. With ``for_backup``, a node already held is critical (a backup would collide)."""
    verdict = Verdict()
    add = verdict.findings.append
    for probe in probes:
        if probe.unauthorized:
            add(Finding("critical", probe.node, f"agent refused our token: {probe.error}"))
            continue
        if probe.status is None:
            add(Finding("critical", probe.node, f"agent unreachable: {probe.error}"))
            continue
        engine = probe.status.engine
        if not engine.reachable:
            add(Finding("critical", probe.node, f"engine {engine.engine} is down: {engine.error or 'unreachable'}"))
        if probe.status.lease is not None:
            lease = probe.status.lease
            add(Finding("critical" if for_backup else "info", probe.node,
                        f"held by run {lease.run_id} until {lease.expires_at:%H:%M:%S}Z"))
        elif engine.held:
            add(Finding("critical" if for_backup else "degraded", probe.node,
                        f"engine already held by {engine.held_by or 'someone else'} (not this agent)"))
    for group_name, members in raft_groups(probes).items():
        verdict.findings.extend(assess_raft_group(group_name, members, inventory))
    return verdict


def raft_groups(probes: list[NodeProbe]) -> dict[str, list[tuple[str, RaftGroup]]]:
    """Raft groups across nodes: group name -> [(node, that member's view)]."""
    groups: dict[str, list[tuple[str, RaftGroup]]] = {}
    for probe in probes:
        if probe.status is None:
            continue
        for group in probe.status.engine.raft:
            groups.setdefault(group.group, []).append((probe.node, group))
    return groups


def assess_raft_group(name: str, members: list[tuple[str, RaftGroup]], inventory: Inventory) -> list[Finding]:
    findings: list[Finding] = []
    subject = f"raft group {name}"
    leaders = {g.member for _, g in members if g.role == "leader"}
    terms = {g.term for _, g in members if g.term is not None}
    if not leaders:
        seen_leader = {g.leader for _, g in members if g.leader}
        if not seen_leader:
            findings.append(Finding("critical", subject, "no leader"))
    elif len(leaders) > 1:
        findings.append(Finding("critical", subject, f"{len(leaders)} leaders: {', '.join(sorted(leaders))}"))
    if len(terms) > 1:
        findings.append(Finding("degraded", subject, f"members disagree on the term: {sorted(terms)}"))
    limit = inventory.policy.max_follower_lag
    for node, group in members:
        for progress in group.replication:
            if progress.lag_entries is not None and progress.lag_entries > limit:
                findings.append(Finding("degraded", subject,
                                        f"follower {progress.peer} lags {progress.lag_entries} entries (limit {limit})"))
            if progress.error or progress.consecutive_errors:
                findings.append(Finding("degraded", subject,
                                        f"replication to {progress.peer} failing: {progress.error or 'consecutive errors'}"))
    return findings
