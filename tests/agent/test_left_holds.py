"""An agent killed outright (SIGKILL, as the OOM killer does) while it holds, then started again:
the hold that process left is released at start (by the lease watcher, while the agent serves),
through its hold record, and only that run's; the dead run is never told its hold still stands.
Real agent processes on loopback, against the QuestDB /exec fake, a real SQLite file, and a real
Tarantool."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node_agent.models import LOST_WITH_AGENT
from snapctl.errors import EngineError
from tests.agent.conftest import AGENT_BIN, TOKEN, agent_process, try_write, wait_until, write_config
from tests.conftest import free_port
from tests.fakes.questdb import FakeQuestDB

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIED = "the agent process before this one died while run r1 held the engine"


def post(agent, path: str, **body) -> httpx.Response:
    return httpx.post(agent.url + path, json=body, headers=AUTH, timeout=30)


def status(agent) -> dict:
    return httpx.get(agent.url + "/v1/status", headers=AUTH, timeout=30).json()


def records(state: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(state.glob("hold-*.json"))]


def warnings(agent) -> list[str]:
    return [line.split(" WARNING snapctl.agent: ", 1)[1] for line in agent.log.splitlines()
            if " WARNING snapctl.agent: " in line]


def assert_dead_run_answered_lost(agent) -> None:
    complete = post(agent, "/v1/complete", run_id="r1")
    assert complete.status_code == 200, complete.text
    assert complete.json()["released"] is False and complete.json()["ended"] == LOST_WITH_AGENT
    renew = post(agent, "/v1/renew", run_id="r1")
    assert renew.status_code == 409 and "does not hold" in renew.json()["error"], renew.text


@pytest.fixture
def qdb() -> Iterator[FakeQuestDB]:
    with FakeQuestDB() as fake:
        fake.tables["trades"] = 5
        yield fake


def questdb_config(tmp_path: Path, fake: FakeQuestDB, window_s: float = 60, timeout_s: float = 3) -> Path:
    (tmp_path / "qdb" / "db").mkdir(parents=True, exist_ok=True)
    (tmp_path / "agent.token").write_text(TOKEN + "\n")
    (tmp_path / "agent.token").chmod(0o600)
    config = tmp_path / "agent.yaml"
    config.write_text(f"node: q1\ntoken_file: agent.token\nstate_dir: state\n"
                      f"engine: {{type: questdb, root: qdb, url: '{fake.url}', timeout_s: {timeout_s:g}, "
                      f"late_create_window_s: {window_s}}}\n")
    return config


@pytest.mark.parametrize("killed", ["held", "during the create"])
def test_a_questdb_checkpoint_left_by_a_killed_agent_is_released_when_it_starts_again(
        tmp_path: Path, qdb: FakeQuestDB, killed: str) -> None:
    config = questdb_config(tmp_path, qdb)
    with agent_process(config) as agent:
        if killed == "held":
            assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        else:  # the server takes the checkpoint at once, and its answer is on its way when the agent dies
            qdb.slow_answers["CHECKPOINT CREATE"] = 3.0
            with pytest.raises(httpx.TimeoutException):
                httpx.post(agent.url + "/v1/prepare", json={"run_id": "r1", "lease_s": 600}, headers=AUTH,
                           timeout=1)
        wait_until(lambda: qdb.held, what="the checkpoint")
        agent.stop(signal.SIGKILL)
    assert qdb.held  # nobody released it: the process died
    [record] = records(tmp_path / "state")
    assert record["run_id"] == "r1" and record["engine"] == "questdb"
    assert record["facts"].get("created", False) is (killed == "held")
    qdb.slow_answers.clear()

    with agent_process(config) as again:
        wait_until(lambda: not qdb.held, what="the release at start, by the lease watcher")
        assert qdb.queries.count("CHECKPOINT RELEASE") == 1
        engine = status(again)["engine"]
        assert not engine["held"] and "releasing" not in engine["details"]
        assert_dead_run_answered_lost(again)
        assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
        assert post(again, "/v1/complete", run_id="r2").json()["released"] is True
    assert not qdb.held and records(tmp_path / "state") == []
    [said] = [w for w in warnings(again) if DIED in w]
    assert "released" in said and "answered that its hold was lost" in said


def test_another_clients_checkpoint_taken_after_the_kill_is_left_alone(tmp_path: Path, qdb: FakeQuestDB) -> None:
    config = questdb_config(tmp_path, qdb)
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        agent.stop(signal.SIGKILL)
    qdb.held_since = None  # someone released the dead run's checkpoint by hand, and took one of their own
    qdb.hold_as_someone_else()
    with agent_process(config) as again:
        assert qdb.held and "CHECKPOINT RELEASE" not in qdb.queries
        assert_dead_run_answered_lost(again)
    assert records(tmp_path / "state") == []
    [said] = [w for w in warnings(again) if DIED in w]
    assert "another client's, left alone" in said


def test_a_create_cut_short_by_the_kill_is_watched_for_until_its_window_has_passed(
        tmp_path: Path, qdb: FakeQuestDB) -> None:
    config = questdb_config(tmp_path, qdb, window_s=8)
    qdb.lost_creates = 1  # received, its connection dropped: the server might still run it, for all the agent knows
    with agent_process(config) as agent:
        failed = post(agent, "/v1/prepare", run_id="r1", lease_s=600)
        assert failed.status_code == 502, failed.text
        agent.stop(signal.SIGKILL)  # while it still watches for that create
    assert not qdb.held
    with agent_process(config) as again:
        # Nothing is held, so nothing is said to be; but a create of r1 could still run, so it is watched for.
        engine = status(again)["engine"]
        assert not engine["held"] and "releasing" not in engine["details"]
        assert "the prepare of run r1, cut short when its agent process died" in engine["details"]["left_hold_watch"]
        refused = post(again, "/v1/prepare", run_id="r2", lease_s=60)
        assert refused.status_code == 409 and refused.json()["holder"] == "r1", refused.text
        wait_until(lambda: records(tmp_path / "state") == [], what="the window to pass")
        assert "left_hold_watch" not in status(again)["engine"]["details"]
        assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
        assert post(again, "/v1/complete", run_id="r2").json()["released"] is True
        assert_dead_run_answered_lost(again)
    assert "CHECKPOINT RELEASE" not in qdb.queries[:-1]  # r2's own release only
    [said] = [w for w in warnings(again) if DIED in w]
    assert "no checkpoint of its came" in said


def test_a_record_whose_engine_is_down_at_start_is_released_once_it_answers(tmp_path: Path, qdb: FakeQuestDB) -> None:
    config = questdb_config(tmp_path, qdb)
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        agent.stop(signal.SIGKILL)
    qdb.stop_listening()
    with agent_process(config) as again:
        engine = status(again)["engine"]
        assert not engine["reachable"] and status(again)["lease"] is None
        assert engine["details"]["releasing"].startswith(
            "the hold of run r1, left by an agent process that died, is not released yet: questdb at ")
        refused = post(again, "/v1/prepare", run_id="r2", lease_s=60)
        assert refused.status_code == 409 and refused.json()["holder"] == "r1", refused.text
        # Still held: the dead run's own complete (a rollback's) must not be counted as released.
        not_yet = post(again, "/v1/complete", run_id="r1")
        assert not_yet.status_code == 409 and not_yet.json()["holder"] == "r1", not_yet.text
        assert qdb.held and len(records(tmp_path / "state")) == 1
        qdb.listen_again()
        wait_until(lambda: not qdb.held, what="the release once questdb answers")
        wait_until(lambda: "releasing" not in status(again)["engine"]["details"], what="the status to say so")
        assert records(tmp_path / "state") == []
        assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
        assert post(again, "/v1/complete", run_id="r2").json()["released"] is True
        assert_dead_run_answered_lost(again)
    errors = [line for line in again.log.splitlines() if " ERROR " in line and "would not release" in line]
    assert len(errors) == 1, again.log  # said once, not at every retry
    assert len([w for w in warnings(again) if DIED in w]) == 1


def test_a_sqlite_hold_ends_with_the_killed_agent_and_its_restart_has_nothing_to_release(
        tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db, extra="state_dir: state\n")
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        assert not try_write(db)
        agent.stop(signal.SIGKILL)
    assert try_write(db)  # the OS dropped the lock with the process: written to since the hold began
    assert [r["run_id"] for r in records(tmp_path / "state")] == ["r1"]
    with agent_process(config) as again:
        wait_until(lambda: records(tmp_path / "state") == [], what="the release at start")
        assert_dead_run_answered_lost(again)  # its snapshot may hold those writes: never told it held
        assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
        assert records(tmp_path / "state")[0]["run_id"] == "r2"
        assert post(again, "/v1/complete", run_id="r2").json()["released"] is True
    assert records(tmp_path / "state") == []
    [said] = [w for w in warnings(again) if DIED in w]
    assert "its hold ended with that process" in said


def test_a_state_dir_the_agent_cannot_write_stops_it_at_start(tmp_path: Path, db: Path) -> None:
    from tests.agent.test_agent_process import run_agent

    (tmp_path / "taken").write_text("a file, not a directory\n")
    config = write_config(tmp_path, db, extra="state_dir: taken/state\n")
    result = run_agent("--config", str(config))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"snapctl-agent: error: cannot create the agent's state_dir {tmp_path}/taken/state: ")
    assert line.endswith(f"(hint: set state_dir in {config} to a directory the agent's user can write)")


def test_a_state_dir_gone_read_only_still_has_its_left_hold_released_before_the_agent_stops(
        tmp_path: Path, qdb: FakeQuestDB) -> None:
    # Refused at once, the agent left the killed one's checkpoint held for as long as the state_dir
    # stayed read-only: the engine frozen because snapctl's agent would not start.
    config = questdb_config(tmp_path, qdb)
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        agent.stop(signal.SIGKILL)
    state = tmp_path / "state"
    [record] = state.glob("hold-*.json")
    stopped = start_read_only(state, config)
    assert stopped.returncode == 2, stopped.stderr
    assert not qdb.held and qdb.queries.count("CHECKPOINT RELEASE") == 1
    assert record.exists()  # it could not be removed, and says so
    error = stopped.stderr.splitlines()[-1]
    assert error.startswith(f"snapctl-agent: error: the agent's state_dir {state} is not a directory its user can "
                            "write; what run r1 left held on the engine was released first (released its questdb "
                            f"checkpoint (since "), error
    assert error.endswith(f"); its hold record {record} stays (hint: set state_dir in {config} to a directory the "
                          "agent's user can write)"), error
    assert f"{DIED} (lease until " in stopped.stderr and f"its hold record {record} stays, as the state_dir " \
           "cannot be written" in stopped.stderr

    with agent_process(config) as again:  # writable again: the record's second release is fenced, harmless
        wait_until(lambda: records(state) == [], what="the record to go")
        assert qdb.queries.count("CHECKPOINT RELEASE") == 1
        assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
        assert post(again, "/v1/complete", run_id="r2").json()["released"] is True


def test_a_left_hold_the_engine_would_not_release_before_the_refusal_is_one_line_with_one_hint(
        tmp_path: Path, qdb: FakeQuestDB) -> None:
    # The error added the engine's error whole, its own "(hint: ...)" inside it, before the refusal's.
    config = questdb_config(tmp_path, qdb, timeout_s=1)
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        agent.stop(signal.SIGKILL)
    state = tmp_path / "state"
    with qdb.hang():
        stopped = start_read_only(state, config)
    assert stopped.returncode == 2, stopped.stderr
    assert qdb.held and [r["run_id"] for r in records(state)] == ["r1"]
    error = stopped.stderr.splitlines()[-1]
    assert error.startswith(f"snapctl-agent: error: the agent's state_dir {state} is not a directory its user can "
                            "write; the hold run r1 left on the engine is not released ("), error
    assert error.count("hint: ") == 1, error
    assert error.endswith(f"(hint: set state_dir in {config} to a directory the agent's user can write)"), error
    [said] = [line for line in stopped.stderr.splitlines() if " ERROR snapctl.agent: " in line]
    assert "would not release: " in said and "hint: " in said, "the engine's hint is kept in the log"


def start_read_only(state: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """The agent started on ``config`` with its own ``state``, left read-only, to its end."""
    argv = [str(AGENT_BIN), "--config", str(config), "--port", str(free_port())]
    if os.geteuid() == 0:  # root writes through any mode: a read-only mount, in a namespace of its own
        if subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
            pytest.skip("running as root, and cannot make a mount namespace here (unshare -m) for a read-only state_dir")
        remount = f'mount --bind {state} {state} && mount -o remount,bind,ro {state} && exec "$@"'
        argv = ["unshare", "-m", "sh", "-c", remount, "sh", *argv]
    else:
        state.chmod(0o500)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "SNAPCTL_AGENT_TOKEN": ""})
    finally:
        state.chmod(0o700)


@pytest.mark.slow
def test_a_tarantool_pin_left_by_a_killed_agent_is_released_when_it_starts_again(tmp_path: Path) -> None:
    # snapctl gave up on the run while the agent was down: no complete of it ever comes.
    import yaml

    from tests.realdb.tarantool import TarantoolReplicaSet

    with TarantoolReplicaSet(tmp_path / "tt", size=1) as single:
        pinned = ("for _, c in ipairs(box.info.gc().checkpoints) do for _, r in ipairs(c.references) do "
                  "if r == 'backup' then return true end end end return false")
        (tmp_path / "agent.token").write_text(TOKEN + "\n")
        (tmp_path / "agent.token").chmod(0o600)
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"node": "t1", "token_file": "agent.token", "state_dir": "state",
                                          "engine": single.engine_settings()}))
        with agent_process(config) as agent:
            assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
            agent.stop(signal.SIGKILL)
        assert single.eval(pinned)[0], "a pin outlives its agent"
        with agent_process(config) as again:
            wait_until(lambda: not single.eval(pinned)[0], what="the release at start")
            assert not status(again)["engine"]["held"]
            assert_dead_run_answered_lost(again)
            assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
            assert post(again, "/v1/complete", run_id="r2").json()["released"] is True
        assert records(tmp_path / "state") == []
        assert [w for w in warnings(again) if DIED in w] != []


def test_a_hold_the_agent_could_not_release_on_sigterm_is_released_by_its_next_start(
        tmp_path: Path, qdb: FakeQuestDB) -> None:
    config = questdb_config(tmp_path, qdb)
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        with qdb.hang():  # its release on SIGTERM goes unanswered
            assert agent.stop(signal.SIGTERM) == 1
    assert "its engine is still held for run r1" in agent.log
    assert "it stays held until the agent's next start releases it" in agent.log
    assert [r["run_id"] for r in records(tmp_path / "state")] == ["r1"] and qdb.held
    with agent_process(config) as again:
        wait_until(lambda: not qdb.held, what="the release at start")
        assert_dead_run_answered_lost(again)
    assert records(tmp_path / "state") == []


def test_the_record_goes_when_the_hold_ends_by_expiry_or_a_failed_prepare(tmp_path: Path, db: Path) -> None:
    from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
    from node_agent.hold_record import HoldRecords
    from node_agent.service import AgentService

    engine = SqliteEngine(SqliteSettings(path=db.name, timeout_s=1), base_dir=db.parent)
    book = HoldRecords(tmp_path / "state", "n1", "sqlite", engine.data_paths())
    (tmp_path / "state").mkdir()
    service = AgentService("n1", engine, hold_records=book)
    try:
        service.prepare("r1", 0.3)
        assert book.path.exists() and not try_write(db)
        wait_until(lambda: service.lease is None, what="the lease to expire")
        assert not book.path.exists() and try_write(db)

        holder = sqlite3.connect(db, timeout=0)
        holder.execute("BEGIN IMMEDIATE")  # another writer: the prepare cannot take its lock
        try:
            with pytest.raises(EngineError, match="locked"):
                service.prepare("r2", 5)
        finally:
            holder.rollback()
            holder.close()
        assert not book.path.exists() and service.lease is None
    finally:
        service.close()


def test_a_checkpoint_that_cannot_be_told_from_another_clients_is_left_alone_and_said(tmp_path: Path) -> None:
    # Before 8.1.1 the server never says when its checkpoint began: the dead run's, or a DBA's?
    with FakeQuestDB("7.3.10") as legacy:
        config = questdb_config(tmp_path, legacy)
        with agent_process(config) as agent:
            assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
            agent.stop(signal.SIGKILL)
        assert records(tmp_path / "state")[0]["facts"]["server_since"] is None
        with agent_process(config) as again:
            said = status(again)["engine"]["details"]["releasing"]
            assert "cannot be told from another client's: left alone" in said and "release it by hand" in said
            refused = post(again, "/v1/prepare", run_id="r2", lease_s=60)
            assert refused.status_code == 409 and refused.json()["holder"] == "r1", refused.text
            assert legacy.held and "SNAPSHOT COMPLETE" not in legacy.queries
        assert len(records(tmp_path / "state")) == 1  # kept for the operator (docs/agent.md)
    assert "cannot be told from another client's" in again.log


@pytest.mark.parametrize("cut", ["truncated", "empty"])
def test_an_unreadable_record_is_moved_aside_and_said_until_deleted(tmp_path: Path, db: Path, cut: str) -> None:
    # A power loss before the record reached the disk, or a hand edit: the hold it named is unknown,
    # and the next prepare's record must not overwrite the only word of it.
    from node_agent.models import AgentStatus
    from snapctl.config import parse_inventory
    from snapctl.health import NodeProbe, assess

    config = write_config(tmp_path, db, extra="state_dir: state\n")
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        agent.stop(signal.SIGKILL)
    [path] = (tmp_path / "state").glob("hold-*.json")
    kept = path.read_bytes()[:20] if cut == "truncated" else b""
    path.write_bytes(kept)
    with agent_process(config) as again:
        aside = path.with_name(path.name + ".unreadable")
        assert not path.exists() and aside.read_bytes() == kept
        said = status(again)
        assert said["engine"]["details"]["unreadable_hold_record"] == (
            f"a hold record the agent could not read was moved to {aside}: a hold it named, if any, was not released")
        inventory = parse_inventory("cluster: c\nprovider: {type: local}\n"
                                    f"nodes: [{{name: n1, agent: '{again.url}'}}]")
        [finding] = assess(inventory, [NodeProbe("n1", status=AgentStatus.model_validate(said))]).findings
        assert finding.severity == "degraded" and "release it by hand, then delete that file" in finding.hint
        assert post(again, "/v1/prepare", run_id="r2", lease_s=60).status_code == 200
        assert post(again, "/v1/complete", run_id="r2").json()["released"] is True
        assert aside.read_bytes() == kept and "unreadable_hold_record" in status(again)["engine"]["details"]
        aside.unlink()  # the operator's last step (docs/agent.md)
        assert "unreadable_hold_record" not in status(again)["engine"]["details"]
    assert f"the hold record {path} cannot be read" in again.log and f"moved to {aside}" in again.log


def test_the_agent_serves_while_a_hung_engine_keeps_the_release_at_start_waiting(tmp_path: Path, qdb: FakeQuestDB) -> None:
    # Released before serving, a QuestDB that accepted and never answered kept the port bound and
    # /v1/health unanswered for the release's timeouts, with no line in the log to say why.
    config = questdb_config(tmp_path, qdb, timeout_s=6)
    with agent_process(config) as agent:
        assert post(agent, "/v1/prepare", run_id="r1", lease_s=600).status_code == 200
        agent.stop(signal.SIGKILL)
    with qdb.hang():
        started = time.monotonic()
        with agent_process(config) as again:
            assert time.monotonic() - started < 6, "health waited for the release (timeout_s: 6)"
            said = status(again)["engine"]["details"]
            assert said["busy"].startswith("release of what run r1 left held under way for ")
            assert said["releasing"] == ("the hold of run r1, left by an agent process that died, is being released "
                                         "(the agent's first try since it started)")
            assert "releasing what run r1 left held on the engine, found in its hold record (each engine call " \
                   "waits up to 6s)" in again.log
    assert qdb.held  # the agent stopped before the engine answered: its record stays for the next start
    assert len(records(tmp_path / "state")) == 1
    with agent_process(config) as last:
        wait_until(lambda: not qdb.held, what="the release once questdb answers")
        assert_dead_run_answered_lost(last)
