"""Each benchmark script runs at a tiny size and prints its table. No timing is asserted:
benchmarks report numbers, tests only check that the scripts work end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout: float = 240) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_freeze_prints_scaling_baseline_and_rate_limited_tables() -> None:
    out = bench("bench.freeze", "--quick", "--nodes", "1,10", "--repeats", "1", "--bound-nodes", "14")
    assert "### Freeze window and skew" in out
    assert "### Sequential per-node baseline vs snapctl" in out
    assert "### Rate limit binding" in out
    rows = [line for line in out.splitlines() if line.startswith(("| cluster", "| per-node"))]
    assert len(rows) == 2, out


def test_trace_follows_every_complete_to_the_agents_and_back() -> None:
    out = bench("bench.trace", "--nodes", "3", "--runs", "2")
    assert "### Where the margin goes: 3 nodes" in out
    margins, phases_table = out.split("### The run's phases")
    rows = [line for line in margins.splitlines() if line.startswith("| ") and " / " in line]
    # Seven stages, each with a p50 / p99 for both runs: every node's complete was seen at its agent.
    assert len(rows) == 7 and all(row.count(" / ") == 2 for row in rows), out
    assert "CPU per node from sending the prepares to writing the manifest" in out
    # Then the run phase by phase: each a duration, and the cores busy in it when it lasted long enough.
    assert phases_table.startswith(": 3 nodes")
    phases = [line for line in phases_table.splitlines() if line.startswith("| ") and " ms," in line]
    assert len(phases) == 7 and all(row.count(" ms,") == 2 for row in phases), out


def test_floor_holds_the_same_cluster_every_way_and_prints_each_margin() -> None:
    out = bench("bench.floor", "--nodes", "3", "--runs", "2")
    assert "### The margin's floor, and what each part of a run adds: 2 alternate runs" in out
    margins, walls = (line for line in out.splitlines() if line.startswith("| 3 "))
    # The two floors, snapctl's client with sleeps and with the provider's calls, and backup() on
    # threads and by default: each a p50 / p99, so every variant held and released every node.
    assert margins.count(" / ") == 6, out
    # The floor's whole run and backup()'s, each with the hold skew its engines reported.
    assert "### Wall time: the floor's whole run" in out
    assert len([cell for cell in walls.split("|") if cell.strip()]) == 7, out


def test_the_floor_stops_with_the_agents_refusal_rather_than_waiting_for_it() -> None:
    from bench.floor import _floor_margins
    from bench.simcluster import SimCluster

    with SimCluster(nodes=2, prepare_latency_s=0.0) as cluster:
        cluster.token = "not-the-token"
        with pytest.raises(RuntimeError, match="agent answered 401"):
            _floor_margins(cluster, "timers", 0.01)


def test_cloud_sdk_measures_a_real_sdk_cold_and_warmed_up_both_kinds_of_backup_and_four_ways_of_calling() -> None:
    out = bench("bench.cloud_sdk", "--quick", "--providers", "aws", "--nodes", "2", "--modes-nodes", "2")
    assert "### One provider in a new process" in out and "### A backup of 2 simulated agents" in out
    [calls] = [line for line in out.splitlines() if line.startswith("| aws ") and line.count("|") == 5]
    assert all(cell.strip() not in ("", "-", "nan") for cell in calls.split("|")[1:-1]), out
    backups, modes = out.split("### Create calls made four ways")
    runs = [line for line in backups.splitlines() if line.startswith("| aws ") and line.count("|") == 8]
    assert [row.split("|")[2].strip() for row in runs] == ["warm_up before the holds",
                                                           "loaded by the first create call"], out
    ways = [line.split("|") for line in modes.splitlines() if line.startswith("| aws ")]
    assert [row[2].strip() for row in ways] == ["blocking, threads", "blocking, worker", "async client, worker's loops",
                                                "async client, snapctl's loop"]
    assert all(cell.strip() not in ("", "-", "nan") for row in ways for cell in row[1:-1]), out


def test_tls_fanout_answers_every_client_and_backs_up_over_tls_and_plain_http() -> None:
    out = bench("bench.tls_fanout", "--nodes", "4", "--rounds", "2", "--backups", "1")
    assert "### Agents over TLS" in out and "### Backups over TLS and plain http" in out
    rows = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| 4 ")]
    assert rows == ["snapctl transport, TLS", "httpx, a client per agent, TLS", "snapctl transport, plain http",
                    "TLS", "plain http"], out


def test_progress_runs_each_reporter_of_the_cli() -> None:
    out = bench("bench.progress", "--quick")
    assert "### What the progress output costs" in out
    rows = [line for line in out.splitlines() if line.startswith("| 10 ")]
    assert [row.split("|")[2].strip() for row in rows] == ["none", "log lines", "live table"], out


def test_status_fanout_reports_every_node_in_the_cli_json() -> None:
    out = bench("bench.status_fanout", "--nodes", "5", "--repeats", "1")
    assert "### Status fan-out over 5 agents" in out
    assert "5 nodes in JSON" in out


def test_startup_shows_no_cloud_sdk_for_a_sim_inventory() -> None:
    out = bench("bench.startup", "--repeats", "1")
    assert "| snapctl status --help" in out
    sdk_rows = [line for line in out.splitlines() if line.startswith("| snapctl") and "INV" in line]
    assert sdk_rows and all(line.rstrip(" |").endswith("yes") for line in sdk_rows), out


def test_local_provider_compares_with_cp_and_cleans_up(tmp_path: Path) -> None:
    out = bench("bench.local_provider", "--size", "8M", "--repeats", "1", "--dir", str(tmp_path))
    assert "### Local provider: full snapshot" in out
    assert "| cp -a " in out
    assert "### Incremental after changing 5% of the files" in out
    assert "files hard-linked" in out
    assert list(tmp_path.iterdir()) == []  # generated data removed


def test_agent_round_trips_for_sqlite_and_sim_in_plain_http_and_over_tls() -> None:
    out = bench("bench.agent", "--rounds", "3")
    assert "| sqlite " in out and "| sim " in out and "| sim, tls " in out and "| agent CPU ms per call |" in out


def test_shards_backs_up_every_share_at_once_for_each_number_of_loops() -> None:
    out = bench("bench.shards", "--nodes", "6", "--loops", "1,3", "--sets", "1", "--runs", "1")
    assert "### Several orchestrator loops, an upper bound: 6 lean agents" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith(("| 1 ", "| 3 "))]
    # Each number of loops split the 6 nodes evenly and measured every node's freeze and margin.
    assert [row[:3] for row in rows] == [["1", "6", "1"], ["3", "2", "1"]], out
    assert all(row[4].count(" / ") == 1 and row[5].count(" / ") == 1 for row in rows), out


@pytest.mark.parametrize("only", ["startup"])
def test_run_heads_the_output_with_the_machine(only: str) -> None:
    out = bench("bench.run", "--quick", "--only", only)
    assert out.startswith("## snapctl benchmarks (quick)")
    assert "Machine: " in out and "cores" in out


@pytest.mark.parametrize("script", ["bench.freeze", "bench.trace", "bench.floor", "bench.shards", "bench.run"])
def test_help_says_what_the_script_measures_in_whole_sentences(script: str) -> None:
    import importlib

    from bench.common import summary

    expected = summary(importlib.import_module(script).__doc__)
    assert expected.endswith(".") and "\n" not in expected  # the docstring's first paragraph, not its first line
    out = " ".join(bench(script, "--help", timeout=60).split())
    assert expected in out


def test_catalog_scale_times_every_command_over_a_local_and_an_s3_catalog() -> None:
    out = bench("bench.catalog_scale", "--runs", "40")
    assert "### Catalog at scale" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith(("| local ", "| s3 "))]
    assert {row[0] for row in rows} == {"local", "s3"} and len(rows) == 2 * 13, out
    # Every command ran to its end (status and the dry run find the agents unreachable; verify the
    # snapshots missing), and on S3 each made its requests over the wire.
    assert {row[2]: row[4] for row in rows if row[0] == "local"}["prune (keeps ~50)"] == "0", out
    assert all(int(row[7]) > 0 for row in rows if row[0] == "s3"), out
