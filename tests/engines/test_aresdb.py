"""The AresDB adapter against the /dbg fake: job progress, failures, disabled jobs, holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node_agent.engines.aresdb import AresDBEngine, AresDBSettings
from node_agent.engines.base import validate_engine_settings
from snapctl.errors import BadInputError, EngineBusy, EngineError
from tests.fakes.aresdb import FakeAresDB

TABLES = [{"name": "dim_city", "shards": [0, 1]}, {"name": "dim_driver", "shards": [0]}]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "ares" / "data").mkdir(parents=True)
    return tmp_path / "ares"


@pytest.fixture
def make(root: Path) -> Iterator:
    started: list[tuple[FakeAresDB, AresDBEngine]] = []

    def factory(*, history: bool = True, **settings) -> tuple[FakeAresDB, AresDBEngine]:
        fake = FakeAresDB({"dim_city": [0, 1], "dim_driver": [0]}, with_history=history).start()
        options = {"timeout_s": 2, "job_wait_s": 5, "poll_interval_s": 0.01, "tables": TABLES, **settings}
        engine = AresDBEngine(AresDBSettings(debug_url=fake.url, root=str(root), **options), base_dir=root.parent)
        started.append((fake, engine))
        return fake, engine

    yield factory
    for fake, engine in started:
        engine.close()
        fake.stop()


@pytest.mark.parametrize("history", [True, False])
def test_trigger_waits_for_each_job_to_succeed(make, history: bool) -> None:
    fake, engine = make(history=history)
    fake.write(3)
    jobs = engine.trigger(None)
    assert [(j.target, j.status) for j in jobs] == [
        ("dim_city/0", "succeeded"), ("dim_city/1", "succeeded"), ("dim_driver/0", "succeeded")]
    assert all(j.extra["stage"] == "complete" and j.extra["batchOffset"] == 1 for j in jobs)
    assert "redo log checkpointed at 1700000000/1" in (jobs[0].detail or "")
    assert all(job["status"] == "succeeded" for job in fake.jobs.values())


def test_trigger_one_table_or_one_shard(make) -> None:
    fake, engine = make()
    assert [j.target for j in engine.trigger("dim_city")] == ["dim_city/0", "dim_city/1"]
    assert [j.target for j in engine.trigger("dim_driver/0")] == ["dim_driver/0"]
    assert [j.target for j in engine.trigger("dim_city|1")] == ["dim_city/1"]
    # Unknown targets are the caller's bad input (the agent's 400, `snapctl trigger` exit 2), not
    # the engine's failure (502).
    with pytest.raises(BadInputError, match="aresdb table 'dim_nope' is not configured for this node") as caught:
        engine.trigger("dim_nope")
    assert caught.value.hint == "add it to engine.tables or name it as table/shard"
    with pytest.raises(BadInputError, match=r"shard must be a number \(table/shard\)") as caught:
        engine.trigger("dim_city/x")
    assert caught.value.hint == "e.g. dim_city/0"


def test_disabled_snapshot_jobs_are_an_error_not_a_success(make) -> None:
    fake, engine = make()
    fake.disabled = True
    with httpx.Client() as client:
        answer = client.post(f"{fake.url}/dbg/dim_city/0/snapshot")
    assert answer.status_code == 200 and answer.content == b""
    [job] = engine.trigger("dim_city/0")
    assert job.status == "failed" and "disabled" in (job.detail or "")


def test_an_unknown_shard_fails_with_aresdb_s_message(make) -> None:
    _, engine = make()
    [job] = engine.trigger("dim_city/7")
    assert job.status == "failed"
    assert "HTTP 400" in (job.detail or "") and "Failed to get Shard 7 for table dim_city" in (job.detail or "")


def test_a_failed_job_reports_its_last_error(make) -> None:
    fake, engine = make()
    fake.fail[("dim_driver", 0)] = "disk full"
    jobs = engine.trigger(None)
    assert [j.status for j in jobs] == ["succeeded", "succeeded", "failed"]
    assert "stage snapshot: disk full" in (jobs[2].detail or "")
    assert engine.status().details["failed_jobs"] == ["dim_driver|0|snapshot"]


NOT_STARTED = ("the scheduler did not start the snapshot job within job_wait_s (0.5s): another job such as "
               "archiving or backfill may be running; see the aresdb log")


def test_a_submit_the_busy_scheduler_holds_past_the_wait_fails_that_shard_and_the_next_are_tried(make) -> None:
    # AresDB's submit blocks while its one job executor is busy: the read timeout was an EngineError
    # that ended the whole trigger at the first shard, naming none.
    fake, engine = make(job_wait_s=0.5, timeout_s=0.2)
    fake.stuck = True
    jobs = engine.trigger(None)
    assert [(j.target, j.status, j.detail) for j in jobs] == [
        ("dim_city/0", "failed", NOT_STARTED), ("dim_city/1", "failed", NOT_STARTED),
        ("dim_driver/0", "failed", NOT_STARTED)]
    with pytest.raises(EngineError) as caught:
        engine.prepare("r1")
    assert str(caught.value).startswith(f"aresdb prepare failed: dim_city/0: {NOT_STARTED}; dim_city/1: ")
    assert not engine.status().held


def test_a_submit_held_until_the_scheduler_is_free_goes_on_to_the_job(make) -> None:
    fake, engine = make(job_wait_s=10, timeout_s=0.2)
    fake.stuck = True
    threading.Timer(0.5, setattr, (fake, "stuck", False)).start()
    [job] = engine.trigger("dim_city/0")
    assert job.status == "succeeded" and job.duration_s >= 0.5


def test_prepare_snapshots_every_shard_then_holds(make) -> None:
    fake, engine = make()
    fake.write(2)
    state = engine.prepare("r1")
    assert state.facts.position == {
        "dim_city/0": {"redolog_file": 1_700_000_000, "batch_offset": 1},
        "dim_city/1": {"redolog_file": 1_700_000_000, "batch_offset": 1},
        "dim_driver/0": {"redolog_file": 1_700_000_000, "batch_offset": 1},
    }
    assert engine.prepare("r1") is state
    with pytest.raises(EngineBusy, match="held by run r1"):
        engine.trigger(None)
    with pytest.raises(EngineBusy, match="held by run r1"):
        engine.prepare("r2")
    engine.complete("r1")
    engine.complete("r1")
    assert not engine.status().held


def test_prepare_fails_when_any_shard_fails(make) -> None:
    fake, engine = make()
    fake.fail[("dim_city", 1)] = "boom"
    with pytest.raises(EngineError, match="dim_city/1: snapshot job failed at stage snapshot: boom"):
        engine.prepare("r1")
    assert not engine.status().held


def test_status_is_the_job_table(make) -> None:
    fake, engine = make(timeout_s=1)
    status = engine.status()
    assert status.reachable and status.version is None
    assert set(status.details["jobs"]) == {"dim_city|0|snapshot", "dim_city|1|snapshot", "dim_driver|0|snapshot"}
    with fake.hang():
        down = engine.status()
    assert not down.reachable and "did not answer" in (down.error or "")


def test_verify_shows_mutations_since_the_last_snapshot(make) -> None:
    fake, engine = make()
    before = engine.verify()
    fake.write(4)
    after = engine.verify()
    assert after.position["dim_city/0"]["num_mutations"] == 4
    assert before.position["dim_city/0"]["num_mutations"] == 0


def test_restore_prepare_checks_the_root(make, root: Path, tmp_path: Path) -> None:
    _, engine = make()
    engine.restore_prepare(None)
    with pytest.raises(EngineError, match="no data/ directory"):
        engine.restore_prepare(tmp_path / "elsewhere")
    assert engine.data_paths() == [root]


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(BadInputError, match="shardz"):
        validate_engine_settings({"type": "aresdb", "root": "r", "tables": [{"name": "t", "shardz": [1]}]})
    parsed = validate_engine_settings({"type": "aresdb", "root": "r", "tables": [{"name": "t"}]})
    assert parsed.tables[0].shards == [0]


def test_a_password_in_the_debug_url_is_sent_as_basic_auth_and_never_shown(make, caplog) -> None:
    caplog.set_level("DEBUG")
    fake, plain = make()
    secret = "ares-proxy-s3cret"
    engine = AresDBEngine(AresDBSettings(debug_url=f"http://ops:{secret}@{fake.address}", root=str(plain.root),
                                         tables=TABLES, timeout_s=2, job_wait_s=5, poll_interval_s=0.01),
                          base_dir=plain.root.parent)
    state = engine.prepare("r1")
    assert fake.requests[-1].headers.get("authorization", "").startswith("Basic ")
    assert secret not in state.model_dump_json() and secret not in engine.status().model_dump_json()
    engine.close()
    assert secret not in caplog.text
