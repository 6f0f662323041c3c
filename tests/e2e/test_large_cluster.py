"""A 120-node cluster through the real CLI: lean simulated agents on loopback (bench.simcluster,
one process serving them all), the local provider (as the third-party `slow` one, which adds to
each ref the pid of the process that made it), and the snapshot calls dealt out to the provider
worker's three processes (two of them forked from the first). Every node is held, snapshotted and
released, every snapshot is on disk with its node's data, and verify finds them. The next run,
incremental, works from what those processes wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapctl.provider_worker import worker_processes
from snapctl.providers import available_providers, create_provider

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = Path(__file__).parent / "thirdparty"
NODES = 120
PROVIDER = {"type": "slow", "store": "store"}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # SimCluster puts the bench plugins on sys.path and PYTHONPATH; undone after the test, so that
    # no other test of this worker sees the simulated engine and provider.
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(THIRD_PARTY), os.environ.get("PYTHONPATH")])))
    from bench.simcluster import SimCluster

    data = tmp_path / "data"
    (tmp_path / "cluster").mkdir()
    for index in range(1, NODES + 1):
        node_dir = data / f"node{index:04d}"
        node_dir.mkdir(parents=True)
        (node_dir / "table.dat").write_bytes(f"rows of node {index}\n".encode() * 64)
    with SimCluster(nodes=NODES, prepare_latency_s=0.02, provider=PROVIDER,
                    volumes_of=lambda name: [{"name": "data", "path": str(data / name)}],
                    directory=tmp_path / "cluster") as sim:
        sim.write_inventory()
        yield sim, data
    from node_agent.engines.base import available_engines

    available_engines.cache_clear()
    available_providers.cache_clear()


def _snapctl(*args: str, inventory: Path) -> tuple[subprocess.CompletedProcess, int]:
    """What the CLI did, and its pid."""
    with subprocess.Popen([sys.executable, "-m", "snapctl.cli", *args, "-i", str(inventory), "-o", "json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        stdout, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), process.pid


def test_a_120_node_backup_through_three_worker_processes_is_on_disk_and_verifies(cluster, tmp_path):
    sim, data = cluster
    provider = create_provider(PROVIDER, cluster="bench", base_dir=sim.directory)
    assert worker_processes(NODES, NODES, provider.capabilities) == 3  # what this test is about

    first, snapctl_pid = _snapctl("backup", inventory=sim.inventory_path)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads(first.stdout)["data"]
    assert manifest["status"] == "succeeded" and manifest["snapshots_completed"] is True
    assert len(manifest["nodes"]) == NODES
    for name, record in manifest["nodes"].items():
        (ref,) = record["snapshots"]
        assert ref["node"] == name and ref["state"] == "completed"
        copied = Path(ref["extra"]["path"]) / "data" / "table.dat"
        assert copied.read_bytes() == (data / name / "table.dat").read_bytes()
        assert record["freeze_window_s"] > 0 and record["complete_acked_at"]
    made_by = {record["snapshots"][0]["extra"]["pid"] for record in manifest["nodes"].values()}
    assert len(made_by) == 3 and not made_by & {snapctl_pid, os.getpid()}, made_by

    (data / "node0007" / "table.dat").write_bytes(b"changed after the first run\n")
    second, _ = _snapctl("backup", inventory=sim.inventory_path)
    assert second.returncode == 0, second.stderr[-3000:]
    ref = json.loads(second.stdout)["data"]["nodes"]["node0007"]["snapshots"][0]
    assert (Path(ref["extra"]["path"]) / "data" / "table.dat").read_bytes() == b"changed after the first run\n"

    verified, _ = _snapctl("verify", "latest", inventory=sim.inventory_path)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
