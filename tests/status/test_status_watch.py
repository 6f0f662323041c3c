"""`snapctl status --watch`: a fresh look every interval until stopped, one valid JSON document per
refresh, a textfile that goes away mid-watch, and intervals refused before they hammer the agents."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from snapctl.entry import optional_watch_seconds
from snapctl.errors import BadInputError, ExitCode
from snapctl.status import ClusterStatus, watch_status
from tests.conftest import with_ctrl_c
from tests.status.conftest import VALIDATOR, load, record_run, sqlite_nodes, write_inventory


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_watch_json_prints_one_valid_document_per_refresh_until_stopped(tmp_path, sig):
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "snapctl.cli", "status", "-i", "inventory.yaml", "--watch", "0.2", "-o", "json"]
    proc = subprocess.Popen(with_ctrl_c(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=30)
    documents = [json.loads(line) for line in lines]
    for document in documents:
        VALIDATOR.validate(document)
    assert len({d["data"]["checked_at"] for d in documents}) == 3, "each line is a fresh look"
    assert proc.returncode == ExitCode.INTERRUPTED


def test_watch_in_process_refreshes_and_remembers(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    seen: list[ClusterStatus] = []
    last = asyncio.run(watch_status(inventory, 0.1, seen.append, refreshes=3))
    assert len(seen) == 3 and last is seen[-1]
    with pytest.raises(BadInputError, match="--watch 0: the interval must be a number of seconds more than zero"):
        asyncio.run(watch_status(inventory, 0, seen.append, refreshes=1))


def test_a_watch_whose_textfile_directory_goes_away_keeps_watching_with_a_finding(tmp_path):
    # `status --watch 0.5 --textfile tf/s.prom`, then `rm -rf tf`: the watch ended, exit 2 ("tf does
    # not exist"), though a textfile that cannot be written is documented as a finding, never a lost status.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    directory = tmp_path / "tf"
    directory.mkdir()
    seen: list[ClusterStatus] = []

    def show(status: ClusterStatus) -> None:
        seen.append(status)
        if len(seen) == 1:
            (directory / "s.prom").unlink()
            directory.rmdir()

    asyncio.run(watch_status(inventory, 0.1, show, textfile=directory / "s.prom", refreshes=3))
    assert len(seen) == 3 and seen[0].verdict.level == "healthy"
    assert [(f.severity, f.subject) for f in seen[-1].verdict.findings] == [("degraded", "metrics")]
    assert "does not exist" in seen[-1].verdict.findings[0].message


@pytest.mark.parametrize(("argv", "expected"), [
    (["status", "--watch"], ["status", "--watch", "2"]),
    (["status", "--watch", "-o", "json"], ["status", "--watch", "2", "-o", "json"]),
    (["status", "-w", "5"], ["status", "-w", "5"]),
    (["list", "--watch"], ["list", "--watch"]),
    (["status", "--watch", "-1"], ["status", "--watch", "-1"]),  # a value: the interval's check refuses it
])
def test_a_bare_watch_means_every_two_seconds(argv, expected):
    assert optional_watch_seconds(argv) == expected


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "-0.5"])
def test_a_watch_interval_that_is_no_number_of_seconds_is_refused(tmp_path, seconds):
    # `--watch nan` asked every agent again as fast as it could, forever (NaN <= 0 is false); `inf` never refreshed.
    # `--watch -1` said "No such option: -1": the bare --watch's 2 s was put before it.
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1))
    proc = subprocess.run([sys.executable, "-m", "snapctl.cli", "status", "-i", "inventory.yaml", "--watch", seconds,
                           "-o", "json"], cwd=tmp_path, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == ExitCode.BAD_INPUT
    document = json.loads(proc.stdout)
    assert document["error"] == f"--watch {seconds}: the interval must be a number of seconds more than zero"
    assert document["hint"] == "e.g. --watch 5, or a bare --watch for every 2 seconds"


def test_a_watch_faster_than_the_agents_rate_limit_allows_is_refused(tmp_path):
    # `--watch 0.001` tripped every agent's rate limit (429), and status then called them all
    # unreachable: critical, for a cluster that was fine.
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1))
    proc = subprocess.run([sys.executable, "-m", "snapctl.cli", "status", "-i", "inventory.yaml", "--watch", "0.001",
                           "-o", "json"], cwd=tmp_path, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["error"].startswith("--watch 0.001: at least 0.1s between refreshes")
