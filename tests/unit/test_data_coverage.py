"""The preflight refuses a node whose engine keeps its data outside the directories the local
provider would snapshot: such a backup "succeeds" and holds no database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.models import AgentStatus, EngineStatus
from snapctl import __version__
from snapctl.config import parse_inventory
from snapctl.errors import ExitCode
from snapctl.health import NodeProbe
from snapctl.preflight import uncovered_data
from snapctl.providers import NodeVolumes


def _probe(node: str, *data_paths: Path) -> NodeProbe:
    status = AgentStatus(node=node, agent_version=__version__, data_paths=[str(p) for p in data_paths],
                         engine=EngineStatus(engine="sqlite", reachable=True))
    return NodeProbe(node, status=status)


def _inventory(agent: str):
    return parse_inventory(f"cluster: c\nprovider: {{type: local}}\nnodes:\n  - {{name: n1, agent: '{agent}'}}\n")


@pytest.mark.parametrize("agent", ["http://127.0.0.1:7701", "http://localhost:7701", "http://[::1]:7701"])
def test_data_outside_every_volume_of_an_agent_on_this_host_is_critical(tmp_path, agent):
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir()
    other.mkdir()
    [finding] = uncovered_data(_inventory(agent), [_probe("n1", data)],
                               {"n1": NodeVolumes("n1", ["other"], directories=[other])})
    assert finding.severity == "critical" and finding.subject == "n1"
    assert f"keeps its data in {data}, in none of its volumes ({other})" in finding.message


def test_data_inside_a_volume_even_through_a_symlink_is_covered(tmp_path):
    # Compared by device and inode, as a bind mount of the volume would be too (not made here: it
    # needs mount(2)).
    (tmp_path / "releases" / "42" / "db").mkdir(parents=True)
    os.symlink(tmp_path / "releases" / "42", tmp_path / "current")
    volumes = {"n1": NodeVolumes("n1", ["data"], directories=[tmp_path / "current"])}
    probes = [_probe("n1", tmp_path / "releases" / "42" / "db", tmp_path / "current")]
    assert uncovered_data(_inventory("http://127.0.0.1:7701"), probes, volumes) == []


@pytest.mark.parametrize(("agent", "directories", "data"), [
    ("http://db1.internal:7701", [Path("/elsewhere")], "data"),  # another host's paths: not ours to compare
    ("http://10.0.0.5:7701", [Path("/elsewhere")], "data"),
    ("http://127.0.0.1:7701", None, "data"),  # a cloud's disks, not directories
    ("http://127.0.0.1:7701", [Path("/elsewhere")], "absent"),  # e.g. an agent in a container: its own paths
])
def test_nothing_is_said_where_the_paths_cannot_be_compared(tmp_path, agent, directories, data):
    (tmp_path / "data").mkdir()
    volumes = {"n1": NodeVolumes("n1", ["vol-1"], directories=directories)}
    assert uncovered_data(_inventory(agent), [_probe("n1", tmp_path / data)], volumes) == []


def test_a_directory_not_made_yet_counts_where_it_will_be_made_when_the_engines_other_paths_are_here(tmp_path):
    # etcd's backup_dir is made by its first prepare: skipped as "not a path of this host", the
    # first backup went through with its snapshot file written outside every volume.
    live, elsewhere = tmp_path / "etcd" / "data", tmp_path / "elsewhere"
    live.mkdir(parents=True)
    elsewhere.mkdir()
    volumes = {"n1": NodeVolumes("n1", ["data"], directories=[live])}
    inventory = _inventory("http://127.0.0.1:7701")
    [finding] = uncovered_data(inventory, [_probe("n1", elsewhere / "backups", live)], volumes)
    assert f"keeps its data in {elsewhere / 'backups'}, in none of its volumes" in finding.message
    assert uncovered_data(inventory, [_probe("n1", live / "backups" / "etcd", live)], volumes) == []


def test_a_backup_of_a_database_outside_its_volume_is_refused_and_forced_on_record(tmp_path):
    import sqlite3

    (tmp_path / "db").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with sqlite3.connect(tmp_path / "db" / "a.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    (tmp_path / "inv.yaml").write_text(
        "cluster: c\nprovider: {type: local, store: store}\ncatalog: {path: catalog}\nnodes:\n"
        "  - {name: n1, agent: embedded, engine: {type: sqlite, path: db/a.db},\n"
        "     volumes: [{name: data, path: elsewhere}]}\n")

    def snapctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", "inv.yaml"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    refused = snapctl("backup")
    assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stderr
    assert f"n1: its engine keeps its data in {tmp_path / 'db'}, in none of its volumes" in refused.stderr
    assert "Traceback" not in refused.stderr
    planned = snapctl("backup", "--dry-run")
    assert planned.returncode == ExitCode.PREFLIGHT_REFUSED and "in none of its volumes" in planned.stdout
    forced = snapctl("backup", "--force", "--no-prune")
    assert forced.returncode == ExitCode.OK, forced.stderr
