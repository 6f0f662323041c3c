"""The etcd adapter against a real 3-member cluster (Debian's etcd 3.4)."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from node_agent.engines.base import create_engine, validate_engine_settings
from node_agent.engines.etcd import EtcdEngine, snapshot_tool
from snapctl.errors import BadInputError, EngineError, ExitCode
from tests.engines_real.conftest import backup_and_restore
from tests.realdb.etcd import EtcdCluster, b64
from tests.realdb.procs import wait_until

pytestmark = pytest.mark.slow


def engine_for(cluster: EtcdCluster, index: int, tmp_path: Path, **overrides: object) -> EtcdEngine:
    overrides.setdefault("backup_dir", str(tmp_path / f"backup-{index}"))
    return create_engine(cluster.engine_settings(index, **overrides), base_dir=tmp_path)


def needs_snapshot_tool() -> None:
    if snapshot_tool(None) is None:
        pytest.skip("neither etcdutl nor etcdctl is installed (Debian: apt-get install etcd-client)")


def test_prepare_saves_a_checked_snapshot_into_the_backup_dir(etcd_cluster, tmp_path):
    etcd_cluster.write(25)
    engine = engine_for(etcd_cluster, 0, tmp_path)
    state = engine.prepare("run-save")
    engine.complete("run-save")
    (saved,) = state.files
    data = Path(saved).read_bytes()
    assert Path(saved) == tmp_path / "backup-0" / "run-save.db"
    assert hashlib.sha256(data[:-32]).digest() == data[-32:], "the sha256 trailer etcdctl snapshot restore checks"
    assert state.facts.exact is False
    assert state.facts.tables["keys"].rows >= 25
    snapshot = state.details["snapshot"]
    assert snapshot["bytes"] == len(data)
    if "revision" in snapshot:  # checked with etcdctl/etcdutl when installed
        assert snapshot["revision"] >= state.facts.position["revision"]
    assert Path(saved).exists(), "complete keeps the saved snapshot: it is the backup"
    assert all(Path(p).is_absolute() for p in engine.data_paths())


def test_a_backup_dir_that_cannot_be_written_is_one_line_saying_so_and_holds_nothing(etcd_cluster, tmp_path):
    (tmp_path / "not-a-dir").write_text("")  # backup_dir set to a file by mistake: root's permissions cannot hide it
    engine = engine_for(etcd_cluster, 0, tmp_path, backup_dir="not-a-dir/backups")
    with pytest.raises(EngineError) as caught:
        engine.prepare("r1")
    partial = tmp_path / "not-a-dir" / "backups" / "r1.db.part"
    assert caught.value.message == f"cannot write etcd snapshot {partial}: not a directory", caught.value
    assert "backup_dir must be writable by the agent" in (caught.value.hint or "")
    assert not engine.status().held


def test_a_configured_snapshot_tool_that_is_not_there_fails_the_prepare_having_saved_nothing(etcd_cluster, tmp_path):
    # It was looked for after the download: the whole backend stayed in backup_dir, unchecked.
    engine = engine_for(etcd_cluster, 0, tmp_path, snapshot_tool=str(tmp_path / "no-such-etcdutl"))
    with pytest.raises(EngineError) as caught:
        engine.prepare("r1")
    assert caught.value.message == f"etcd snapshot_tool {str(tmp_path / 'no-such-etcdutl')!r} not found"
    assert not engine.status().held
    assert [path.name for path in engine.backup_dir.glob("r1.db*")] == []


def test_checking_a_big_snapshot_file_gets_snapshot_timeout_s_not_timeout_s(etcd_cluster, tmp_path):
    needs_snapshot_tool()
    # etcdctl/etcdutl snapshot status reads and hashes the whole backend: seconds per GiB. A wrapper
    # that takes 2 s stands in for a big one.
    slow = tmp_path / "slow-etcdctl"
    slow.write_text(f"#!/bin/sh\nsleep 2\nexec {snapshot_tool(None)} \"$@\"\n")
    slow.chmod(0o755)
    engine = engine_for(etcd_cluster, 0, tmp_path, snapshot_tool=str(slow), timeout_s=1, snapshot_timeout_s=30)
    state = engine.prepare("run-big")
    engine.complete("run-big")
    assert state.details["snapshot"]["checked_with"] == "slow-etcdctl"
    assert Path(state.files[0]).exists()
    engine.restore_prepare(None)  # checks the newest saved file the same way


def test_saved_snapshots_are_readable_by_the_agents_user_alone(etcd_cluster, tmp_path):
    backup_dir = tmp_path / "created" / "backup"
    engine = engine_for(etcd_cluster, 0, tmp_path, backup_dir=str(backup_dir), keep_snapshots=3)
    old_umask = os.umask(0)  # no help from the umask: the modes are the adapter's own
    try:
        state = engine.prepare("run-private")
        engine.complete("run-private")
        (job,) = engine.trigger("snapshot")
        # A .part left behind world-readable (a crash mid-download) must not pass its mode on.
        (backup_dir / "run-stale.db.part").write_bytes(b"left over")
        (backup_dir / "run-stale.db.part").chmod(0o644)
        stale = engine.prepare("run-stale")
        engine.complete("run-stale")
    finally:
        os.umask(old_umask)
    assert job.status == "succeeded"
    for saved in (state.files[0], job.extra["file"], stale.files[0]):
        assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600, saved
    for created in (backup_dir, backup_dir.parent):
        assert stat.S_IMODE(created.stat().st_mode) == 0o700, created


def test_every_member_agrees_on_one_leader_and_term(etcd_cluster, tmp_path):
    groups = [engine_for(etcd_cluster, i, tmp_path).status().raft[0] for i in range(3)]
    assert len({g.group for g in groups}) == 1
    assert len({g.member for g in groups}) == 3
    assert [g.role for g in groups].count("leader") == 1
    leader = next(g for g in groups if g.role == "leader")
    assert all(g.leader == leader.member for g in groups)
    assert all(g.term == leader.term and g.commit_index and g.applied_index for g in groups)
    for g in groups:
        assert len(g.peers) == 2 and all(p.error is None and p.match_index for p in g.replication)


def test_status_shows_a_killed_follower_and_its_return(etcd_cluster, tmp_path):
    leader = etcd_cluster.wait_leader()
    victim_index = next(i for i, m in enumerate(etcd_cluster.members) if m is not leader)
    victim_id = etcd_cluster.member_id(victim_index)
    observer = engine_for(etcd_cluster, etcd_cluster.members.index(leader), tmp_path)
    etcd_cluster.kill(victim_index)
    try:
        (group,) = observer.status().raft
        seen = next(p for p in group.replication if p.peer == victim_id)
        assert seen.state == "unreachable" and seen.error and seen.consecutive_errors == 1
        assert group.role == "leader", "two of three members keep the quorum"
        dead = engine_for(etcd_cluster, victim_index, tmp_path).status()
        assert not dead.reachable and dead.error
    finally:
        etcd_cluster.restart(victim_index)
    (group,) = observer.status().raft
    assert next(p for p in group.replication if p.peer == victim_id).error is None


def test_a_killed_leader_is_replaced_and_status_follows(etcd_cluster, tmp_path):
    leader = etcd_cluster.wait_leader()
    old_index = etcd_cluster.members.index(leader)
    survivor_index = (old_index + 1) % 3
    survivor = engine_for(etcd_cluster, survivor_index, tmp_path)
    before = survivor.status().raft[0]
    etcd_cluster.kill(old_index)
    try:
        etcd_cluster.wait_leader(exclude=leader)
        wait_until(lambda: survivor.status().raft[0].leader not in (None, before.leader), timeout_s=10,
                   what="the survivor sees the new leader")
        after = survivor.status().raft[0]
        assert after.term > before.term
        with pytest.raises(EngineError):
            engine_for(etcd_cluster, old_index, tmp_path).prepare("run-dead")
        etcd_cluster.write(3)  # the cluster still takes writes
    finally:
        etcd_cluster.restart(old_index)


# The leader killed as a follower's agent prepares: etcd aborted the prepare's linearizable range
# with "etcdserver: leader changed", and the backup failed with that, no hint, though a new leader
# was elected within a second and nothing was wrong with the member.
def test_a_leader_killed_during_prepare_is_waited_out_not_a_failed_prepare(etcd_cluster, tmp_path):
    etcd_cluster.write(2000)
    leader = etcd_cluster.wait_leader()
    old_index = etcd_cluster.members.index(leader)
    follower_index = (old_index + 1) % 3
    engine = engine_for(etcd_cluster, follower_index, tmp_path)
    killer = threading.Thread(target=etcd_cluster.kill, args=(old_index,))
    killer.start()  # as the prepare starts: its status still sees the old leader, its range does not
    try:
        state = engine.prepare("run-election")
        killer.join()
        assert state.facts.tables["keys"].rows >= 2000
        assert state.raft[0].member == etcd_cluster.member_id(follower_index)
        engine.complete("run-election")
    finally:
        killer.join()
        etcd_cluster.restart(old_index)


def test_a_member_without_quorum_fails_prepare_at_once_saying_there_is_no_leader(tmp_path):
    with EtcdCluster(tmp_path / "no-quorum", size=3) as cluster:
        engine = engine_for(cluster, 0, tmp_path, timeout_s=30)  # far above the bound below: no race with it
        others = [m.process.pid for m in cluster.members[1:]]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: not engine.status().raft[0].leader, timeout_s=15, what="the leader is lost")
            started = time.monotonic()
            with pytest.raises(EngineError, match="has no leader") as caught:
                engine.prepare("run-no-quorum")
            assert time.monotonic() - started < 15, "it did not wait timeout_s for a leader"
            assert "majority of members" in (caught.value.hint or "")
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)


def test_a_stopped_peer_holds_a_members_status_for_two_seconds_not_timeout_s(tmp_path):
    # Each agent asks the other members for their status: one stopped member held every agent's
    # status for timeout_s, and snapctl status (policy.agent_timeout_s) called all three unreachable.
    with EtcdCluster(tmp_path / "stopped-peer", size=3) as cluster:
        engine = engine_for(cluster, 0, tmp_path, timeout_s=5)
        stopped = cluster.members[2].process.pid
        os.kill(stopped, signal.SIGSTOP)
        try:
            status = engine.status()
        finally:
            os.kill(stopped, signal.SIGCONT)
    [group] = status.raft
    assert status.reachable
    unreachable = [p for p in group.replication if p.state == "unreachable"]
    assert len(unreachable) == 1 and "within 2s" in unreachable[0].error, group.replication


def test_old_saved_snapshots_are_pruned(etcd_cluster, tmp_path):
    engine = engine_for(etcd_cluster, 1, tmp_path, keep_snapshots=2)
    for run in ("run-p1", "run-p2", "run-p3"):
        engine.prepare(run)
        engine.complete(run)
    (job,) = engine.trigger("snapshot")
    assert job.status == "succeeded"
    kept = sorted(p.name for p in (tmp_path / "backup-1").iterdir())
    assert kept == sorted(["run-p3.db", Path(job.extra["file"]).name])


def test_what_a_download_cut_short_left_is_removed_by_the_next_prepare_and_trigger(etcd_cluster, tmp_path):
    # An agent killed mid-download (SIGKILL, the OOM killer) leaves <run>.db.part: up to the whole
    # backend, which the pruning of *.db never matched, so every later disk snapshot copied it.
    engine = engine_for(etcd_cluster, 1, tmp_path, keep_snapshots=5)
    backup_dir = tmp_path / "backup-1"
    backup_dir.mkdir(mode=0o700)
    (backup_dir / "run-killed.db.part").write_bytes(b"\0" * 32768)
    engine.prepare("run-next")
    engine.complete("run-next")
    assert sorted(p.name for p in backup_dir.iterdir()) == ["run-next.db"]
    (backup_dir / "manual-20260101T000000000000Z.db.part").write_bytes(b"\0" * 32768)
    (job,) = engine.trigger("snapshot")
    assert job.status == "succeeded"
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted(["run-next.db", Path(job.extra["file"]).name])


def test_a_trigger_during_a_hold_is_refused_and_the_held_runs_snapshot_stays(etcd_cluster, tmp_path):
    engine = engine_for(etcd_cluster, 1, tmp_path, keep_snapshots=2)
    held = Path(engine.prepare("held1").files[0])
    try:
        jobs = [engine.trigger(target) for target in (None, "snapshot", "defragment")]
        assert held.exists(), "the held run's disk snapshot must find its saved snapshot"
    finally:
        engine.complete("held1")
    for (job,) in jobs:
        assert job.status == "failed" and "held by run held1" in job.detail and "after complete" in job.detail
    assert sorted(p.name for p in held.parent.iterdir()) == ["held1.db"], "nothing saved during the hold"
    (after,) = engine.trigger("snapshot")
    assert after.status == "succeeded" and held.exists()


def test_trigger_defragments_and_rejects_unknown_targets(etcd_cluster, tmp_path):
    engine = engine_for(etcd_cluster, 2, tmp_path)
    (job,) = engine.trigger("defragment")
    assert job.status == "succeeded"
    with pytest.raises(BadInputError, match="unknown trigger target"):
        engine.trigger("compact-everything")


def test_backup_with_the_local_provider_restores_and_verifies(etcd_cluster, tmp_path):
    needs_snapshot_tool()
    etcd_cluster.write(40)
    engine = engine_for(etcd_cluster, 0, tmp_path)
    (tmp_path / "backup-0").mkdir()  # the node's backup volume
    state, restored = backup_and_restore(engine, "run-restore", tmp_path / "backup-0", tmp_path / "node")
    target = EtcdCluster(tmp_path / "restored", size=1)  # not started: its data dir comes from the snapshot
    member = target.members[0]
    restore = {"name": member.name, "initial_cluster": target.initial_cluster,
               "initial_advertise_peer_urls": member.peer_url, "initial_cluster_token": target.token}
    restorer = create_engine(target.engine_settings(0, backup_dir=str(restored), restore=restore), base_dir=tmp_path)
    restorer.restore_prepare(None)
    assert (member.data_dir / "member" / "snap" / "db").exists()
    with target:
        facts = restorer.verify()
        assert target.post("/v3/kv/range", {"key": b64("snapctl-test/00000001")})["kvs"], "old data is there"
    assert facts.tables["keys"].rows >= state.facts.tables["keys"].rows
    assert facts.position["revision"] >= state.facts.position["revision"]


def test_auth_uses_a_token_and_a_bad_password_is_reported_without_it(tmp_path):
    secret = "etcd-root-secret"
    with EtcdCluster(tmp_path / "auth", size=1) as single:
        single.post("/v3/auth/user/add", {"name": "root", "password": secret})
        single.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        single.post("/v3/auth/enable", {})
        good, bad = tmp_path / "good.password", tmp_path / "bad.password"
        good.write_text(secret + "\n")
        bad.write_text("wrong-" + secret + "\n")
        no_auth = engine_for(single, 0, tmp_path)
        with pytest.raises(EngineError, match="user name is empty"):
            no_auth.verify()
        engine = engine_for(single, 0, tmp_path, user="root", password_file=str(good))
        assert engine.status().reachable
        assert engine.prepare("run-auth").files
        engine.complete("run-auth")
        # Turning auth off and on drops every token etcd handed out, the adapter's included.
        login = single.post("/v3/auth/authenticate", {"name": "root", "password": secret})
        httpx.post(single.members[0].endpoint + "/v3/auth/disable", json={},
                   headers={"Authorization": login["token"]}, timeout=5).raise_for_status()
        single.post("/v3/auth/enable", {})
        assert engine.verify().position["revision"] > 0, "the adapter logs in again"
        wrong = engine_for(single, 0, tmp_path, user="root", password_file=str(bad)).status()
        assert not wrong.reachable and "authentication failed" in wrong.error
        assert secret not in wrong.error


def test_a_trigger_after_the_auth_token_expired_logs_in_again(tmp_path):
    cluster = EtcdCluster(tmp_path / "ttl", size=1)
    cluster.members[0].process.argv += ["--auth-token-ttl", "1"]  # etcd drops a token unused this long (300 s)
    with cluster:
        cluster.post("/v3/auth/user/add", {"name": "root", "password": "ttl-secret"})
        cluster.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        cluster.post("/v3/auth/enable", {})
        (tmp_path / "root.password").write_text("ttl-secret\n")
        engine = engine_for(cluster, 0, tmp_path, user="root", password_file=str(tmp_path / "root.password"))
        assert engine.status().reachable  # logged in
        time.sleep(2.5)  # the token expires unused (etcd checks every second or so)
        (job,) = engine.trigger("snapshot")  # the first call since: the snapshot stream
        assert job.status == "succeeded", job.detail


@pytest.fixture
def auth_on(tmp_path):
    """One member with auth on: root; backup, with the root role (what prepare needs: etcd serves
    snapshots to root only); reader, who may read every key. Passwords in tmp_path/<user>.password."""
    with EtcdCluster(tmp_path / "auth-on", size=1) as single:
        single.write(3)
        single.post("/v3/auth/role/add", {"name": "read-all"})
        single.post("/v3/auth/role/grant", {"name": "read-all", "perm": {"permType": "READ", "key": b64(b"\0"),
                                                                          "range_end": b64(b"\0")}})
        for user, role in (("root", "root"), ("backup", "root"), ("reader", "read-all")):
            single.post("/v3/auth/user/add", {"name": user, "password": f"{user}-secret"})
            single.post("/v3/auth/user/grant", {"user": user, "role": role})
            (tmp_path / f"{user}.password").write_text(f"{user}-secret\n")
        single.post("/v3/auth/enable", {})
        yield single


def as_root(cluster: EtcdCluster, path: str, body: dict) -> None:
    login = cluster.post("/v3/auth/authenticate", {"name": "root", "password": "root-secret"})
    httpx.post(cluster.members[0].endpoint + path, json=body, headers={"Authorization": login["token"]},
               timeout=5).raise_for_status()


def test_with_auth_on_and_no_user_the_engine_is_not_ready_and_prepare_says_what_to_configure(auth_on, tmp_path):
    engine = engine_for(auth_on, 0, tmp_path)
    status = engine.status()
    assert not status.reachable, "etcd refuses what prepare asks: a backup would fail there"
    assert "no user is configured" in status.error and "user name is empty" in status.error
    assert "user:" in status.error and "password_file:" in status.error, "the hint says what to configure"
    assert status.raft and status.raft[0].role == "leader", "the member itself is fine, and still shown"
    with pytest.raises(EngineError, match="user name is empty") as refused:
        engine.prepare("run-no-user")
    assert "user:" in refused.value.hint and "password_file:" in refused.value.hint


def test_with_auth_on_and_no_user_a_dry_run_refuses_the_backup(auth_on, tmp_path):
    settings = auth_on.engine_settings(0)
    del settings["data_dir"]  # not on the node's volume: the preflight would refuse for that alone
    Path(settings["backup_dir"]).mkdir(parents=True)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "cluster": "etcd-auth", "provider": {"type": "local", "store": "store"}, "catalog": {"path": "catalog"},
        "nodes": [{"name": "etcd1", "agent": "embedded", "engine": settings,
                   "volumes": [{"name": "backup", "path": settings["backup_dir"]}]}]}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    dry_run = subprocess.run([sys.executable, "-m", "snapctl.cli", "backup", "--dry-run", "-i", str(inventory)],
                             capture_output=True, text=True, timeout=120, env=env)
    assert dry_run.returncode == ExitCode.PREFLIGHT_REFUSED, dry_run.stdout + dry_run.stderr
    said = " ".join((dry_run.stdout + dry_run.stderr).split())
    assert "no user is configured" in said and "password_file:" in said, said


def test_a_user_with_the_root_role_passes_and_one_without_is_not_ready(auth_on, tmp_path):
    backup = engine_for(auth_on, 0, tmp_path, user="backup", password_file=str(tmp_path / "backup.password"))
    status = backup.status()
    assert status.reachable and status.error is None
    assert backup.prepare("run-backup-user").files
    backup.complete("run-backup-user")

    reader = engine_for(auth_on, 0, tmp_path, user="reader", password_file=str(tmp_path / "reader.password"))
    status = reader.status()
    assert not status.reachable and "root role" in status.error
    assert "etcdctl user grant-role reader root" in status.error, "the hint says what to grant"
    with pytest.raises(EngineError, match="permission denied") as refused:
        reader.prepare("run-reader")
    assert "etcdctl user grant-role reader root" in refused.value.hint

    # The role taken away after a status saw it: prepare says what is missing, the next status looks again.
    as_root(auth_on, "/v3/auth/user/grant", {"user": "backup", "role": "read-all"})
    as_root(auth_on, "/v3/auth/user/revoke", {"name": "backup", "role": "root"})
    with pytest.raises(EngineError, match="permission denied") as refused:
        backup.prepare("run-revoked")
    assert "etcdctl user grant-role backup root" in refused.value.hint
    status = backup.status()
    assert not status.reachable and "etcdctl user grant-role backup root" in status.error


def test_settings_are_validated():
    with pytest.raises(BadInputError, match="backup_dir"):
        validate_engine_settings({"type": "etcd", "endpoint": "http://127.0.0.1:2379"})
    with pytest.raises(BadInputError, match="needs a user"):
        validate_engine_settings({"type": "etcd", "backup_dir": "/b", "password_env": "ETCD_PW"})


def test_a_learner_member_is_shown_as_one_and_its_backup_refused_saying_why(tmp_path):
    # etcd 3.4 serves a learner's clients Status and serializable ranges, and refuses the rest ("rpc
    # not supported for learner"): its member list and its snapshot among them.
    with EtcdCluster(tmp_path / "etcd", size=1) as cluster:
        cluster.write(7)
        learner = cluster.add_member(start=False)
        (link,) = engine_for(cluster, 0, tmp_path).status().raft[0].replication
        assert (link.state, link.error) == ("not started", "learner added but not started (no client url yet)")
        learner.process.start()
        cluster.wait_ready(learner)
        engine = engine_for(cluster, 1, tmp_path)
        member = cluster.member_id(learner)

        status = engine.status()
        (group,) = status.raft
        assert (group.role, group.member, group.leader) == ("learner", member, cluster.member_id(0))
        assert not status.reachable, "a backup of this node would fail: preflight must refuse it"
        assert status.error == (
            f"etcd at {learner.endpoint} is a learner member ({member}), and this etcd ({status.version}) serves a "
            "learner's clients neither the member list nor a snapshot: a backup of this node would fail (hint: "
            f"promote it once it has caught up (etcdctl member promote {member}), or point this node's engine at a "
            "voting member)")
        with pytest.raises(EngineError, match="is a learner member"):
            engine.prepare("run-learner")
        assert not engine.status().held and list((tmp_path / "backup-1").glob("*")) == []
        wait_until(lambda: engine.verify().tables["keys"].rows >= 7, timeout_s=10, what="the learner to catch up")

        # Promoted, it is a voting member like any other: status and prepare work.
        cluster.post("/v3/cluster/member/promote", {"ID": str(int(member, 16))})
        assert engine.status().reachable and engine.status().raft[0].role == "follower"
        state = engine.prepare("run-promoted")
        engine.complete("run-promoted")
        assert Path(state.files[0]).is_file() and state.facts.tables["keys"].rows >= 7


def test_a_voting_member_added_but_not_started_is_said_to_cost_the_cluster_a_tolerated_failure(tmp_path):
    with EtcdCluster(tmp_path / "etcd", size=3) as cluster:
        added = cluster.add_member(learner=False, start=False)
        links = engine_for(cluster, 0, tmp_path).status().raft[0].replication
        (link,) = [p for p in links if p.state == "not started"]
        assert link.error == (
            "member added but not started (no client url yet): it counts toward the quorum, so the cluster tolerates "
            "one failed member fewer until it joins (hint: start it with --initial-cluster-state existing, or "
            "etcdctl member remove it)")
        assert link.peer not in {cluster.member_id(i) for i in range(3)} and added.name == "etcd4"
