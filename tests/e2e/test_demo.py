"""`snapctl demo run`, the README's first command, as a user runs it; and stopped by SIGTERM. Either
way every agent and writer process it started is stopped when it ends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.conftest import snapctl_sigtermed_after
from tests.e2e.conftest import make_inventory


def processes_naming(directory: Path) -> list[str]:
    """Live processes whose command line names ``directory``: the demo's agents (their config) and
    its writer (the databases)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if str(directory) in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    path, _ = make_inventory(tmp_path)
    try:
        yield path
    finally:  # never leave a test's processes behind, whatever the code under test did
        subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "down", "-i", str(path)], cwd=tmp_path,
                       capture_output=True, timeout=60, check=False)


def test_demo_run_backs_up_restores_matching_rows_and_stops_everything(inventory):
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "run", "-i", str(inventory), "-o", "json"],
                            cwd=inventory.parent, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == ExitCode.OK, result.stderr
    data = json.loads(result.stdout)["data"]
    assert data["backup"]["status"] == "succeeded"
    assert [(n["node"], n["mismatches"]) for n in data["restore"]["nodes"]] == [
        ("node1", []), ("node2", []), ("node3", [])]
    assert not any(node["running"] for node in data["demo_down"]["nodes"])
    assert processes_naming(inventory.parent) == []


def test_a_demo_run_stopped_by_sigterm_as_it_starts_stops_everything_it_started(inventory):
    # The agents and the writer are up, then SIGTERM: before anything else of the run.
    result = snapctl_sigtermed_after("snapctl.demo", "up", "demo", "run", "-i", str(inventory), "-o", "json",
                                     cwd=inventory.parent)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert result.stderr.splitlines()[-1] == "snapctl: error: interrupted (Ctrl-C or SIGTERM)"
    assert json.loads(result.stdout) == {"schema_version": 1, "error": "interrupted (Ctrl-C or SIGTERM)",
                                         "hint": None, "exit_code": ExitCode.INTERRUPTED}  # the one document
    assert processes_naming(inventory.parent) == []


def test_demo_down_never_stops_a_process_that_only_reuses_a_demo_pid(inventory):
    # `demo down` SIGTERMed, then SIGKILLed, whatever process had the pid in its files: after a
    # reboot or a long while, a reused pid, or a pid file planted in the demo's directory.
    state = inventory.parent / ".snapctl-demo"
    state.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for name in ("node1", "node2", "node3", "writer"):
            (state / f"{name}.pid").write_text(str(bystander.pid))
        result = subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "down", "-i", str(inventory), "-o",
                                 "json"], cwd=inventory.parent, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == ExitCode.OK, result.stderr
        assert bystander.poll() is None, "a process the demo never started was stopped"
        assert [n["pid"] for n in json.loads(result.stdout)["data"]["nodes"]] == [None, None, None]
        assert not any(state.glob("*.pid"))  # stale: removed
    finally:
        bystander.kill()
        bystander.wait()
