"""The engine contract, run against every ``engine_*_env.py`` beside this file.

What ``node_agent.engines.base.Engine`` promises, checked the same way for every adapter. An env
may document a deliberate difference through ``EngineEnv.extra``:

- ``extra["hang"]``: a context manager during which the engine accepts connections and never
  answers (the prepare-timeout test runs only where it is given);
- ``extra["no_version"]``: why this engine cannot report a version (status still must be reachable);
- ``extra["second_run_prepare"] = "allowed"``: a second run may prepare while the first holds
  (the default expectation is ``EngineBusy``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.engines.base import Engine, EngineSettings
from node_agent.models import EngineState, EngineStatus, JobResult, VerifyFacts
from snapctl.errors import EngineBusy, EngineError
from tests.contract.conftest import EngineEnv

RUN = "run-contract-1"
OTHER_RUN = "run-contract-2"


@pytest.fixture
def env(engine_env: EngineEnv):
    yield engine_env
    # Whatever a test left held must not outlive it (and a failed assertion must not hide that).
    for run in (RUN, OTHER_RUN):
        try:
            engine_env.engine.complete(run)
        except EngineError:
            pass


def _total_rows(facts: VerifyFacts) -> int:
    return sum(table.rows for table in facts.tables.values())


def test_adapter_has_the_engine_shape(env: EngineEnv) -> None:
    engine = env.engine
    assert isinstance(engine, Engine)
    assert isinstance(engine.name, str) and engine.name
    assert issubclass(type(engine).settings_model, EngineSettings)


def test_status_is_reachable_with_a_version(env: EngineEnv) -> None:
    status = env.engine.status()
    assert isinstance(status, EngineStatus)
    assert status.engine == env.engine.name
    assert status.reachable, status.error
    assert status.error is None
    if "no_version" not in env.extra:
        assert status.version, "status must report the engine's version"
    assert not status.held


def test_prepare_returns_the_evidence(env: EngineEnv) -> None:
    env.write(3)
    state = env.engine.prepare(RUN)
    assert isinstance(state, EngineState)
    assert state.engine == env.engine.name
    assert state.facts.tables or state.facts.position, "prepare must record facts a restore can be checked against"
    assert state.prepared_at.tzinfo is not None


def test_prepare_twice_for_the_same_run_is_a_no_op(env: EngineEnv) -> None:
    first = env.engine.prepare(RUN)
    second = env.engine.prepare(RUN)
    assert second.prepared_at == first.prepared_at
    assert second.facts == first.facts
    status = env.engine.status()
    assert status.held
    assert status.held_by is None, "this agent's own hold is not someone else's"


def test_prepare_from_another_run_while_held_is_refused(env: EngineEnv) -> None:
    env.engine.prepare(RUN)
    if env.extra.get("second_run_prepare") == "allowed":
        env.engine.prepare(OTHER_RUN)
        return
    with pytest.raises(EngineBusy) as caught:
        env.engine.prepare(OTHER_RUN)
    assert RUN in str(caught.value), "the refusal names the run holding the engine"
    assert env.engine.status().held


def test_complete_twice_is_fine_and_releases(env: EngineEnv) -> None:
    env.engine.prepare(RUN)
    env.engine.complete(RUN)
    env.engine.complete(RUN)
    assert not env.engine.status().held
    again = env.engine.prepare(OTHER_RUN)  # released for real: a new run can hold it
    assert again.engine == env.engine.name
    env.engine.complete(OTHER_RUN)


def test_complete_with_nothing_held_is_fine(env: EngineEnv) -> None:
    env.engine.complete(RUN)
    assert not env.engine.status().held


def test_writes_go_on_after_complete(env: EngineEnv) -> None:
    env.engine.prepare(RUN)
    if not env.writes_blocked_while_prepared:
        env.write(1)
    env.engine.complete(RUN)
    before = env.engine.verify()
    env.write(2)
    assert env.engine.verify() != before


def test_trigger_returns_one_finished_result_per_job(env: EngineEnv) -> None:
    env.write(2)
    jobs = env.engine.trigger(None)
    if not env.supports_trigger:
        # No snapshot of its own (its files are the snapshot): nothing to run, nothing failed.
        assert jobs == []
        return
    assert jobs, "trigger(None) runs every job of the engine"
    for job in jobs:
        assert isinstance(job, JobResult)
        assert job.status == "succeeded", job.detail
        assert job.target


def test_verify_reflects_new_data(env: EngineEnv) -> None:
    before = env.engine.verify()
    assert isinstance(before, VerifyFacts)
    env.write(5)
    after = env.engine.verify()
    assert after != before
    if before.tables:
        assert _total_rows(after) > _total_rows(before)


def test_data_paths_are_absolute_and_not_empty(env: EngineEnv) -> None:
    paths = env.engine.data_paths()
    assert paths
    assert all(isinstance(path, Path) and path.is_absolute() for path in paths)


@pytest.mark.timeout(120)
def test_an_engine_that_never_answers_fails_prepare_in_time(env: EngineEnv) -> None:
    hang = env.extra.get("hang")
    if hang is None:
        pytest.skip("this env cannot make its engine stop answering")
    with hang():
        with pytest.raises(EngineError):
            env.engine.prepare(RUN)
        status = env.engine.status()
        assert not status.reachable
        assert status.error
    assert not env.engine.status().held, "a prepare that failed must not leave the engine held"
