"""One health verdict, used by `snapctl status` and by the backup preflight.

Findings are graded: ``critical`` refuses a backup, ``degraded`` is reported and recorded in the
manifest, ``info`` is shown only. --force overrides a critical finding only where the backup it
lets through can still be good (a cluster in a bad state: no leader, a lagging follower, a busy
engine); a finding that makes the backup impossible or meaningless (an agent that is not the
node's, data outside its volumes, an agent or engine that does not answer) is not ``forceable``.

Raft groups are assembled across nodes: each agent reports only its own member's view of a group
(a DingoDB region, a Tarantool replica set, an etcd cluster), so leader, term agreement and each
follower's lag come from putting those views side by side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from node_agent.models import AgentStatus, RaftGroup, ReplicationProgress
from snapctl import __version__
from snapctl.config import Inventory
from snapctl.left_holds import HELD_ELSEWHERE, held_elsewhere_hint

Severity = Literal["info", "degraded", "critical"]
_RANK = {"info": 0, "degraded": 1, "critical": 2}

BUSY_SNAPSHOT_STATES = frozenset({"SAVING", "LOADING", "DOWNLOADING"})
_LEADING = frozenset({"leader", "transferring"})  # braft's TRANSFERRING is a leader handing over

# How long a member's snapshot has been busy, in seconds, or None when unknown.
SnapshotAge = Callable[[str, RaftGroup], "float | None"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    subject: str  # node name, "raft group <name>", "backups", "catalog"
    message: str
    # False: --force cannot override it, because the backup it let through would fail or be no
    # backup of this node (another node's agent, data outside the volumes, no agent or engine).
    forceable: bool = True
    hint: str | None = None  # the fix, where one is known: a refusal names it instead of --force

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")

    @property
    def said(self) -> str:
        """Subject and message without the hint: a refusal gives the hints a line of their own."""
        return f"{self.subject}: {self.message}"


@dataclass
class NodeProbe:
    """What one fan-out call learned about a node: its status, or why there is none."""

    node: str
    status: AgentStatus | None = None
    error: str | None = None
    unauthorized: bool = False
    refused: str = "our token"  # what the agent refused when unauthorized (AgentUnauthorized.refused)
    elapsed_s: float | None = None
    # What it answered, 200 with its status; None: no answer (no connection, or none in time).
    http_status: int | None = None
    not_agent: bool = False  # what answered is no snapctl agent (another service on the port)


@dataclass
class MemberView:
    """One member of a raft group: its own view when its agent answered, else what its peers say."""

    member: str
    node: str | None  # the node whose agent reported this member; None: only seen as a peer
    role: str
    term: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    last_log_index: int | None = None
    last_snapshot_index: int | None = None
    last_snapshot_term: int | None = None
    snapshot_status: str | None = None
    snapshot_busy_s: float | None = None
    lag_entries: int | None = None  # behind the leader
    lag_seconds: float | None = None  # where the engine knows
    replication_state: str | None = None  # as the leader's replicator reports it


@dataclass
class ReplicatorError:
    peer: str
    reported_by: str  # node
    state: str | None
    error: str
    consecutive_errors: int
    direction: str = "to_peer"  # ReplicationProgress.error_direction


@dataclass
class GroupView:
    group: str
    leader: str | None = None
    leader_node: str | None = None
    term: int | None = None
    members: list[MemberView] = field(default_factory=list)
    replicators_in_error: list[ReplicatorError] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    groups: list[GroupView] = field(default_factory=list)
    # node -> the engine type its agent said it serves (a preflight's; its status's engine_type)
    engine_types: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> Literal["healthy", "degraded", "critical"]:
        worst = max((_RANK[f.severity] for f in self.findings), default=0)
        return ("healthy", "degraded", "critical")[worst]

    def at_least(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if _RANK[f.severity] >= _RANK[severity]]


def assess(inventory: Inventory, probes: list[NodeProbe], *, for_backup: bool = False,
           snapshot_age: SnapshotAge | None = None) -> Verdict:
    """Grade the cluster. With ``for_backup``, a node already held is critical (a backup would collide).
    ``snapshot_age`` says how long a member's snapshot has been SAVING/LOADING/DOWNLOADING."""
    verdict = Verdict()
    engine_types = {node.name: (node.engine or {}).get("type") for node in inventory.nodes}
    force_release = {node.name for node in inventory.nodes if (node.engine or {}).get("force_release") is True}
    for probe in probes:
        verdict.findings.extend(assess_node(probe, for_backup=for_backup,
                                            released_by_prepare=probe.node in force_release))
        verdict.findings.extend(engine_mismatch(probe, engine_types.get(probe.node)))
    for name, members in raft_groups(probes).items():
        group = build_group(name, members, inventory, snapshot_age)
        verdict.groups.append(group)
        verdict.findings.extend(group.findings)
    return verdict


def engine_mismatch(probe: NodeProbe, expected: object) -> list[Finding]:
    """The inventory's engine type against the one the node's agent runs. The manifest records the
    inventory's, and restores and drills start that engine from the inventory's block: a backup of
    a sqlite database recorded as etcd's is restored by no one. A type no engine installed here
    knows is no mistake by itself (a plugin may live on the agent hosts only): only a difference is.
    Compared with the type the agent was configured with, not the engine's own name, which an alias
    or a subclass of another engine shares with that one; an agent too old to say is not compared."""
    if probe.status is None or probe.status.node != probe.node or not isinstance(expected, str):
        return []
    running = probe.status.engine_type
    if running is None or running == expected:
        return []
    return [Finding("critical", probe.node,
                    f"the inventory says its engine is {expected!r}, but its agent runs {running!r}: the backup "
                    f"would be recorded, restored and drilled as {expected}'s", forceable=False,
                    hint=f"set {probe.node}'s engine: type to {running} in the inventory (with that engine's "
                         f"settings), or point {probe.node}'s agent: at the agent that runs its {expected}")]


def split_hint(text: str) -> tuple[str, str | None]:
    """``text`` without the "(hint: ...)" it ends in, and that hint: how the clients say one."""
    head, sep, tail = text.rpartition(" (hint: ")
    if sep and tail.endswith(")") and _balanced(tail[:-1]):
        return head, tail[:-1]
    return text, None


def _balanced(text: str) -> bool:
    """No parenthesis closed that was not opened: else the "(hint: " was mid-text, closed early, as
    in a replication error whose upstream part has a hint and whose downstream part follows."""
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def assess_node(probe: NodeProbe, *, for_backup: bool = False, released_by_prepare: bool = False) -> list[Finding]:
    """``released_by_prepare``: the node's inventory engine block lets its prepare release a hold it
    did not make (QuestDB's force_release), the one case where --force gets past a held engine."""
    node = probe.node
    # None of these but an HTTP error can be forced past: the run's prepare would fail the same
    # way, or back up another node's database under this one's name.
    if probe.unauthorized:
        said, hint = split_hint(probe.error or "")
        fix = (f"give snapctl the token {node}'s agent was started with (auth.token_file, or the node's own "
               "token_file)" if probe.refused == "our token" else f"see {node}'s agent log for why it refuses us")
        return [Finding("critical", node, f"agent refused {probe.refused}: {said}", forceable=False, hint=hint or fix)]
    if probe.not_agent:  # a prepare sent there fails as surely: never forceable
        said, hint = split_hint(probe.error or "")
        return [Finding("critical", node, said, forceable=False, hint=hint)]
    if probe.status is None and probe.http_status is not None:  # it answered: the network is not the problem
        # Forceable: its status alone may be refused (a rate limit is per endpoint: a 429 to the
        # status says nothing of the prepare); a prepare that fails the same way holds nothing.
        said, hint = split_hint(probe.error or "")
        return [Finding("critical", node, f"agent answered HTTP {probe.http_status}: {said}",
                        hint=hint or f"see {node}'s agent log for why it answers {probe.http_status}")]
    if probe.status is None:
        said, hint = split_hint(probe.error or "")
        return [Finding("critical", node, f"agent unreachable: {said}", forceable=False,
                        hint=hint or f"start {node}'s agent, or set {node}'s agent: to the address it listens on "
                                     "(a slow one: raise policy.agent_timeout_s)")]
    if probe.status.node != node:  # its engine is another node's: nothing it says is this node's
        return [Finding("critical", node,
                        f"the agent answers as node {probe.status.node!r}: the inventory points {node} at "
                        "another node's agent", forceable=False,
                        hint=f"set {node}'s agent: to its own agent's address, or node: {node} in that agent's "
                             f"config if it is {node}'s")]
    findings: list[Finding] = []
    add = findings.append
    engine = probe.status.engine
    if not engine.reachable:
        said, hint = split_hint(engine.error or "unreachable")
        add(Finding("critical", node, f"engine {engine.engine} is down: {said}", forceable=False,
                    hint=hint or f"start {node}'s {engine.engine}, or fix the engine: block of its agent's config "
                                 "if it names the wrong one"))
    elif engine.error:  # it answers, but says something is wrong (an etcd alarm, a raft page it cannot read)
        said, hint = split_hint(engine.error)
        add(Finding("degraded", node, f"engine {engine.engine} reports a problem: {said}", hint=hint))
    releasing, busy = engine.details.get("releasing"), engine.details.get("busy")
    if releasing:  # a database frozen past its lease, until the engine answers the agent again
        add(Finding("critical", node, f"engine still held: {releasing}; the agent retries the release",
                    forceable=False, hint=f"see {node}'s agent log for why its engine does not answer the release"))
    elif probe.status.lease is not None:
        # The agent refuses another run's prepare while this lease lasts: forcing cannot help.
        lease = probe.status.lease
        add(Finding("critical" if for_backup else "info", node,
                    f"held by run {lease.run_id} until {lease.expires_at:%H:%M:%S}Z", forceable=False,
                    hint=f"wait for run {lease.run_id} to end, or for its lease to expire (the agent then "
                         "releases the node)" if for_backup else None))
    elif engine.held:
        # The run's prepare is refused as surely, so --force cannot help; critical in status too:
        # nothing tells a hold its holder soon ends from one a killed agent left for ever, and
        # either blocks every backup and the engine's own checkpoints and cleanup while it lasts.
        add(Finding("critical", node, f"{HELD_ELSEWHERE}{engine.held_by or 'someone else'} (not this agent)",
                    forceable=released_by_prepare, hint=held_elsewhere_hint(engine)))
    if unreadable := engine.details.get("unreadable_hold_record"):
        add(Finding("degraded", node, unreadable,
                    hint=f"check {node}'s engine for a hold no run of yours makes, release it by hand, then "
                         "delete that file (docs/agent.md, 'an engine left held')"))
    if busy and engine.details.get("busy_status_query"):  # nothing long by nature: the engine is slow or hung
        add(Finding("critical" if for_backup else "degraded", node,
                    f"engine slow to answer: {busy} (what is shown is from its last answer)"))
    elif busy:  # the engine's figures above are the agent's last, from before this call began
        add(Finding("critical" if for_backup else "info", node, f"engine busy: {busy}"))
    if probe.status.agent_version != __version__:
        add(Finding("info", node, f"agent version {probe.status.agent_version} differs from snapctl {__version__}"))
    return findings


def raft_groups(probes: list[NodeProbe]) -> dict[str, list[tuple[str, RaftGroup]]]:
    """Raft groups across nodes: group name -> [(node, that member's view)], in inventory order."""
    groups: dict[str, list[tuple[str, RaftGroup]]] = {}
    for probe in probes:
        if probe.status is None or probe.status.node != probe.node:  # another node's agent: not this node's view
            continue
        for group in probe.status.engine.raft:
            groups.setdefault(group.group, []).append((probe.node, group))
    return groups


def assess_raft_group(name: str, members: list[tuple[str, RaftGroup]], inventory: Inventory) -> list[Finding]:
    return build_group(name, members, inventory).findings


def build_group(name: str, views: list[tuple[str, RaftGroup]], inventory: Inventory,
                snapshot_age: SnapshotAge | None = None) -> GroupView:
    """The group as a whole from its members' own views, with its findings."""
    own: dict[str, tuple[str, RaftGroup]] = {}
    reported_by: dict[str, list[str]] = {}
    for node, g in views:
        own.setdefault(g.member, (node, g))
        reported_by.setdefault(g.member, []).append(node)
    claimed = sorted({g.member for _, g in views if g.role in _LEADING})
    named = Counter(g.leader for _, g in views if g.leader and g.role not in _LEADING)
    terms = {g.term for _, g in views if g.term is not None}
    # The newest term each named leader is followed in: a leader followed in a newer term than any
    # claimer's leads, and a claimer of an older term is a stale leader (two leaders, not one).
    followed_in: dict[str, int] = {}
    for _, g in views:
        if g.leader and g.role not in _LEADING:
            followed_in[g.leader] = max(followed_in.get(g.leader, -1), g.term if g.term is not None else -1)
    view = GroupView(group=name)
    if claimed:  # a stale leader of an older term can still believe it leads: the newest term wins
        view.leader = max(claimed, key=lambda m: own[m][1].term or -1)
        newest = max(followed_in, key=lambda m: followed_in[m], default=None)
        if newest is not None and newest not in claimed and followed_in[newest] > (own[view.leader][1].term or -1):
            view.leader = newest
    elif named:
        view.leader = named.most_common(1)[0][0]
    leaders = [*claimed, *([view.leader] if claimed and view.leader not in claimed else [])]
    if view.leader in own:
        view.leader_node, view.term = own[view.leader][0], own[view.leader][1].term
    elif terms:
        view.term = max(terms)
    leader_view = own[view.leader][1] if view.leader in own else None

    for member in _member_ids(views):
        view.members.append(_member(member, own.get(member), view.leader, leader_view, views, snapshot_age))
    for node, group in views:
        for p in group.replication:
            if p.error or p.consecutive_errors:
                view.replicators_in_error.append(ReplicatorError(
                    p.peer, node, p.state, p.error or f"{p.consecutive_errors} consecutive errors",
                    p.consecutive_errors, p.error_direction))
    view.findings = _grade_group(view, views, leaders, named, terms, inventory, followed_in)
    for member, nodes in reported_by.items():  # one engine, two agents: one node's database is watched by none
        if len(nodes) > 1:
            # Not forceable: one of those nodes' own database would be in no backup.
            view.findings.insert(0, Finding(
                "critical", f"raft group {name}",
                f"member {member} is reported by {', '.join(nodes)}: their agents watch the same engine",
                forceable=False, hint="point each node's engine: block at its own database"))
    return view


def _member_ids(views: list[tuple[str, RaftGroup]]) -> list[str]:
    """Members with their own view first (in inventory order), then those only seen as peers."""
    ids = [g.member for _, g in views]
    seen = set(ids)
    others = {p for _, g in views for p in [*g.peers, *(r.peer for r in g.replication)]} - seen
    return list(dict.fromkeys(ids)) + sorted(others)


def _member(member: str, mine: tuple[str, RaftGroup] | None, leader: str | None, leader_view: RaftGroup | None,
            views: list[tuple[str, RaftGroup]], snapshot_age: SnapshotAge | None) -> MemberView:
    node, g = mine if mine else (None, None)
    m = MemberView(member=member, node=node, role=g.role if g else ("leader" if member == leader else "unknown"))
    if g is not None:
        m.term, m.commit_index, m.applied_index = g.term, g.commit_index, g.applied_index
        m.last_log_index, m.snapshot_status = g.last_log_index, g.snapshot_status
        m.last_snapshot_index, m.last_snapshot_term = g.last_snapshot_index, g.last_snapshot_term
        if g.snapshot_status in BUSY_SNAPSHOT_STATES:
            known = [a for a in (snapshot_age(node, g) if snapshot_age and node else None,
                                 _number(g.extra.get("snapshot_busy_s"))) if a is not None]
            m.snapshot_busy_s = max(known) if known else None
    if member == leader:
        return m
    from_leader = _progress(leader_view, member)
    if from_leader is not None:
        m.lag_entries, m.replication_state = from_leader.lag_entries, from_leader.state
    elif leader_view is None:  # the leader is not monitored: the worst any member reports
        reported = [p.lag_entries for _, v in views for p in v.replication if p.peer == member and p.lag_entries is not None]
        m.lag_entries = max(reported, default=None)
    if m.lag_entries is None and g is not None and leader_view is not None:
        ahead = _first(leader_view.commit_index, leader_view.last_log_index)
        behind = _first(g.applied_index, g.commit_index, g.last_log_index)
        if ahead is not None and behind is not None:
            m.lag_entries = max(0, ahead - behind)
    # Only the follower's own link to the leader knows its lag in seconds (tarantool's upstream.lag is
    # how far the reporter is behind the peer: the leader's figure is the leader's lag behind it).
    own_link = _progress(g, leader) if leader else None
    m.lag_seconds = own_link.lag_seconds if own_link is not None else None
    return m


def _grade_group(view: GroupView, views: list[tuple[str, RaftGroup]], leaders: list[str], named: Counter,
                 terms: set[int], inventory: Inventory, followed_in: dict[str, int]) -> list[Finding]:
    findings: list[Finding] = []
    subject = f"raft group {view.group}"

    def add(severity: Severity, message: str, hint: str | None = None) -> None:
        findings.append(Finding(severity, subject, message, hint=hint))

    by_id = {m.member: m for m in view.members}
    def term_of(m: str) -> str:  # a leader not monitored: the term its followers follow it in
        own = by_id[m].term
        if own is not None:
            return f"term {own}"
        if by_id[m].node or m not in followed_in:
            return "no term"
        return f"term {followed_in[m]}, as its followers see it"

    if not leaders and not named:
        roles = ", ".join(f"{_who(m)} {m.role}" for m in view.members if m.node)
        unseen = [m.member for m in view.members if m.node is None]
        # Followers with no term name no leader (tarantool without raft elections: the writable
        # instance leads): with members not asked, the leader may well be one of them.
        blind = all(g.role == "follower" and g.leader is None and g.term is None for _, g in views)
        if blind and unseen:
            add("info", f"no leader among the members asked ({roles}); these followers do not name theirs, and "
                f"it may be one only seen by peers: {', '.join(unseen)}")
        elif blind:  # every member asked: none is writable
            add("critical", f"no leader ({roles}): none of them is writable",
                hint="where the writable member leads, as in Tarantool without raft elections, make the master "
                     "writable: box.cfg{read_only = false}, or see why it is read-only in its box.info.status")
        else:
            add("critical", f"no leader ({roles})")
    elif len(leaders) > 1 and not named and all(by_id[m].node and by_id[m].term is None for m in leaders):
        # No term anywhere: no election runs, so these are writable by configuration (Tarantool's
        # read_only = false), not leaders of rival terms. A topology, not a split brain: degraded.
        writers = ", ".join(_who(m) for m in view.members if m.member in leaders)  # in inventory order
        add("degraded", f"master-master replication: {writers} are all writable, "
            "with no leader election; each takes writes the others get only by replication, so each node's snapshot "
            "is cut at its own position and none is sure to hold the others' latest writes: the backup is no "
            "consistent cut of the group",
            hint="for one, make all members but one read-only while it runs, box.cfg{read_only = true}, or let an "
                 "election choose the one writer: box.cfg{election_mode = 'candidate'}, Tarantool 2.6.1 and later")
    elif len(leaders) > 1:
        add("critical", f"{len(leaders)} members claim to lead: "
            + ", ".join(f"{_who(by_id[m])} ({term_of(m)})" for m in leaders))
    elif not leaders and len(named) > 1:
        add("degraded", "members disagree on the leader: " + ", ".join(sorted(named)))
    if len(terms) > 1:
        add("degraded", "members disagree on the term: "
            + ", ".join(f"{_who(m)} {m.term}" for m in view.members if m.term is not None))
    policy = inventory.policy
    for m in view.members:
        if m.role == "candidate":
            add("degraded", f"{_who(m)} is a candidate: an election is under way")
        elif m.role == "error":
            add("degraded", f"{_who(m)} is in the ERROR state and takes no part in the group")
        if m.lag_entries is not None and m.lag_entries > policy.max_follower_lag:
            add("degraded", f"follower {_who(m)} lags {m.lag_entries} entries behind the leader "
                f"(limit {policy.max_follower_lag})")
        if m.snapshot_busy_s is not None and m.snapshot_busy_s > policy.max_snapshot_busy_s:
            add("degraded", f"snapshot {m.snapshot_status} on {_who(m)} for {duration_text(m.snapshot_busy_s)}, "
                f"over the limit of {duration_text(policy.max_snapshot_busy_s)}")
    failing: dict[tuple[str, str], list[ReplicatorError]] = {}
    for error in view.replicators_in_error:
        failing.setdefault((error.peer, error.direction), []).append(error)
    for (peer, direction), errors in failing.items():
        target = by_id.get(peer)
        who = _who(target) if target else peer
        reporters = ", ".join(dict.fromkeys(e.reported_by for e in errors))
        said, hint = split_hint(errors[0].error)  # the agent's words: its hint, if any, at their end
        if direction == "from_peer":  # the reporters are the ones not receiving: name them as the target
            add("degraded", f"replication from {who} to {reporters} failing: {said}", hint)
        else:
            link = "to and from" if direction == "both" else "to"
            add("degraded", f"replication {link} {who} failing: {said} (reported by {reporters})", hint)
    changing = [node for node, g in views if g.conf_changing]
    if changing:
        add("info", f"membership change in progress (reported by {', '.join(changing)})")
    return findings


def _progress(view: RaftGroup | None, peer: str | None) -> ReplicationProgress | None:
    if view is None or peer is None:
        return None
    return next((p for p in view.replication if p.peer == peer), None)


def _who(m: MemberView) -> str:
    return f"{m.member} ({m.node})" if m.node else m.member


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def duration_text(seconds: float) -> str:
    """A duration in the unit that fits it: 250ms, 45s, 15m, 2.5h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
