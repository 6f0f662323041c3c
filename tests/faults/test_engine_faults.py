"""An engine that accepts connections and never answers. The agent bounds every engine call by the
engine's ``timeout_s`` and answers 504; snapctl refuses at preflight (--force too: it cannot make
the engine answer), or (when the engine goes silent after it, or hangs mid-run) rolls the run back
and releases every other node. A hold the engine could
not be told to release ends by the agent's lease once the engine answers again.

node1 runs the QuestDB adapter (against a silent socket, or the /exec fake in its ``hang()``
mode); node2 and node3 run SQLite.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.conftest import LOOPBACK
from tests.fakes.questdb import FakeQuestDB
from tests.faults.harness import FaultCluster, wait_until


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel's backlog) and never reads or answers."""
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(64)
        yield silent.getsockname()[1]


def _questdb(root: Path, url: str) -> dict:
    (root / "db").mkdir(parents=True, exist_ok=True)
    return {"type": "questdb", "url": url, "root": str(root), "timeout_s": 1}


def test_a_silent_engine_is_refused_at_preflight_even_forced(make_cluster, tmp_path, silent_port):
    # --force took the run past it, to fail at the prepare: forcing cannot make a silent engine
    # answer, so the refusal says what to fix instead of offering it.
    cluster: FaultCluster = make_cluster(engines={"node1": _questdb(tmp_path / "qdb", f"http://{LOOPBACK}:{silent_port}")})
    for args in ((), ("--force",)):
        refused = cluster.snapctl("backup", *args)
        assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stderr
        assert "node1" in refused.stderr and "Traceback" not in refused.stderr
        assert "pass --force" not in refused.stderr
    assert cluster.held() == set() and cluster.snapshot_dirs() == []


def test_an_engine_gone_silent_after_the_preflight_rolls_the_run_back(make_cluster, tmp_path):
    with FakeQuestDB() as questdb, contextlib.ExitStack() as silent:
        questdb.tables.update({"trades": 10})
        cluster: FaultCluster = make_cluster(engines={"node1": _questdb(tmp_path / "qdb", questdb.url)})
        inventory = cluster.write_inventory(tmp_path / "stop.yaml", provider={"stop_warm_up": True})
        result = cluster.backup_changed_after_preflight(lambda: silent.enter_context(questdb.hang()),
                                                        inventory=inventory)
        assert result.returncode == ExitCode.RUN_FAILED, result.stderr
        assert "node node1" in result.stderr and "did not answer" in result.stderr
        run_id = max(cluster.run_ids())
        manifest = cluster.manifest(run_id)
        assert manifest["status"] == "failed" and not manifest["forced"]
        assert cluster.held() == set()
        for node in ("node2", "node3"):
            assert cluster.released_by(node, run_id) == "completed" and cluster.writable(node)
        assert cluster.snapshot_dirs(run_id) == []


def test_an_engine_that_hangs_during_complete_is_released_by_the_lease_once_it_answers(make_cluster, tmp_path):
    with FakeQuestDB() as questdb:
        questdb.tables.update({"trades": 10})
        cluster: FaultCluster = make_cluster(engines={"node1": _questdb(tmp_path / "qdb", questdb.url)})
        gate = cluster.agents["node1"].proxy.gate("POST /v1/complete")
        process = cluster.popen("backup")
        gate.wait()
        assert questdb.held  # the checkpoint is taken; now the engine stops answering
        with questdb.hang():
            gate.open()
            _, err = process.communicate(timeout=60)
            assert process.returncode == ExitCode.RUN_FAILED, err
            assert "node node1" in err and "did not answer" in err
            [run_id] = cluster.run_ids()
            assert cluster.manifest(run_id)["status"] == "failed"
            assert cluster.snapshot_dirs(run_id) == []
            for node in ("node2", "node3"):
                assert cluster.released_by(node, run_id) == "completed" and cluster.writable(node)
            assert cluster.lease("node1") is not None  # the agent could not release: it keeps trying
        # Answering again, the engine is released by the agent when the dead run's lease runs out.
        wait_until(lambda: not questdb.held, 20, "questdb's checkpoint to be released")
        # The agent logs the expiry once the engine's release returned: a moment after the fake saw it.
        wait_until(lambda: cluster.released_by("node1", run_id) == "expired", 10, "the agent to log the expiry")


def test_a_prepare_that_arrives_after_its_runs_complete_is_refused_and_never_holds(make_cluster, tmp_path):
    """A rollback's complete goes out on a connection of its own and can reach an agent before
    that run's prepare. Here the network holds node2's prepare back until the run has rolled back:
    the complete finds nothing held, and the prepare, delivered after it, must never hold."""
    cluster: FaultCluster = make_cluster()
    slow_start = cluster.write_inventory(tmp_path / "lead.yaml", policy={"hold_lead_s": "2s"},
                                         provider={"stop_warm_up": True})
    late = cluster.agents["node2"].proxy.gate("POST /v1/prepare")

    # node1's agent dies between the preflight and the prepares (--force no longer backs up past
    # an unreachable agent).
    forced = cluster.backup_changed_after_preflight(lambda: cluster.kill_agent("node1"), inventory=slow_start)
    assert forced.returncode == ExitCode.RUN_FAILED, forced.stderr
    run_id = max(cluster.run_ids())
    node2 = cluster.manifest(run_id)["nodes"]["node2"]
    assert "complete failed" not in (node2["error"] or "")  # nothing was held there: not an error
    late.open()
    log = cluster.agents["node2"].log
    wait_until(lambda: f"prepare of run {run_id} refused: its complete came first" in log.read_text(errors="replace"),
               10, "node2's agent to refuse the late prepare")
    time.sleep(2.5)  # past the instant its hold would have begun
    assert not cluster.lease("node2") and cluster.writable("node2")


def test_a_rollback_while_prepares_wait_for_their_hold_instant_leaves_nothing_held(make_cluster, tmp_path):
    """Cluster runs send every node one instant to begin its hold (hold_at), here 4 s ahead.
    node1's agent is gone (since the preflight), so its prepare fails at once, while node2 and node3
    still wait for their instant: the rollback's complete cancels their prepares, and they never
    hold. (An engine that fails only once its own hold began fails the run after the others held:
    the prepare waits for the instant too.)"""
    cluster: FaultCluster = make_cluster()
    slow_start = cluster.write_inventory(tmp_path / "lead.yaml", policy={"hold_lead_s": "4s"},
                                         provider={"stop_warm_up": True})

    forced = cluster.backup_changed_after_preflight(lambda: cluster.kill_agent("node1"), inventory=slow_start)
    assert forced.returncode == ExitCode.RUN_FAILED, forced.stderr
    run_id = max(cluster.run_ids())
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "failed" and manifest["hold_at"] is not None
    for node in ("node2", "node3"):
        log = cluster.agents[node].log.read_text(errors="replace")
        # The rollback's complete either finds the prepare waiting and cancels it, or (on another
        # connection) overtakes it, and the agent then refuses the prepare: never held either way.
        assert (f"prepare of run {run_id} cancelled by its complete before its hold began" in log
                or f"prepare of run {run_id} refused: its complete came first" in log), log[-2000:]
    time.sleep(4.5)  # past the instant the holds would have begun
    assert not cluster.lease("node2") and not cluster.lease("node3")
    assert cluster.writable("node2") and cluster.writable("node3")
    assert cluster.snapshot_dirs(run_id) == []
