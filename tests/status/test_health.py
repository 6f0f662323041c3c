"""The verdict's rules, on members' views as agents report them (no processes needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from node_agent.models import AgentStatus, EngineStatus, LeaseInfo, RaftGroup, ReplicationProgress
from snapctl import __version__
from snapctl.config import parse_inventory
from snapctl.health import NodeProbe, assess, build_group

INVENTORY = parse_inventory("""
cluster: c
provider: {type: local}
policy: {max_follower_lag: 100, max_snapshot_busy_s: 60s}
nodes:
  - {name: a, agent: "http://127.0.0.1:1"}
  - {name: b, agent: "http://127.0.0.1:2"}
  - {name: c, agent: "http://127.0.0.1:3"}
""")


def view(member: str, role: str = "follower", **fields) -> RaftGroup:
    return RaftGroup(group="g", member=member, role=role, **fields)


def messages(group) -> list[tuple[str, str]]:
    """As the text output says them: the message, then the hint."""
    return [(f.severity, f.message + (f" (hint: {f.hint})" if f.hint else "")) for f in group.findings]


def test_two_leaders_is_critical_and_the_newest_term_is_taken_as_leader():
    group = build_group("g", [("a", view("m1", "leader", term=3)), ("b", view("m2", "leader", term=4)),
                              ("c", view("m3", term=4, leader="m2"))], INVENTORY)
    assert (group.leader, group.leader_node, group.term) == ("m2", "b", 4)
    assert ("critical", "2 members claim to lead: m1 (a) (term 3), m2 (b) (term 4)") in messages(group)
    assert ("degraded", "members disagree on the term: m1 (a) 3, m2 (b) 4, m3 (c) 4") in messages(group)


def test_a_stale_leader_of_an_older_term_beside_a_newer_leader_not_monitored_is_two_leaders():
    # m1 was partitioned in term 2 and still believes it leads; m3 follows m2 in term 3, and m2's
    # agent does not answer. Status showed m1 as the leader (term 2) and only "disagree on the term".
    group = build_group("g", [("a", view("m1", "leader", term=2, peers=["m2", "m3"])),
                              ("c", view("m3", term=3, leader="m2", peers=["m1", "m2"]))], INVENTORY)
    assert (group.leader, group.leader_node, group.term) == ("m2", None, 3)
    assert [(m.member, m.role) for m in group.members] == [("m1", "leader"), ("m3", "follower"), ("m2", "leader")]
    assert ("critical", "2 members claim to lead: m1 (a) (term 2), m2 (term 3, as its followers see it)") \
        in messages(group)


def test_a_leader_only_named_by_followers_is_not_a_missing_leader():
    group = build_group("g", [("b", view("m2", term=2, leader="m1", peers=["m1", "m3"])),
                              ("c", view("m3", term=2, leader="m1", peers=["m1", "m2"]))], INVENTORY)
    assert (group.leader, group.leader_node) == ("m1", None)
    assert [(m.member, m.node, m.role) for m in group.members] == [
        ("m2", "b", "follower"), ("m3", "c", "follower"), ("m1", None, "leader")]
    assert messages(group) == []


def test_followers_naming_different_leaders_is_degraded():
    group = build_group("g", [("b", view("m2", leader="m1")), ("c", view("m3", leader="m4")),
                              ("a", view("m5", leader="m1"))], INVENTORY)
    assert group.leader == "m1"
    assert ("degraded", "members disagree on the leader: m1, m4") in messages(group)


def test_lag_from_indexes_when_the_leader_reports_no_replicator():
    group = build_group("g", [("a", view("m1", "leader", commit_index=1000, applied_index=1000)),
                              ("b", view("m2", leader="m1", applied_index=999)),
                              ("c", view("m3", leader="m1", applied_index=700))], INVENTORY)
    assert [m.lag_entries for m in group.members] == [None, 1, 300]
    assert messages(group) == [("degraded", "follower m3 (c) lags 300 entries behind the leader (limit 100)")]


def test_lag_seconds_come_from_the_followers_own_link_to_the_leader():
    group = build_group("g", [
        ("a", view("m1", "leader", replication=[ReplicationProgress(peer="m2", lag_entries=5, lag_seconds=0.0)])),
        ("b", view("m2", leader="m1", replication=[ReplicationProgress(peer="m1", lag_entries=0, lag_seconds=2.5)])),
    ], INVENTORY)
    follower = group.members[1]
    assert (follower.lag_entries, follower.lag_seconds) == (5, 2.5)


def test_a_follower_whose_own_link_to_the_leader_stopped_has_no_lag_in_seconds_from_the_leaders_upstream():
    # Tarantool's upstream.lag is how far the reporter is behind the peer: the leader's figure for a
    # follower is the leader's own lag behind it. A follower with replication off (400 entries behind,
    # its upstream gone) was shown "400 (0.0s)" from the leader's live upstream from it.
    group = build_group("g", [
        ("a", view("m1", "leader", replication=[ReplicationProgress(peer="m3", state="follow/stopped",
                                                                     lag_entries=400, lag_seconds=0.00005)])),
        ("c", view("m3", leader="m1", replication=[ReplicationProgress(peer="m1", state="stopped")])),
    ], INVENTORY)
    follower = group.members[1]
    assert (follower.lag_entries, follower.lag_seconds) == (400, None)


def test_replication_errors_are_one_finding_per_peer_naming_every_reporter():
    broken = ReplicationProgress(peer="m3", state="disconnected", consecutive_errors=1, error="connection refused")
    group = build_group("g", [("a", view("m1", "leader", replication=[broken])),
                              ("b", view("m2", leader="m1", replication=[broken])),
                              ("c", view("m3", leader="m1"))], INVENTORY)
    assert len(group.replicators_in_error) == 2
    assert messages(group) == [("degraded", "replication to m3 (c) failing: connection refused (reported by a, b)")]


def test_an_engine_reported_snapshot_age_counts_and_error_role_and_conf_change_are_reported():
    group = build_group("g", [
        ("a", view("m1", "leader", snapshot_status="LOADING", extra={"snapshot_busy_s": 61}, conf_changing=True)),
        ("b", view("m2", "error", leader="m1")),
    ], INVENTORY)
    assert messages(group) == [
        ("degraded", "snapshot LOADING on m1 (a) for 61s, over the limit of 60s"),
        ("degraded", "m2 (b) is in the ERROR state and takes no part in the group"),
        ("info", "membership change in progress (reported by a)"),
    ]


def probe(node: str, *, lease: bool = False, held_elsewhere: bool = False, version: str = __version__) -> NodeProbe:
    now = datetime.now(UTC)
    status = AgentStatus(
        node=node, agent_version=version,
        engine=EngineStatus(engine="sqlite", reachable=True, held=held_elsewhere or lease, held_by="pg_basebackup"
                            if held_elsewhere else None),
        lease=LeaseInfo(run_id="r1", acquired_at=now, expires_at=now + timedelta(seconds=30)) if lease else None)
    return NodeProbe(node=node, status=status)


def test_a_node_held_by_a_runs_lease_is_critical_only_for_a_backup_and_an_engine_held_elsewhere_always():
    # An engine held by what is not this agent's lease (another tool, or a hold a killed agent left
    # behind) was degraded in status and forceable in the preflight: the hint said "pass --force",
    # and the forced run's prepare was refused all the same (exit 1).
    probes = [probe("a", lease=True), probe("b", held_elsewhere=True), probe("c", version="0.0.9")]
    status_verdict, backup_verdict = assess(INVENTORY, probes), assess(INVENTORY, probes, for_backup=True)
    assert status_verdict.level == "critical"
    assert [(f.severity, f.subject) for f in status_verdict.findings] == [
        ("info", "a"), ("critical", "b"), ("info", "c")]
    assert [(f.subject, f.forceable) for f in backup_verdict.at_least("critical")] == [("a", False), ("b", False)]
    assert "differs from snapctl" in status_verdict.findings[2].message
    held = status_verdict.findings[1]
    assert held.message == "engine already held by pg_basebackup (not this agent)"
    assert "docs/agent.md, 'an engine left held'" in held.hint and "--force" not in held.hint


def test_unreachable_and_unauthorised_agents_are_critical():
    probes = [NodeProbe("a", error="no answer within 2s"), NodeProbe("b", error="wrong token", unauthorized=True)]
    verdict = assess(INVENTORY, probes)
    assert [(f.severity, f.message) for f in verdict.findings] == [
        ("critical", "agent unreachable: no answer within 2s"), ("critical", "agent refused our token: wrong token")]


def test_a_node_pointed_at_another_nodes_agent_is_critical_and_lends_no_raft_view():
    # Reproduced with a real 3-member etcd: inventory node e3 given e1's agent URL showed e3 "ok, etcd
    # up", e1's member as e3's leader, e3's own member "seen by peers only", and no finding; a backup
    # would have held e1 twice and snapshotted e3's volumes with nothing held.
    def answering_as(node: str, member: str, role: str) -> AgentStatus:
        engine = EngineStatus(engine="etcd", reachable=True, raft=[view(member, role, term=2, leader="m1")])
        return AgentStatus(node=node, agent_version=__version__, engine=engine)

    probes = [NodeProbe("a", status=answering_as("a", "m1", "leader")),
              NodeProbe("b", status=answering_as("b", "m2", "follower")),
              NodeProbe("c", status=answering_as("a", "m1", "leader"))]
    for for_backup in (False, True):
        verdict = assess(INVENTORY, probes, for_backup=for_backup)
        assert [(f.severity, f.subject) for f in verdict.at_least("degraded")] == [("critical", "c")]
        assert "the agent answers as node 'a': the inventory points c at another node's agent" in \
            verdict.findings[0].message
        assert [(m.member, m.node) for m in verdict.groups[0].members] == [("m1", "a"), ("m2", "b")]


def test_one_member_reported_by_two_nodes_is_critical_and_stays_with_the_first():
    # Reproduced with a real etcd: e3's engine block given e1's endpoint. e1's member was listed as
    # e3's, e1 vanished from the group, and the verdict was healthy; a backup would have held e1's
    # etcd twice and snapshotted e3's disks with its own etcd never held.
    group = build_group("g", [("a", view("m1", "leader", term=2)), ("b", view("m2", term=2, leader="m1")),
                              ("c", view("m1", "leader", term=2))], INVENTORY)
    assert [(m.member, m.node) for m in group.members] == [("m1", "a"), ("m2", "b")]
    assert messages(group)[0] == ("critical", "member m1 is reported by a, c: their agents watch the same engine "
                                              "(hint: point each node's engine: block at its own database)")


def test_followers_that_name_no_leader_are_no_missing_leader_while_a_member_was_not_asked():
    # Reproduced with a real Tarantool 2.6.0 replica set (no raft elections: the writable instance
    # leads, and followers name no leader): `snapctl status --node m2` on a healthy set said
    # "critical ... no leader (m2 follower)", exit 6.
    follower = view("m2", peers=["m1", "m3"])
    (finding,) = build_group("g", [("b", follower)], INVENTORY).findings
    assert finding.severity == "info" and finding.message.startswith("no leader among the members asked (m2 (b) follower)")
    assert finding.message.endswith("it may be one only seen by peers: m1, m3")
    # Every member asked and none leads, or followers that would name a leader (a term: raft in
    # charge) and name none: still a missing leader.
    everyone = [("a", view("m1", peers=["m2"])), ("b", view("m2", peers=["m1"]))]
    (finding,) = build_group("g", everyone, INVENTORY).findings
    assert finding.severity == "critical"
    assert finding.message == "no leader (m1 (a) follower, m2 (b) follower): none of them is writable"
    assert finding.hint.startswith("where the writable member leads, ") and "box.cfg{read_only = false}" in finding.hint
    assert messages(build_group("g", [("b", view("m2", term=4, peers=["m1", "m3"]))], INVENTORY))[0][0] == "critical"


def test_the_json_document_says_which_way_each_failing_link_runs():
    # A tarantool upstream error is reported by the member not receiving (from_peer): without the
    # direction, a script reading `peer` and `reported_by` would take the sender for the broken end.
    from snapctl.status import ClusterStatus
    from tests.status.conftest import validated

    upstream = ReplicationProgress(peer="m1", state="stopped", error="upstream stopped", error_direction="from_peer")
    downstream = ReplicationProgress(peer="m3", state="disconnected", error="connection refused")
    probes = [NodeProbe(n, status=AgentStatus(node=n, agent_version=__version__, engine=EngineStatus(
        engine="tarantool", reachable=True, raft=[group]))) for n, group in (
        ("a", view("m1", "leader", replication=[downstream])), ("b", view("m2", leader="m1", replication=[upstream])),
        ("c", view("m3", leader="m1")))]
    status = ClusterStatus("c", datetime.now(UTC), probes, assess(INVENTORY, probes), 3600.0)
    [group] = validated(status)["data"]["raft_groups"]
    assert sorted((e["peer"], e["reported_by"], e["direction"]) for e in group["replicators_in_error"]) == [
        ("m1", "b", "from_peer"), ("m3", "a", "to_peer")]


def test_writable_members_with_no_term_are_master_master_degraded_not_two_leaders():
    # Tarantool without elections: every writable instance is a leader of its own view, with no term.
    group = build_group("g", [("a", view("m1", "leader", leader="m1")), ("b", view("m2", "leader", leader="m2")),
                              ("c", view("m3"))], INVENTORY)
    (finding,) = group.findings
    assert finding.severity == "degraded"
    assert finding.message.startswith("master-master replication: m1 (a), m2 (b) are all writable, with no leader "
                                      "election; ")
    # The fix its own field, as for every other finding: JSON readers got it only inside the message.
    assert finding.message.endswith("the backup is no consistent cut of the group") and "hint" not in finding.message
    assert finding.hint.startswith("for one, make all members but one read-only while it runs")


def test_a_leader_with_a_term_beside_one_without_is_two_leaders_and_says_which_has_no_term():
    group = build_group("g", [("a", view("m1", "leader", term=3)), ("b", view("m2", "leader", leader="m2"))],
                        INVENTORY)
    assert ("critical", "2 members claim to lead: m1 (a) (term 3), m2 (b) (no term)") in messages(group)


def test_tarantool_group_findings_give_their_hint_its_own_field_and_the_text_still_ends_in_it():
    # No leader and master-master carried "(hint: ...)" inside the message: a JSON reader found
    # `hint` null and the fix in the message, and the preflight's refusal line (messages only) said it.
    from snapctl.status import ClusterStatus
    from tests.status.conftest import validated

    stopped = ("upstream stopped: refused by trigger (hint: fix its cause on the receiving instance, then "
               "box.cfg{replication = box.cfg.replication} there restarts it)")
    # An upstream hint mid-text, then the downstream's words: no hint of the whole error, left whole.
    both = ("upstream loading: bootstrap not finished (hint: the peer is still loading its data); "
            "downstream stopped: broken pipe (connection reset)")
    links = [ReplicationProgress(peer="m3", error=stopped, error_direction="from_peer"),
             ReplicationProgress(peer="m4", error=both, error_direction="both")]
    probes = [NodeProbe(n, status=AgentStatus(node=n, agent_version=__version__, engine=EngineStatus(
        engine="tarantool", reachable=True, raft=[group]))) for n, group in (
        ("a", view("m1", "leader", leader="m1", replication=links)), ("b", view("m2", "leader", leader="m2")))]
    status = ClusterStatus("c", datetime.now(UTC), probes, assess(INVENTORY, probes), 3600.0)
    [group] = validated(status)["data"]["raft_groups"]
    said = {f["message"].split(":")[0]: (f["message"], f["hint"]) for f in group["findings"]}
    master_master = said["master-master replication"]
    assert master_master[0].endswith("the backup is no consistent cut of the group")
    assert master_master[1].startswith("for one, make all members but one read-only while it runs")
    assert said["replication from m3 to a failing"] == (
        "replication from m3 to a failing: upstream stopped: refused by trigger",
        "fix its cause on the receiving instance, then box.cfg{replication = box.cfg.replication} there restarts it")
    assert said["replication to and from m4 failing"] == (f"replication to and from m4 failing: {both} (reported by a)",
                                                          None)
    # The text output, from str(): the same words as before, the hint last.
    [text] = [str(f) for f in status.verdict.findings if f.message.startswith("master-master")]
    assert text.endswith("the backup is no consistent cut of the group (hint: for one, make all members but one "
                         "read-only while it runs, box.cfg{read_only = true}, or let an election choose the one "
                         "writer: box.cfg{election_mode = 'candidate'}, Tarantool 2.6.1 and later)")
    nobody = build_group("g", [("a", view("m1", peers=["m2"])), ("b", view("m2", peers=["m1"]))], INVENTORY)
    [no_leader] = nobody.findings
    assert no_leader.message.endswith("none of them is writable") and "box.cfg{read_only = false}" in no_leader.hint
