"""Three DingoDB stores serving braft raft_stat pages on loopback, each through its own (embedded)
agent: every region's view is assembled across the stores and each condition flagged correctly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from snapctl.status import SnapshotMemory, collect_status
from tests.fakes.dingodb import FakeDingoStore, Region
from tests.status.conftest import load, validated, write_inventory

HEALTHY, LAGGING, ELECTION, SAVING = 1001, 1002, 1003, 1004
LAG_LIMIT = 1000
BUSY_LIMIT_S = 60.0


@dataclass
class Replicator:
    peer: int  # store index
    next_index: int
    state: str = "idle"
    errors: int = 0


@dataclass
class Member:
    """One store's view of one region, as braft's NodeImpl::describe prints it."""

    state: str = "FOLLOWER"
    term: int = 3
    leader: int | None = 0  # store index; None: no leader known
    applied: int = 9000
    snapshot_status: str = "IDLE"
    last_snapshot_index: int = 8000
    replicators: list[Replicator] = field(default_factory=list)


class BraftStore(FakeDingoStore):
    """A store whose raft_stat pages come from ``views`` (region id -> this store's Member)."""

    def __init__(self, region_ids: tuple[int, ...]) -> None:
        super().__init__(region_ids=region_ids)
        self.views: dict[int, Member] = {}
        self.cluster: list[BraftStore] = []

    def member_id(self) -> str:
        return f"127.0.0.1:{self.raft.port}:0:0"

    def render(self, region: Region) -> str:
        m = self.views[region.region_id]
        ids = [store.member_id() for store in self.cluster]
        lines = [f"[{region.group}]", f"peer_id: {self.member_id()}", f"state: {m.state}", "readonly: 0",
                 f"term: {m.term}", "conf_index: 1", f"peers: {' '.join(ids)}"]
        if m.state == "LEADER":
            lines.append("changing_conf: NO    stage: STAGE_NONE")
        else:
            lines += [f"leader: {ids[m.leader] if m.leader is not None else '0.0.0.0:0:0:0'}", "last_msg_to_now: 40"]
        lines += ["election_timer: timeout(1000ms) STOPPED", "vote_timer: timeout(2000ms) STOPPED",
                  "stepdown_timer: timeout(1000ms) STOPPED", "snapshot_timer: timeout(600000ms) SCHEDULING(in 1ms)",
                  f"storage: [1, {m.applied}]", f"disk_index: {m.applied}", f"known_applied_index: {m.applied}",
                  f"last_log_id: (index={m.applied},term={m.term})",
                  f"state_machine: {'Saving snapshot' if m.snapshot_status == 'SAVING' else 'Idle'}",
                  f"last_committed_index: {m.applied}", f"last_snapshot_index: {m.last_snapshot_index}",
                  f"last_snapshot_term: {m.term}", f"snapshot_status: {m.snapshot_status}"]
        for i, r in enumerate(m.replicators):
            errors = f" consecutive_error_times={r.errors}" if r.errors else ""
            lines.append(f"replicator_{1120986464257 + i}@{ids[r.peer]}: next_index={r.next_index}  "
                         f"flying_append_entries_size=0 {r.state}{errors} hc=8 ac=100 ic=0")
        return "\r\n".join(lines) + "\r\n\r\n"


def leader(applied: int = 9000, term: int = 3, **changes) -> Member:
    return Member(state="LEADER", term=term, leader=None, applied=applied, **changes)


@pytest.fixture
def stores() -> Iterator[list[BraftStore]]:
    regions = (HEALTHY, LAGGING, ELECTION, SAVING)
    cluster = [BraftStore(regions) for _ in range(3)]
    for store in cluster:
        store.cluster = cluster
        store.__enter__()
    s1, s2, s3 = cluster
    # A healthy region: s1 leads, both followers caught up.
    s1.views[HEALTHY] = leader(replicators=[Replicator(1, 9001), Replicator(2, 9001)])
    s2.views[HEALTHY] = s3.views[HEALTHY] = Member(leader=0)
    # s2 leads; its replicator to s3 is blocked 5000 entries back and failing.
    s2.views[LAGGING] = leader(replicators=[Replicator(0, 9001), Replicator(2, 4001, "blocking", errors=7)])
    s1.views[LAGGING] = Member(leader=1)
    s3.views[LAGGING] = Member(leader=1, applied=4000)
    # An election: s3 is a candidate in term 5, the others lost their leader in term 4.
    s1.views[ELECTION] = s2.views[ELECTION] = Member(term=4, leader=None)
    s3.views[ELECTION] = Member(state="CANDIDATE", term=5, leader=None)
    # s1 leads and is SAVING a snapshot.
    s1.views[SAVING] = leader(snapshot_status="SAVING", replicators=[Replicator(1, 9001), Replicator(2, 9001)])
    s2.views[SAVING] = s3.views[SAVING] = Member(leader=0)
    try:
        yield cluster
    finally:
        for store in cluster:
            store.__exit__(None, None, None)


def inventory_for(stores, tmp_path):
    nodes = [{"name": f"store{i + 1}", "agent": "embedded",
              "engine": {"type": "dingodb", "server": s.server.address, "raft": s.raft.address,
                         "data_path": f"store{i + 1}", "timeout_s": 1}}
             for i, s in enumerate(stores)]
    return load(write_inventory(tmp_path, nodes, policy={"max_follower_lag": LAG_LIMIT,
                                                         "max_snapshot_busy_s": f"{BUSY_LIMIT_S:g}s"}))


def findings_of(status, region: int) -> list[tuple[str, str]]:
    group = next(g for g in status.verdict.groups if g.group.endswith(f"_{region}"))
    return [(f.severity, f.message) for f in group.findings]


def group_of(status, region: int):
    return next(g for g in status.verdict.groups if g.group.endswith(f"_{region}"))


def test_each_region_is_assembled_across_stores_and_flagged(stores, tmp_path):
    s1, s2, s3 = stores
    now = [1000.0]
    memory = SnapshotMemory(clock=lambda: now[0])
    inventory = inventory_for(stores, tmp_path)

    status = asyncio.run(collect_status(inventory, memory=memory))

    assert all(p.status and p.status.engine.reachable for p in status.probes)
    healthy = group_of(status, HEALTHY)
    assert findings_of(status, HEALTHY) == []
    assert (healthy.leader, healthy.leader_node, healthy.term) == (s1.member_id(), "store1", 3)
    assert [(m.node, m.role, m.lag_entries) for m in healthy.members] == [
        ("store1", "leader", None), ("store2", "follower", 0), ("store3", "follower", 0)]

    lagging = group_of(status, LAGGING)
    assert lagging.leader_node == "store2"
    by_node = {m.node: m for m in lagging.members}
    assert by_node["store3"].lag_entries == 5000 and by_node["store3"].replication_state == "blocking"
    assert by_node["store1"].lag_entries == 0
    assert [(e.peer, e.reported_by, e.consecutive_errors) for e in lagging.replicators_in_error] == [
        (s3.member_id(), "store2", 7)]
    messages = findings_of(status, LAGGING)
    assert ("degraded", f"follower {s3.member_id()} (store3) lags 5000 entries behind the leader (limit {LAG_LIMIT})") \
        in messages
    assert any(sev == "degraded" and m.startswith(f"replication to {s3.member_id()} (store3) failing: 7 consecutive")
               for sev, m in messages)

    election = group_of(status, ELECTION)
    assert election.leader is None
    messages = findings_of(status, ELECTION)
    assert ("critical", (f"no leader ({s1.member_id()} (store1) follower, {s2.member_id()} (store2) follower, "
                         f"{s3.member_id()} (store3) candidate)")) in messages
    assert ("degraded", f"{s3.member_id()} (store3) is a candidate: an election is under way") in messages
    assert ("degraded", (f"members disagree on the term: {s1.member_id()} (store1) 4, {s2.member_id()} (store2) 4, "
                         f"{s3.member_id()} (store3) 5")) in messages

    saving = group_of(status, SAVING)
    busy = next(m for m in saving.members if m.node == "store1")
    assert (busy.snapshot_status, busy.snapshot_busy_s) == ("SAVING", 0.0)
    assert findings_of(status, SAVING) == [], "just seen SAVING: not stuck (yet)"

    assert status.verdict.level == "critical"
    assert any(f.subject == election_subject(election) for f in status.preflight), "no leader refuses a backup"
    assert not any(f.subject == election_subject(healthy) for f in status.verdict.findings)
    document = validated(status)["data"]
    assert len(document["raft_groups"]) == 4 and document["verdict"]["exit_code"] == 6


def election_subject(group) -> str:
    return f"raft group {group.group}"


def test_a_snapshot_busy_past_the_limit_is_flagged_and_forgotten_once_done(stores, tmp_path):
    s1 = stores[0]
    now = [1000.0]
    memory = SnapshotMemory(clock=lambda: now[0])
    inventory = inventory_for(stores, tmp_path)
    asyncio.run(collect_status(inventory, memory=memory))

    now[0] += BUSY_LIMIT_S + 30
    status = asyncio.run(collect_status(inventory, memory=memory))
    assert ("degraded", f"snapshot SAVING on {s1.member_id()} (store1) for 90s, over the limit of 60s") \
        in findings_of(status, SAVING)

    s1.views[SAVING].snapshot_status, s1.views[SAVING].last_snapshot_index = "IDLE", 9000
    now[0] += 10
    assert findings_of(asyncio.run(collect_status(inventory, memory=memory)), SAVING) == []
    s1.views[SAVING].snapshot_status = "SAVING"  # a new snapshot starts: measured from now, not from the old one
    now[0] += 10
    status = asyncio.run(collect_status(inventory, memory=memory))
    assert next(m for m in group_of(status, SAVING).members if m.node == "store1").snapshot_busy_s == 0.0


def test_group_filter_keeps_matching_groups_and_every_node_finding(stores, tmp_path):
    inventory = inventory_for(stores, tmp_path)
    status = asyncio.run(collect_status(inventory, groups=[f"*_{HEALTHY}"]))
    assert [g.group.rsplit("_", 1)[1] for g in status.verdict.groups] == [str(HEALTHY)]
    assert not any(f.subject.startswith("raft group") for f in status.verdict.findings)
    assert not any(f.subject.startswith("raft group") for f in status.preflight)
    assert status.verdict.level == "degraded"  # only "no successful backup yet" is left

    missing = asyncio.run(collect_status(inventory, groups=["no-such-group"]))
    (finding,) = [f for f in missing.verdict.findings if f.subject == "raft groups"]
    assert finding.severity == "critical" and "no raft group matches --group 'no-such-group'" in finding.message


def test_node_filter_asks_only_those_nodes(stores, tmp_path):
    inventory = inventory_for(stores, tmp_path)
    status = asyncio.run(collect_status(inventory, nodes=["store2"]))
    assert [p.node for p in status.probes] == ["store2"]
    lagging = group_of(status, LAGGING)
    assert [m.node for m in lagging.members] == ["store2", None, None], "the other stores only as peers"
    store3 = next(m for m in lagging.members if m.member == stores[2].member_id())
    # Its replicator is blocking: next_index is no acknowledged position, but store3 has at most
    # what it says, so the leader's own view still gives the lag's floor; the failure is seen too.
    assert (store3.lag_entries, store3.replication_state) == (5000, "blocking")
    assert [e.consecutive_errors for e in lagging.replicators_in_error] == [7]


def test_a_hanging_store_is_an_engine_down_not_a_stalled_status(stores, tmp_path):
    inventory = inventory_for(stores, tmp_path)
    with stores[2].hang():
        status = asyncio.run(collect_status(inventory))
    store3 = next(p for p in status.probes if p.node == "store3")
    assert store3.status is not None and not store3.status.engine.reachable
    assert ("critical", "store3") in {(f.severity, f.subject) for f in status.verdict.findings}


def test_a_raft_stat_page_that_does_not_parse_is_a_degraded_finding_not_a_healthy_store(stores, tmp_path):
    # The store answers, so its engine is up, but none of its regions can be read: a status that
    # listed no problem would hide every region of that store behind "healthy".
    stores[2].views[HEALTHY].term = "soon"  # type: ignore[assignment]: "term: soon" on its page
    status = asyncio.run(collect_status(inventory_for(stores, tmp_path)))
    document = validated(status)
    store3 = next(n for n in document["data"]["nodes"] if n["node"] == "store3")
    assert store3["engine"]["up"] is True and "raft_stat line" in store3["engine"]["error"]
    (finding,) = [f for f in status.verdict.findings if f.subject == "store3"]
    assert finding.severity == "degraded"
    assert finding.message.startswith("engine dingodb reports a problem: raft_stat line ")
    assert "term is not an integer" in finding.message
