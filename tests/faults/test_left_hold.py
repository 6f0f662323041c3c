"""An engine left held, with real agent processes and a QuestDB (tests/fakes) whose checkpoint is
the server's: it outlives the agent that took it, and only a release reaches it. With the dead
agent's hold record lost too, nothing releases such a hold: the rollback must not count the node as released, status must say it
is critical, and the preflight must not offer (nor take) --force past it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.fakes.questdb import FakeQuestDB
from tests.faults.harness import FaultCluster

pytestmark = pytest.mark.slow

DOC = "docs/agent.md, 'an engine left held'"


def _questdb(root: Path, url: str, **extra) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    return {"type": "questdb", "url": url, "root": str(root), "timeout_s": 2, **extra}


def _hint(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.lstrip().startswith("hint:"))


def _node1(status: dict) -> dict:
    [finding] = [f for f in status["data"]["verdict"]["findings"] if f["subject"] == "node1"]
    return finding


# The agent was SIGKILLed while its checkpoint was held and started again (systemd's Restart=): the
# new agent knew nothing of the run, refused its renew, and answered the rollback's complete 409
# "nothing is held". snapctl printed "node1: released (rolled back)" while QuestDB stayed held by
# the dead agent's checkpoint; status then said only degraded, and the preflight's hint offered a
# --force whose run the agent's prepare refused all the same.
def _backup_whose_agent_restarts_without_its_record(make_cluster, tmp_path: Path,
                                                     questdb: FakeQuestDB) -> tuple[FaultCluster, subprocess.Popen, str]:
    """A backup held on node1's QuestDB, whose agent is killed and started again with its hold
    record lost, and which has read that agent's refusal of its renew: let go (``node1.go``), it
    rolls back, and the new agent answers the complete that it holds nothing."""
    questdb.tables.update({"trades": 10})
    cluster: FaultCluster = make_cluster(engines={"node1": _questdb(tmp_path / "qdb", questdb.url)},
                                         nodes=("node1", "node2"))
    stopping = cluster.write_inventory(tmp_path / "stopping.yaml", provider={"stop": {"node1": "after"}})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    cluster.wait_reached("node1.made")
    run_id = cluster.lock_record()["run_id"]
    assert questdb.held

    cluster.kill_agent("node1")
    # Its hold record lost with it (a state_dir on tmpfs across a reboot, or an agent from before
    # hold records): the agent started next has nothing to release the checkpoint from.
    records = list((Path(os.environ["XDG_STATE_HOME"]) / "snapctl-agent").glob("hold-node1-*.json"))
    assert len(records) == 1, records
    records[0].unlink()
    cluster.start_agent("node1")
    proxy = cluster.agents["node1"].proxy
    first = proxy.gate("POST /v1/renew")  # snapctl renews every second: the new agent refuses
    first.wait()
    first.open()
    proxy.gate("POST /v1/renew").wait()  # the next one: snapctl has read the refusal of the first
    return cluster, process, run_id


def test_a_rollback_never_counts_a_node_released_whose_engine_is_still_held(make_cluster, tmp_path):
    with FakeQuestDB() as questdb:
        cluster, process, run_id = _backup_whose_agent_restarts_without_its_record(make_cluster, tmp_path, questdb)
        cluster.go("node1.go")
        _, err = process.communicate(timeout=90)

        assert process.returncode == ExitCode.RUN_FAILED, err
        assert "Traceback" not in err
        assert questdb.held, "nothing here releases the dead agent's checkpoint"
        assert "node1: released" not in err and "node2: released" in err
        error, hint = err.splitlines()[-2:]
        assert "node1: not released: its agent answered the complete that it holds nothing, but its status " \
               "shows the engine still held by another questdb client" in error, error
        assert f"node1 may still be held: see {DOC}" in hint, hint
        manifest = cluster.manifest(run_id)
        assert manifest["status"] == "failed" and "not released" in manifest["nodes"]["node1"]["error"]
        assert "not released" not in (manifest["nodes"]["node2"]["error"] or "")

        status = cluster.snapctl("status", "-o", "json")
        assert status.returncode == ExitCode.CRITICAL, status.stdout + status.stderr
        finding = _node1(status.json)
        assert finding["severity"] == "critical" and finding["forceable"] is False
        # The catalog names the run the checkpoint began in (QuestDB cannot say who took it).
        assert finding["message"].startswith("engine already held by another questdb client")
        assert f"during run {run_id}, which failed at " in finding["message"], finding["message"]
        assert DOC in finding["hint"] and finding in status.json["data"]["verdict"]["preflight_refusals"]

        for args in ((), ("--force",)):
            refused = cluster.snapctl("backup", "--no-prune", *args)
            assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stdout + refused.stderr
            hint = _hint(refused.stderr)
            assert DOC in hint and "pass --force" not in hint, hint
            assert f"during run {run_id}" in refused.stderr
        assert questdb.held


def test_a_rollback_whose_agent_status_cannot_be_read_after_nothing_is_held_says_the_node_may_not_be_released(
        make_cluster, tmp_path):
    # The agent answers the rollback's complete that it holds nothing, then dies before its status
    # (the only word on whether the engine is still held) can be read: not counted released either.
    with FakeQuestDB() as questdb:
        cluster, process, run_id = _backup_whose_agent_restarts_without_its_record(make_cluster, tmp_path, questdb)
        status = cluster.agents["node1"].proxy.gate("GET /v1/status")
        cluster.go("node1.go")
        status.wait(timeout=60)
        cluster.kill_agent("node1")
        status.open()  # on to an agent that is gone, as is every retry
        _, err = process.communicate(timeout=90)

        assert process.returncode == ExitCode.RUN_FAILED, err
        assert "Traceback" not in err
        assert questdb.held
        assert "node1: released" not in err and "node2: released" in err
        error, hint = err.splitlines()[-2:]
        assert "node1: may not be released: its agent answered the complete that it holds nothing, and its " \
               "status could not be read (" in error, error
        assert f"); its engine may still be held ({DOC})" in error, error
        assert f"node1 may still be held: see {DOC}" in hint, hint
        manifest = cluster.manifest(run_id)
        assert manifest["status"] == "failed" and "may not be released" in manifest["nodes"]["node1"]["error"]


def test_force_does_not_get_past_an_engine_held_by_another_client_unless_its_prepare_releases_it(make_cluster,
                                                                                                 tmp_path):
    # The reviewer's force.py: a checkpoint another client holds, `backup --force` (the preflight's
    # hint) got past the preflight and its prepare was refused: exit 1, a run failed for nothing.
    with FakeQuestDB() as questdb:
        questdb.tables.update({"trades": 10})
        questdb.hold_as_someone_else()
        since = questdb.held_since
        engine = _questdb(tmp_path / "qdb", questdb.url)
        cluster: FaultCluster = make_cluster(engines={"node1": engine}, nodes=("node1",))
        for args in ((), ("--force",)):
            result = cluster.snapctl("backup", "--no-prune", *args)
            assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stdout + result.stderr
            assert "node1: engine already held by another questdb client" in result.stderr
            hint = _hint(result.stderr)
            assert DOC in hint and "force_release: true" in hint and "pass --force" not in hint, hint
        assert questdb.held_since == since, "no prepare reached the engine"
        assert all(not cluster.manifest(r)["forced"] for r in cluster.run_ids())

        # With force_release (its agent's prepare releases what it did not make), --force does help.
        cluster.kill_agent("node1")
        releasing = {**engine, "force_release": True}
        config = cluster.agents["node1"].config
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "engine": releasing}))
        cluster.engines["node1"] = releasing
        cluster.start_agent("node1")
        inventory = cluster.write_inventory(tmp_path / "releasing.yaml")
        assert cluster.snapctl("backup", "--no-prune", inventory=inventory).returncode == ExitCode.PREFLIGHT_REFUSED
        forced = cluster.snapctl("backup", "--no-prune", "--force", "-o", "json", inventory=inventory)
        assert forced.returncode == ExitCode.OK, forced.stdout + forced.stderr
        assert cluster.manifest(forced.json["data"]["run_id"])["forced"] is True and not questdb.held
