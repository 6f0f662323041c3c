"""A Tarantool prepare whose agent died under it: the server must never pin for it afterwards.

``box.snapshot()`` goes on in the server after the agent that asked for it is killed, and would pin
once it finishes: with no agent left knowing of that pin, nothing would ever release it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from node_agent.engines.base import create_engine
from node_agent.engines.tarantool_lua import CANCELLED_RUNS_GLOBAL, PREPARE_LUA, RELEASE_LUA
from snapctl.errors import EngineError
from tests.agent.conftest import TOKEN, agent_process
from tests.realdb.procs import wait_until
from tests.realdb.tarantool import TarantoolReplicaSet

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# ~2 MB at 0.25 MB/s: box.snapshot() takes ~8 s, long enough to kill an agent and start another.
SLOW_CHECKPOINT = ("for i = 1, 2000 do box.space.items:replace{i, require('digest').urandom(1000)} end "
                   "box.cfg{snap_io_rate_limit = 0.25}")
STATE = ("local pinned = false for _, c in ipairs(box.info.gc().checkpoints) do for _, r in ipairs(c.references) do "
         "if r == 'backup' then pinned = true end end end "
         "return {pinned = pinned, holder = rawget(_G, 'snapctl_backup_run'), "
         "busy = box.info.gc().checkpoint_is_in_progress}")


def state(rs: TarantoolReplicaSet) -> dict:
    return rs.eval(STATE)[0]


def cancelled_runs(rs: TarantoolReplicaSet) -> list[str]:
    return sorted(rs.eval(f"local ids = {{}} for id in pairs(rawget(_G, '{CANCELLED_RUNS_GLOBAL}') or {{}}) do "
                          "table.insert(ids, id) end return ids")[0])


def agent_config(tmp_path: Path, rs: TarantoolReplicaSet, **engine: object) -> Path:
    (tmp_path / "agent.token").write_text(TOKEN + "\n")
    (tmp_path / "agent.token").chmod(0o600)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"node": "n1", "token_file": "agent.token", "state_dir": "state",
                                      "engine": rs.engine_settings(snapshot_timeout_s=60, **engine)}))
    return config


def lose_the_hold_record(config: Path) -> None:
    """The dead agent's hold record gone with it (a state_dir on tmpfs across a reboot, or an agent
    from before hold records): the agent started next learns of the run only from its complete."""
    records = list((config.parent / "state").glob("hold-*.json"))
    assert len(records) == 1, records
    records[0].unlink()


def kill_an_agent_in_box_snapshot(rs: TarantoolReplicaSet, config: Path, run_id: str) -> None:
    """A real agent's prepare of ``run_id``, the agent SIGKILLed while the server is in box.snapshot()."""
    answers: list[object] = []
    with agent_process(config) as first:
        prepare = threading.Thread(target=lambda: answers.append(
            _post(first.url, "/v1/prepare", {"run_id": run_id, "lease_s": 30})))
        prepare.start()
        wait_until(lambda: state(rs)["busy"], timeout_s=20, what="the prepare's box.snapshot() to start")
        first.proc.kill()
        first.proc.wait(timeout=10)
        prepare.join(timeout=10)
    assert answers and isinstance(answers[0], httpx.HTTPError), answers


def test_a_prepare_a_killed_agent_left_in_box_snapshot_never_pins_once_its_complete_reached_the_new_agent(tmp_path):
    with TarantoolReplicaSet(tmp_path / "killed", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        config = agent_config(tmp_path, single)
        kill_an_agent_in_box_snapshot(single, config, "run-dead")
        lose_the_hold_record(config)
        with agent_process(config) as second:
            assert state(single)["busy"], "the checkpoint finished before the complete: the test proves nothing"
            # The rollback's complete: this agent never knew run-dead, and no pin of it exists yet.
            complete = _post(second.url, "/v1/complete", {"run_id": "run-dead"})
            assert complete.status_code == 409 and "nothing is held" in complete.json()["error"]
            wait_until(lambda: not state(single)["busy"], timeout_s=60, what="the checkpoint")
            time.sleep(1)  # the dead prepare's fiber looks, then pins or not, at once after box.snapshot()
            assert state(single) == {"pinned": False, "busy": False}, "a pin nobody would ever release"
            status = httpx.get(second.url + "/v1/status", headers=AUTH).json()
            assert status["engine"]["held"] is False and status["engine"]["held_by"] is None
            single.eval("box.cfg{snap_io_rate_limit = 1000}")
            held = _post(second.url, "/v1/prepare", {"run_id": "run-next", "lease_s": 30})
            assert held.status_code == 200, held.text
            assert state(single)["holder"] == "run-next"
            assert _post(second.url, "/v1/complete", {"run_id": "run-next"}).json()["released"] is True
        assert state(single)["pinned"] is False


def test_a_prepare_a_killed_agent_left_in_box_snapshot_is_cancelled_by_the_next_agent_from_its_hold_record(tmp_path):
    with TarantoolReplicaSet(tmp_path / "recorded", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        config = agent_config(tmp_path, single)
        kill_an_agent_in_box_snapshot(single, config, "run-dead")
        with agent_process(config) as second:
            assert state(single)["busy"], "the checkpoint finished before the agent started: the test proves nothing"
            # At its start (its lease watcher's first call), before any complete came.
            wait_until(lambda: "run-dead" in cancelled_runs(single), timeout_s=10,
                       what="the cancel at the agent's start")
            complete = _post(second.url, "/v1/complete", {"run_id": "run-dead"})
            assert complete.status_code == 200 and complete.json()["released"] is False, complete.text
            wait_until(lambda: not state(single)["busy"], timeout_s=60, what="the checkpoint")
            time.sleep(1)  # the dead prepare's fiber looks, then pins or not, at once after box.snapshot()
            assert state(single) == {"pinned": False, "busy": False}, "a pin nobody would ever release"
            assert not list((tmp_path / "state").glob("hold-*.json"))


def test_a_complete_that_could_not_ask_the_server_is_asked_again_so_the_late_prepare_never_stays_pinned(tmp_path):
    with TarantoolReplicaSet(tmp_path / "unasked", size=1) as single:
        single.eval(SLOW_CHECKPOINT)
        config = agent_config(tmp_path, single, timeout_s=1)
        kill_an_agent_in_box_snapshot(single, config, "run-dead")
        lose_the_hold_record(config)
        with agent_process(config) as second:
            with single.instances[0].process.paused():  # the instance answers nobody
                complete = _post(second.url, "/v1/complete", {"run_id": "run-dead"})
                assert complete.status_code == 409 and "nothing is held" in complete.json()["error"]
            # The agent now remembers run-dead as completed before its prepare: snapctl's repeated
            # complete gets that answer, without the server being asked. The agent asks it itself.
            assert _post(second.url, "/v1/complete", {"run_id": "run-dead"}).json()["released"] is False
            wait_until(lambda: not state(single)["busy"], timeout_s=60, what="the checkpoint")
            wait_until(lambda: not state(single)["pinned"], timeout_s=10, what="no pin of the dead run")
            time.sleep(2.5)  # another round of the agent's watcher: nothing comes back
            assert state(single) == {"pinned": False, "busy": False}
            assert "could not ask the engine for a hold a killed agent left" in second.log


def test_a_pin_that_came_after_a_complete_could_not_ask_the_server_is_released_by_the_next_prepare(tmp_path):
    with TarantoolReplicaSet(tmp_path / "next", size=1) as single:
        single.eval(SLOW_CHECKPOINT.replace("0.25", "0.5"))  # ~4 s
        with single.evaluating(PREPARE_LUA, "run-dead", True, "attempt-1", 60, 54):  # what a killed agent left
            wait_until(lambda: state(single)["busy"], timeout_s=10, what="the checkpoint to start")
            engine = create_engine(single.engine_settings(timeout_s=0.5), base_dir=tmp_path)
            with single.instances[0].process.paused(), pytest.raises(EngineError, match="no answer"):
                engine.release_left_hold("run-dead")
        assert state(single)["holder"] == "run-dead"  # the late pin: no cancellation reached the server
        single.eval("box.cfg{snap_io_rate_limit = 1000}")
        engine.prepare("run-next")
        assert state(single)["holder"] == "run-next"
        assert engine.complete("run-next") is None and state(single)["pinned"] is False


def test_a_run_completed_with_nothing_pinned_is_refused_by_its_own_prepares_until_that_expires(tmp_path):
    with TarantoolReplicaSet(tmp_path / "expiry", size=1) as single:
        engine = create_engine(single.engine_settings(snapshot_timeout_s=1), base_dir=tmp_path)
        # The agent's own release after a failed prepare cancels only that call: a retry may pin.
        assert engine.complete("run-retried") is None and cancelled_runs(single) == []
        assert engine.release_left_hold("run-gone") is None
        assert cancelled_runs(single) == ["run-gone"]
        # Another agent process (a retry reaching yet another restart): the server refuses it too.
        other = create_engine(single.engine_settings(), base_dir=tmp_path)
        with pytest.raises(EngineError, match="run run-gone was completed here before this prepare could pin") as exc:
            other.prepare("run-gone")
        assert "start a new backup" in (exc.value.hint or "")
        assert state(single)["pinned"] is False
        # Kept no longer than snapshot_timeout_s (no prepare began with a longer budget): entries expire,
        # and each release that adds one drops those that have.
        time.sleep(1.2)
        assert engine.release_left_hold("run-later") is None
        assert cancelled_runs(single) == ["run-later"]
        other.prepare("run-gone")
        assert state(single)["holder"] == "run-gone"
        assert other.complete("run-gone") is None and state(single)["pinned"] is False


def test_a_run_cancelled_by_an_agent_with_a_shorter_budget_still_stops_a_prepare_begun_with_a_longer_one(tmp_path):
    with TarantoolReplicaSet(tmp_path / "budgets", size=1) as single:
        single.eval(SLOW_CHECKPOINT.replace("0.25", "0.5"))  # ~4 s
        with single.evaluating(PREPARE_LUA, "run-long", True, "attempt-1", 60, 54) as answers:
            wait_until(lambda: state(single)["busy"], timeout_s=10, what="the checkpoint to start")
            # What release_left_hold sends from an agent whose snapshot_timeout_s is 0.5 s.
            assert single.eval(RELEASE_LUA, "run-long", None, 0.5)[0] == {"released": False}
        assert answers == [{"run_completed": True}] and state(single)["pinned"] is False


def _post(url: str, path: str, body: dict) -> httpx.Response | httpx.HTTPError:
    try:
        return httpx.post(url + path, json=body, headers=AUTH, timeout=60)
    except httpx.HTTPError as exc:  # the agent killed mid-request
        return exc
