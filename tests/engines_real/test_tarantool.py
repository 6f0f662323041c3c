"""The Tarantool adapter against a real 3-instance replica set (Debian's tarantool 2.6.0)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from node_agent.engines.base import create_engine, validate_engine_settings
from node_agent.engines.tarantool import TarantoolEngine, TarantoolSettings
from node_agent.engines.tarantool_info import raft_group
from node_agent.engines.tarantool_lua import PREPARE_LUA, RELEASE_LUA
from node_agent.service import AgentService
from snapctl.errors import BadInputError, EngineBusy, EngineError
from tests.engines_real.conftest import backup_and_restore
from tests.realdb.procs import wait_until
from tests.realdb.tarantool import PASSWORD, TarantoolReplicaSet

pytestmark = pytest.mark.slow


def engine_for(rs: TarantoolReplicaSet, index: int, tmp_path: Path, **overrides: object) -> TarantoolEngine:
    return create_engine(rs.engine_settings(index, **overrides), base_dir=tmp_path)


def pinned(rs: TarantoolReplicaSet, index: int = 0) -> bool:
    lua = ("for _, c in ipairs(box.info.gc().checkpoints) do for _, r in ipairs(c.references) do "
           "if r == 'backup' then return true end end end return false")
    return rs.eval(lua, inst=index)[0]


def test_prepare_pins_a_fresh_checkpoint_and_records_the_evidence(replica_set, tmp_path):
    replica_set.write(20)
    engine = engine_for(replica_set, 0, tmp_path)
    state = engine.prepare("run-pin")
    try:
        assert pinned(replica_set)
        work_dir = replica_set.master.work_dir.resolve()
        assert any(f.endswith(".snap") for f in state.files)
        assert any(f.endswith(".run") for f in state.files), "the vinyl space's run files are part of the checkpoint"
        for f in state.files:
            assert Path(f).is_absolute() and Path(f).is_relative_to(work_dir) and Path(f).exists()
        assert state.facts.exact is False
        assert state.facts.tables["items"].rows >= 20 and state.facts.tables["vitems"].rows >= 20
        position = state.facts.position
        assert position["checkpoint_signature"] == position["signature"], "the checkpoint was taken at prepare"
        assert position["vclock"] and position["lsn"] > 0
        (group,) = state.raft
        assert group.role == "leader" and group.leader == group.member
        assert len(group.peers) == 2 and all(p.state == "follow" for p in group.replication)
    finally:
        engine.complete("run-pin")
    assert not pinned(replica_set)


def test_pinned_checkpoint_outlives_garbage_collection_until_complete(replica_set, tmp_path):
    engine = engine_for(replica_set, 0, tmp_path)
    state = engine.prepare("run-gc")
    snap = next(Path(f) for f in state.files if f.endswith(".snap"))
    try:
        for _ in range(3):  # checkpoint_count=2: without the pin this .snap would be collected
            replica_set.write(1)
            replica_set.eval("box.snapshot()")
        assert snap.exists()
    finally:
        engine.complete("run-gc")
    replica_set.write(1)
    replica_set.eval("box.snapshot()")
    assert not snap.exists(), "after complete the checkpoint is collected as usual"


def test_a_backup_started_by_another_tool_is_busy_and_left_alone(replica_set, tmp_path):
    replica_set.eval("box.backup.start()")
    replica_set.write(1)
    newest = "return box.info.gc().checkpoints[#box.info.gc().checkpoints].signature"
    before = replica_set.eval(newest)[0]
    engine = engine_for(replica_set, 0, tmp_path)
    try:
        with pytest.raises(EngineBusy, match="backup is already in progress"):
            engine.prepare("run-other-tool")
        assert replica_set.eval(newest)[0] == before, "no checkpoint written (minutes on a big instance) for nothing"
        status = engine.status()
        assert status.held and "another backup tool" in (status.held_by or "")
        engine.complete("run-other-tool")
        assert pinned(replica_set), "complete never releases a pin this adapter did not make"
    finally:
        replica_set.eval("box.backup.stop()")


def test_a_restarted_agent_repeats_its_prepare_and_refuses_other_runs(replica_set, tmp_path):
    first = engine_for(replica_set, 0, tmp_path)
    first.prepare("run-a")
    restarted = engine_for(replica_set, 0, tmp_path)  # no memory of run-a
    try:
        with pytest.raises(EngineBusy, match="run-a") as busy:
            restarted.prepare("run-b")
        assert busy.value.holder == "run-a"  # the 409's holder
        assert "box.backup.stop()" in busy.value.hint  # for a pin no agent holds any more
        again = restarted.prepare("run-a")
        assert again.files and pinned(replica_set)
        assert restarted.status().held_by is None
    finally:
        restarted.complete("run-a")
    assert not pinned(replica_set)
    first.complete("run-a")  # the old agent's late complete is harmless


def test_prepare_fails_and_releases_when_checkpoint_files_lie_outside_the_data_paths(replica_set, tmp_path):
    elsewhere = tmp_path / "not-the-data"
    elsewhere.mkdir()
    engine = engine_for(replica_set, 0, tmp_path, work_dir=None, data_paths=[str(elsewhere)])
    with pytest.raises(EngineError, match="outside the data paths"):
        engine.prepare("run-outside")
    assert not pinned(replica_set)
    assert not engine.status().held


SLOW_CHECKPOINT = ("for i = 1, 2000 do box.space.items:replace{i, require('digest').urandom(1000)} end "
                   "box.cfg{snap_io_rate_limit = 1}")  # ~2 MB at 1 MB/s: box.snapshot() takes ~2 s


def checkpoint_done(rs: TarantoolReplicaSet) -> bool:
    return not rs.eval("return box.info.gc().checkpoint_is_in_progress")[0]


def test_a_snapshot_already_running_makes_prepare_and_trigger_wait_for_it(tmp_path):
    with TarantoolReplicaSet(tmp_path / "slow", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        single.eval("require('fiber').create(function() box.snapshot() end)")  # the checkpoint daemon's
        engine = create_engine(single.engine_settings(), base_dir=tmp_path)
        single.eval("box.cfg{snap_io_rate_limit = 4}")  # ours then takes ~0.5 s
        state = engine.prepare("run-busy")  # not "busy" at once: the daemon's checkpoint is minutes at worst
        try:
            assert state.details["snapshot_taken"] and pinned(single)
            position = state.facts.position
            assert position["checkpoint_signature"] == position["signature"]
        finally:
            engine.complete("run-busy")
        single.eval("box.cfg{snap_io_rate_limit = 1} require('fiber').create(function() box.snapshot() end)")
        (job,) = engine.trigger(None)
        assert job.status == "succeeded", job.detail
        assert not engine.status().held


def test_a_snapshot_running_past_snapshot_timeout_s_makes_prepare_busy(tmp_path):
    with TarantoolReplicaSet(tmp_path / "slow-busy", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        single.eval("require('fiber').create(function() box.snapshot() end)")
        engine = create_engine(single.engine_settings(snapshot_timeout_s=1), base_dir=tmp_path)
        with pytest.raises(EngineBusy, match=r"snapshot is already in progress \(waited 0.9s for it\)"):
            engine.prepare("run-busy")
        wait_until(lambda: checkpoint_done(single), timeout_s=30, what="the checkpoint")
        assert not pinned(single)


def test_a_prepare_that_timed_out_never_pins_once_its_snapshot_finishes(tmp_path):
    with TarantoolReplicaSet(tmp_path / "late", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        engine = create_engine(single.engine_settings(snapshot_timeout_s=0.5), base_dir=tmp_path)
        with pytest.raises(EngineError, match=r"no answer to box.snapshot\(\) and box.backup.start\(\) within 0.5s"):
            engine.prepare("run-late")
        # Nobody completes run-late: the server's box.snapshot() goes on, past snapshot_timeout_s.
        wait_until(lambda: checkpoint_done(single), timeout_s=30, what="the checkpoint")
        assert not pinned(single), "a pin made once its agent stopped waiting would never be released"
        single.eval("box.cfg{snap_io_rate_limit = 1000}")
        other = create_engine(single.engine_settings(), base_dir=tmp_path)
        other.prepare("run-next")
        other.complete("run-next")
        assert engine.complete("run-late") is None and not pinned(single)


def test_a_prepare_the_agent_gave_up_on_never_pins_after_its_complete(tmp_path):
    with TarantoolReplicaSet(tmp_path / "late-agent", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        service = AgentService("t1", create_engine(single.engine_settings(snapshot_timeout_s=0.5), base_dir=tmp_path))
        try:
            with pytest.raises(EngineError, match="no answer to box.snapshot"):
                service.prepare("run-late", 2)  # the agent completes the failed prepare at once
            wait_until(lambda: checkpoint_done(single), timeout_s=30, what="the checkpoint")
            time.sleep(2.5)  # past the 2 s lease a prepare would have had: nothing holds or watches it
            assert service.lease is None and not pinned(single)
            single.eval("box.cfg{snap_io_rate_limit = 1000}")
            assert service.prepare("run-next", 5).lease.run_id == "run-next"
            assert service.complete("run-next").released
            assert not pinned(single)
        finally:
            service.close()


def test_a_released_prepare_attempt_never_pins_though_its_budget_has_not_run_out(tmp_path):
    with TarantoolReplicaSet(tmp_path / "cancelled", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        with single.evaluating(PREPARE_LUA, "run-x", True, "attempt-1", 60, 60) as answers:
            wait_until(lambda: not checkpoint_done(single), timeout_s=10, what="the checkpoint to start")
            # What the agent's complete sends for a prepare whose answer never came.
            assert single.eval(RELEASE_LUA, "run-x", "attempt-1")[0] == {"released": False}
        assert answers == [{"given_up": True}] and not pinned(single)
        # The next attempt of the same run is another one: it pins.
        single.eval("box.cfg{snap_io_rate_limit = 1000}")
        assert "files" in single.eval(PREPARE_LUA, "run-x", True, "attempt-2", 60, 60)[0] and pinned(single)
        assert single.eval(RELEASE_LUA, "run-x", None)[0]["released"] and not pinned(single)


class PasswordRotatedMidPrepare(TarantoolEngine):
    """The password changes between prepare's call and its release: the release cannot log in."""

    rotate = True

    def _outside_data_paths(self, files: list[str]) -> list[str]:
        if self.rotate:
            self.rotate = False
            Path(self.settings.password_file).write_text("rotated\n")
        return super()._outside_data_paths(files)


def test_a_pin_outside_the_data_paths_that_could_not_be_released_is_released_by_the_next_prepare(
        replica_set, tmp_path):
    elsewhere = tmp_path / "not-the-data"
    elsewhere.mkdir()
    password = tmp_path / "password"
    password.write_text(replica_set.password_file.read_text())
    password.chmod(0o600)
    settings = TarantoolSettings.model_validate(replica_set.engine_settings(
        work_dir=None, data_paths=[str(elsewhere)], password_file=str(password)))
    engine = PasswordRotatedMidPrepare(settings, base_dir=tmp_path)
    try:
        with pytest.raises(EngineError, match="outside the data paths"):
            engine.prepare("run-outside")
        assert pinned(replica_set)
        with pytest.raises(EngineError, match="authentication"):
            engine.complete("run-outside")  # what the agent does at once: it cannot log in either
        password.write_text(replica_set.password_file.read_text())
        with pytest.raises(EngineError, match="outside the data paths"):  # not busy "held by run-outside"
            engine.prepare("run-next")
        assert not pinned(replica_set)
    finally:
        replica_set.eval("if rawget(_G, 'snapctl_backup_run') then box.backup.stop() "
                         "rawset(_G, 'snapctl_backup_run', nil) end")


def test_a_lease_that_expires_while_tarantool_is_stopped_is_released_once_it_answers(tmp_path):
    with TarantoolReplicaSet(tmp_path / "stopped", size=1) as single:
        service = AgentService("t1", create_engine(single.engine_settings(timeout_s=0.5), base_dir=tmp_path))
        pid = single.instances[0].process.pid
        try:
            service.prepare("run-stop", 1.0)
            assert pinned(single)
            os.kill(pid, signal.SIGSTOP)
            try:
                wait_until(lambda: service.stats.lease_expirations == 1, timeout_s=20, what="the expiry")
                assert service.lease is not None  # box.backup.stop() could not be sent: still held
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_until(lambda: service.lease is None, timeout_s=20, what="the retried release")
            assert not pinned(single)
            assert service.prepare("run-next", 5).lease.run_id == "run-next"
        finally:
            service.close()
        assert not pinned(single)


@pytest.mark.parametrize("how", ["restart", "backup.stop by hand"])
def test_a_pin_lost_before_complete_is_answered_released_false(tmp_path, how):
    with TarantoolReplicaSet(tmp_path / "lost", size=1) as single:
        service = AgentService("t1", create_engine(single.engine_settings(), base_dir=tmp_path))
        try:
            service.prepare("run-lost", 30)
            if how == "restart":  # a pin lives in the instance's memory
                single.restart(0)
            else:
                single.eval("box.backup.stop()")
            assert not pinned(single)
            answer = service.complete("run-lost")
            assert not answer.released, "the run must fail: its checkpoint was not pinned all along"
            assert service.lease is None
            assert service.complete("run-lost").released is False  # a repeat, as before
            assert service.prepare("run-next", 30).lease.run_id == "run-next"
            assert service.complete("run-next").released and not pinned(single)
        finally:
            service.close()


def test_a_checkpoint_slower_than_timeout_s_gets_snapshot_timeout_s(tmp_path):
    with TarantoolReplicaSet(tmp_path / "slow-ok", size=1) as single:
        single.eval("for i = 1, 2000 do box.space.items:replace{i, require('digest').urandom(1000)} end "
                    "box.cfg{snap_io_rate_limit = 1}")  # box.snapshot() takes ~2 s
        engine = create_engine(single.engine_settings(timeout_s=0.5, snapshot_timeout_s=30), base_dir=tmp_path)
        state = engine.prepare("run-slow")
        try:
            assert state.facts.tables["items"].rows == 2000 and pinned(single)
        finally:
            engine.complete("run-slow")


def test_status_shows_a_killed_replica_and_its_return(replica_set, tmp_path):
    master = engine_for(replica_set, 0, tmp_path)
    replica = engine_for(replica_set, 1, tmp_path)
    victim = replica_set.instances[2]
    killed = engine_for(replica_set, 2, tmp_path)

    def progress_of(engine: TarantoolEngine):
        (group,) = engine.status().raft
        return next(p for p in group.replication if p.peer == victim.uuid)

    replica_set.kill(2)
    try:
        wait_until(lambda: progress_of(master).error is not None, timeout_s=10, what="master notices the dead replica")
        seen = progress_of(master)
        assert "disconnected" in seen.state and seen.consecutive_errors >= 1
        wait_until(lambda: progress_of(replica).error is not None, timeout_s=10, what="replica notices it too")
        status = killed.status()
        assert not status.reachable and "failed" in status.error
        with pytest.raises(EngineError):
            killed.prepare("run-dead")
    finally:
        replica_set.restart(2)
    wait_until(lambda: progress_of(master).state == "follow" and progress_of(master).error is None,
               timeout_s=10, what="master follows the replica again")


def test_a_replica_reports_itself_as_follower(replica_set, tmp_path):
    status = engine_for(replica_set, 1, tmp_path).status()
    (group,) = status.raft
    master_group = engine_for(replica_set, 0, tmp_path).status().raft[0]
    assert group.role == "follower" and group.group == master_group.group
    assert group.member == replica_set.instances[1].uuid
    assert set(group.peers) == {replica_set.instances[0].uuid, replica_set.instances[2].uuid}
    assert group.extra["election"] is None, "2.6.0 has no box.info.election"
    assert status.details["ro"] is True


def test_backup_with_the_local_provider_restores_and_verifies(replica_set, tmp_path):
    replica_set.write(50)
    replica_set.wait_replicated()
    for index in (0, 1):  # the master, and a replica's copy of the same data
        engine = engine_for(replica_set, index, tmp_path)
        state, restored = backup_and_restore(engine, f"run-restore-{index}", replica_set.instances[index].work_dir,
                                             tmp_path / f"node{index}")
        (restored / "00000000000000000001.snap.inprogress").write_bytes(b"torn")  # as a mid-checkpoint snapshot would
        engine.restore_prepare(restored)
        assert not list(restored.rglob("*.inprogress"))
        with TarantoolReplicaSet(tmp_path / f"restored{index}", work_dirs=[restored]) as copy:
            restored_engine = create_engine(copy.engine_settings(), base_dir=tmp_path)
            facts = restored_engine.verify()
        for table, expected in state.facts.tables.items():
            assert facts.tables[table].rows >= expected.rows, table
        checkpoint = state.facts.position["checkpoint_vclock"]
        assert all(facts.position["vclock"].get(i, 0) >= lsn for i, lsn in checkpoint.items())


def test_restore_prepare_refuses_a_directory_without_a_snapshot(tmp_path):
    engine = TarantoolEngine(TarantoolEngine.settings_model(work_dir=str(tmp_path)), base_dir=tmp_path)
    with pytest.raises(EngineError, match="no .snap file"):
        engine.restore_prepare(tmp_path)


def test_wrong_password_is_reported_without_the_password(replica_set, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-" + PASSWORD + "\n")
    status = engine_for(replica_set, 0, tmp_path, password_file=str(wrong)).status()
    assert not status.reachable and "authentication" in status.error
    assert PASSWORD not in status.error


def test_a_user_without_the_grants_gets_the_grant_to_add(replica_set, tmp_path):
    empty = tmp_path / "empty.password"
    empty.write_text("")
    engine = engine_for(replica_set, 0, tmp_path, user="guest", password_file=str(empty))
    with pytest.raises(EngineError, match="denied") as caught:
        engine.prepare("run-guest")
    assert "box.schema.user.grant('guest', 'read,write,execute', 'universe')" in caught.value.hint
    assert not pinned(replica_set)


def test_settings_need_the_paths_to_cover():
    with pytest.raises(BadInputError, match="work_dir or data_paths"):
        validate_engine_settings({"type": "tarantool", "port": 3301})
    with pytest.raises(BadInputError, match="valid keys"):
        validate_engine_settings({"type": "tarantool", "work_dir": "/x", "password": "plain"})


def test_raft_model_uses_box_info_election_when_the_server_has_it():
    # The shape of box.info on 2.6.1+ with election_mode=candidate; 2.6.0 cannot produce it.
    info = {
        "uuid": "u1", "id": 1, "ro": True, "status": "running", "group": "rs", "vclock": [10, 4], "signature": 14,
        "election": {"state": "follower", "term": 7, "vote": 2, "leader": 2},
        "replication": [
            {"id": 1, "uuid": "u1", "lsn": 10},
            {"id": 2, "uuid": "u2", "lsn": 4,
             "upstream": {"status": "follow", "peer": "snapctl@10.0.0.2:3301", "lag": 0.01},
             "downstream": {"status": "follow", "vclock": {1: 7, 2: 4}}},
        ],
    }
    group = raft_group(info)
    assert (group.role, group.term, group.leader) == ("follower", 7, "u2")
    (progress,) = group.replication
    assert progress.lag_entries == 3 and progress.state == "follow"
    assert group.extra["peer_addresses"] == {"u2": "10.0.0.2:3301"}

