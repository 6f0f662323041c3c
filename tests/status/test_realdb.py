"""`snapctl status` against a real Tarantool replica set and a real etcd cluster, one agent per
member: kill a member and it is flagged on the next refresh; bring it back and the cluster recovers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from node_agent.engines.base import create_engine
from snapctl.status import ClusterStatus, collect_status
from tests.conftest import free_port
from tests.realdb.etcd import EtcdCluster
from tests.realdb.procs import wait_until
from tests.realdb.tarantool import TarantoolReplicaSet
from tests.status.conftest import load, record_run, write_inventory

pytestmark = pytest.mark.slow


def inventory_for(tmp_path, engines: list[dict]):
    nodes = [{"name": f"m{i + 1}", "agent": "embedded", "engine": engine} for i, engine in enumerate(engines)]
    inventory = load(write_inventory(tmp_path, nodes, policy={"agent_timeout_s": "5s"}))
    record_run(inventory, "r-recent", "succeeded", age_s=60)  # so that the backups are not what we look at
    return inventory


def look(inventory) -> ClusterStatus:
    return asyncio.run(collect_status(inventory))


def problems(status: ClusterStatus) -> list[str]:
    return [str(f) for f in status.verdict.at_least("degraded")]


def wait_healthy(inventory, what: str) -> ClusterStatus:
    last: list[ClusterStatus] = []

    def healthy() -> bool:
        last[:] = [look(inventory)]
        return last[0].verdict.level == "healthy"

    try:
        wait_until(healthy, timeout_s=45, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{what}: still {problems(last[0])}") from exc
    return last[0]


@pytest.fixture
def replica_set(tmp_path_factory) -> Iterator[TarantoolReplicaSet]:
    with TarantoolReplicaSet(tmp_path_factory.mktemp("tt"), size=3) as rs:
        yield rs


@pytest.fixture
def etcd(tmp_path_factory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3) as cluster:
        yield cluster


def test_tarantool_replica_killed_is_flagged_then_recovers(replica_set, tmp_path):
    inventory = inventory_for(tmp_path, [replica_set.engine_settings(i, timeout_s=2.0) for i in range(3)])
    replica_set.write(10)
    replica_set.wait_replicated()
    status = wait_healthy(inventory, "the replica set to look healthy")
    (group,) = status.verdict.groups
    assert (group.leader, group.leader_node) == (replica_set.master.uuid, "m1")
    assert [(m.node, m.role) for m in group.members] == [("m1", "leader"), ("m2", "follower"), ("m3", "follower")]
    assert all(m.lag_entries == 0 for m in group.members[1:])

    killed = replica_set.kill(1)
    status = look(inventory)
    assert ("critical", "m2") in {(f.severity, f.subject) for f in status.verdict.findings}, problems(status)
    dead = next(m for m in status.verdict.groups[0].members if m.member == killed.uuid)
    assert dead.node is None, "the dead member is only seen as its peers' peer"
    assert any(f.subject == "m2" for f in status.preflight), "a backup now would be refused"

    replica_set.restart(1)
    recovered = wait_healthy(inventory, "the replica set to recover")
    assert [m.node for m in recovered.verdict.groups[0].members] == ["m1", "m2", "m3"]


def test_etcd_leader_killed_is_flagged_then_recovers(etcd, tmp_path):
    inventory = inventory_for(tmp_path, [etcd.engine_settings(i, timeout_s=1.0) for i in range(3)])
    etcd.write(50)
    status = wait_healthy(inventory, "the etcd cluster to look healthy")
    (group,) = status.verdict.groups
    leader_index = next(i for i, m in enumerate(group.members) if m.role == "leader")
    assert group.leader_node == f"m{leader_index + 1}" and len({m.term for m in group.members}) == 1
    assert all(m.lag_entries is not None for m in group.members if m.role == "follower")

    etcd.kill(leader_index)
    status = look(inventory)
    flagged = {(f.severity, f.subject) for f in status.verdict.findings}
    assert ("critical", f"m{leader_index + 1}") in flagged, problems(status)
    survivors = [m for m in status.verdict.groups[0].members if m.node]
    assert len(survivors) == 2

    etcd.wait_leader(exclude=etcd.members[leader_index])
    status = look(inventory)
    dead_member = etcd.members[leader_index]
    group = status.verdict.groups[0]
    assert group.leader_node is not None and group.leader_node != f"m{leader_index + 1}"
    assert any(e.state == "unreachable" for e in group.replicators_in_error), "the new leader cannot reach it"
    assert any(f.subject == f"raft group {group.group}" and "failing" in f.message for f in status.verdict.findings)

    etcd.restart(leader_index)
    recovered = wait_healthy(inventory, f"etcd to recover after {dead_member.name} came back")
    assert len({m.term for m in recovered.verdict.groups[0].members}) == 1


def test_an_etcd_alarm_is_one_finding_per_member_saying_what_it_means_not_replication_failing(etcd, tmp_path):
    inventory = inventory_for(tmp_path, [etcd.engine_settings(i, timeout_s=1.0) for i in range(3)])
    wait_healthy(inventory, "the etcd cluster to look healthy")
    member_id = etcd.post("/v3/maintenance/status", {}, member=0)["header"]["member_id"]
    # The alarm etcd raises when the backend reaches --quota-backend-bytes; every member lists it.
    etcd.post("/v3/maintenance/alarm", {"action": "ACTIVATE", "memberID": member_id, "alarm": "NOSPACE"})

    status = look(inventory)
    assert status.verdict.level == "degraded", problems(status)
    said = [(f.severity, f.subject, f.message, f.hint) for f in status.verdict.findings]
    assert [subject for _, subject, _, _ in said] == ["m1", "m2", "m3"], said
    for severity, _, message, hint in said:
        assert severity == "degraded"
        assert message.startswith(f"engine etcd reports a problem: alarm NOSPACE raised for member etcd1 "
                                  f"({etcd.member_id(0)}): ")
        assert message.endswith("refuses every write") and "etcdctl alarm disarm" in hint
    assert status.verdict.groups[0].replicators_in_error == [], "an alarm is no replication failure"

    # What a backup needs still works on a full cluster: prepare saves its snapshot.
    engine = create_engine(etcd.engine_settings(1, backup_dir=str(tmp_path / "backup")), base_dir=tmp_path)
    engine.prepare("run-full")
    engine.complete("run-full")
    assert (tmp_path / "backup" / "run-full.db").is_file()

    etcd.post("/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": member_id, "alarm": "NOSPACE"})
    wait_healthy(inventory, "etcd to look healthy once the alarm is disarmed")


def test_a_replica_whose_upstream_stopped_is_said_to_receive_nothing_not_to_send_nothing(replica_set, tmp_path):
    inventory = inventory_for(tmp_path, [replica_set.engine_settings(i, timeout_s=2.0) for i in range(3)])
    replica_set.write(5)
    replica_set.wait_replicated()
    wait_healthy(inventory, "the replica set to look healthy")
    # m2 refuses every row replicated into items: its appliers stop with that error, as on a conflict.
    replica_set.eval("box.space.items:before_replace(function() if box.session.type() == 'applier' then "
                     "box.error(box.error.PROC_LUA, 'refused by trigger') end end)", inst=1)
    replica_set.write(1)
    master, replica = replica_set.master.uuid, replica_set.instances[1].uuid

    def stopped() -> bool:
        upstream = replica_set.eval("return box.info.replication[1].upstream", inst=1)[0] or {}
        return upstream.get("status") == "stopped"

    wait_until(stopped, timeout_s=10, what="m2's upstream from the master to stop")
    status = look(inventory)
    said = [f.message for f in status.verdict.findings if f.subject.startswith("raft group")]
    hints = [f.hint for f in status.verdict.findings if f.subject.startswith("raft group")]
    assert f"replication from {master} (m1) to m2 failing: upstream stopped: refused by trigger" in said, said
    assert ("fix its cause on the receiving instance, then box.cfg{replication = box.cfg.replication} there "
            "restarts it") in hints, hints
    assert not any(m.startswith(f"replication to {master} (m1)") for m in said), "m1 sends; m2 does not apply"
    assert all(m.startswith(("replication from ", f"replication to {replica} (m2)")) for m in said), said


def test_an_orphan_replica_is_said_to_be_one(replica_set, tmp_path):
    inventory = inventory_for(tmp_path, [replica_set.engine_settings(i, timeout_s=2.0) for i in range(3)])
    wait_healthy(inventory, "the replica set to look healthy")
    # m2 is told to replicate from two peers that are not there and to need both: an orphan, read-only.
    nowhere = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    replica_set.eval("box.cfg{replication_connect_timeout = 0.5, replication_connect_quorum = 2, replication = ...}",
                     nowhere, inst=1)
    assert replica_set.eval("return box.info.status", inst=1) == ["orphan"]

    status = look(inventory)
    said = {f.subject: (f.severity, f.message, f.hint) for f in status.verdict.findings}
    address = f"127.0.0.1:{replica_set.instances[1].port}"
    assert said["m2"] == ("degraded", (f"engine tarantool reports a problem: tarantool at {address} is an orphan: it "
                          "has not connected to replication_connect_quorum of its peers (box.cfg.replication) and "
                          "stays read-only until it does"), ("check that those peers are up and reachable from it, "
                          "and box.info.replication there")), said


def test_a_read_only_master_leaves_no_leader_and_the_finding_says_none_is_writable(replica_set, tmp_path):
    inventory = inventory_for(tmp_path, [replica_set.engine_settings(i, timeout_s=2.0) for i in range(3)])
    wait_healthy(inventory, "the replica set to look healthy")
    replica_set.eval("box.cfg{read_only = true}")
    try:
        status = look(inventory)
    finally:
        replica_set.eval("box.cfg{read_only = false}")
    assert status.verdict.level == "critical"
    (finding,) = [f for f in status.verdict.findings if f.subject.startswith("raft group")]
    assert finding.message.startswith("no leader (") and finding.message.endswith("follower): none of them is writable")
    assert finding.hint == ("where the writable member leads, as in Tarantool without raft elections, make the master "
                            "writable: box.cfg{read_only = false}, or see why it is read-only in its box.info.status")


def test_two_writable_instances_are_said_to_be_master_master_not_two_leaders(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=2) as rs:
        inventory = inventory_for(tmp_path, [rs.engine_settings(i, timeout_s=2.0) for i in range(2)])
        wait_healthy(inventory, "the replica set to look healthy")
        rs.eval("box.cfg{read_only = false}", inst=1)
        # Both take writes, and each gets the other's: master-master, as Tarantool runs it.
        rs.eval("box.space.items:replace{1001, 'written on tt2'}", inst=1)
        rs.write(1)
        wait_until(lambda: rs.eval("return box.space.items:get(1001) ~= nil", inst=0) == [True]
                   and rs.eval("return box.space.items:get(1) ~= nil", inst=1) == [True],
                   timeout_s=10, what="writes on each to reach the other")

        status = look(inventory)
    first, second = rs.instances[0].uuid, rs.instances[1].uuid
    said = [(f.severity, f.message, f.hint) for f in status.verdict.findings]
    assert said == [("degraded", (
        f"master-master replication: {first} (m1), {second} (m2) are all writable, with no leader election; each "
        "takes writes the others get only by replication, so each node's snapshot is cut at its own position and "
        "none is sure to hold the others' latest writes: the backup is no consistent cut of the group"),
        ("for one, make all members but one read-only while it runs, box.cfg{read_only = true}, or let an election "
         "choose the one writer: box.cfg{election_mode = 'candidate'}, Tarantool 2.6.1 and later"))], said
    assert status.verdict.level == "degraded"


def test_a_replica_restarting_and_still_loading_is_said_to_be_loading_by_itself_and_its_peer(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=2) as rs:
        inventory = inventory_for(tmp_path, [rs.engine_settings(i, timeout_s=2.0) for i in range(2)])
        wait_healthy(inventory, "the replica set to look healthy")
        replica = rs.instances[1]
        replica.process.kill()
        # Back with a third peer that is not there: box.cfg{} waits for it, loading, and answers nothing.
        replica.process.argv[4] = f"{rs.master.port},{replica.port},{free_port()}"
        replica.process.env = {"TT_CONNECT_TIMEOUT": "300"}
        replica.process.start()

        def upstream_loading() -> bool:
            return rs.eval("return box.info.replication[2].upstream.status")[0] == "loading"

        wait_until(upstream_loading, timeout_s=30, what="the master to see its peer loading",
                   processes=[replica.process])
        status = look(inventory)
    said = {f.subject: (f.severity, str(f).removeprefix(f"{f.subject}: ")) for f in status.verdict.findings}
    address = f"127.0.0.1:{replica.port}"
    assert said["m2"] == ("critical", f"engine tarantool is down: tarantool at {address} is still loading its data "
                          "(local recovery, or bootstrap waiting for its replication peers): it answers no request "
                          "until it finishes (hint: wait for recovery to finish; check the instance's log "
                          "(box.cfg.log) for its progress or what it waits for)")
    group = said[f"raft group {status.verdict.groups[0].group}"]
    assert group[0] == "degraded"
    assert group[1].startswith(f"replication to and from {replica.uuid} failing: upstream loading: Instance bootstrap "
                               "hasn't finished yet (hint: the peer is still loading its data: wait for its recovery "
                               "to finish, and check its log); downstream stopped: "), group
