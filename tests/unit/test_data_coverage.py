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
from snapctl.config import Inventory, load_inventory, parse_inventory
from snapctl.errors import ExitCode
from snapctl.health import NodeProbe
from snapctl.preflight import misplaced_data, uncovered_data
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


def test_another_nodes_agent_says_nothing_of_this_nodes_data(tmp_path):
    # Two nodes' agent: addresses swapped: their data was "in none of its volumes" too, with the
    # hint to list it in the volumes, beside the finding that says what is wrong.
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir()
    other.mkdir()
    volumes = {"n1": NodeVolumes("n1", ["other"], directories=[other])}
    probe = _probe("n2", data)
    probe.node = "n1"  # the inventory's n1 points at n2's agent
    assert uncovered_data(_inventory("http://127.0.0.1:7701"), [probe], volumes) == []


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


def test_a_backup_of_a_database_outside_its_volume_is_refused_even_forced(tmp_path):
    # --force once let it through: a run that "succeeded", held no database, and counted as a
    # backup for retention. It cannot be a backup of the node, so --force does not override it.
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

    for args in ((), ("--force", "--no-prune")):
        refused = snapctl("backup", *args)
        assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stderr
        assert f"n1: its engine keeps its data in {tmp_path / 'db'}, in none of its volumes" in refused.stderr
        assert "Traceback" not in refused.stderr
        [hint] = [line.strip() for line in refused.stderr.splitlines() if line.strip().startswith("hint:")]
        assert hint.startswith("hint: n1: list that directory (or one above it) in the node's volumes")
        assert "pass --force" not in hint
    planned = snapctl("backup", "--dry-run")
    assert planned.returncode == ExitCode.PREFLIGHT_REFUSED and "in none of its volumes" in planned.stdout
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.db"))


def _served(node: str, engine: str, data: Path, *files: Path, configured: str | None = "same",
            more: tuple[Path, ...] = ()) -> NodeProbe:
    """An agent's status: its engine named ``engine``, built from `engine: type` ``configured``
    (by default the same; None: an agent too old to say), serving ``data`` and ``more``."""
    details = {"path": str(files[0])} if files else {}
    status = AgentStatus(node=node, agent_version=__version__, data_paths=[str(data), *map(str, more)],
                         engine=EngineStatus(engine=engine, reachable=True, details=details),
                         engine_type=engine if configured == "same" else configured)
    return NodeProbe(node, status=status)


def _engine_inventory(tmp_path: Path, agent: str, engine: str) -> Inventory:
    path = tmp_path / "inv.yaml"
    path.write_text("cluster: c\nprovider: {type: local}\nnodes:\n"
                    f"  - {{name: n1, agent: '{agent}', engine: {engine}}}\n")
    return load_inventory(path)


def test_an_engine_block_naming_another_database_than_its_agent_serves_is_degraded(tmp_path):
    (tmp_path / "data").mkdir()
    served = tmp_path / "data" / "demo.db"
    served.write_bytes(b"")
    inventory = _engine_inventory(tmp_path, "http://127.0.0.1:7701", "{type: sqlite, path: data/other.db}")
    [finding] = misplaced_data(inventory, [_served("n1", "sqlite", tmp_path / "data", served)])
    assert (finding.severity, finding.subject, finding.forceable) == ("degraded", "n1", True)
    assert f"names {tmp_path / 'data'}, {tmp_path / 'data' / 'other.db'}, but its agent serves" in finding.message
    assert finding.hint == "set n1's engine: block in the inventory to what its agent's config says"


def test_the_same_database_by_another_path_is_no_difference(tmp_path):
    (tmp_path / "releases" / "7").mkdir(parents=True)
    served = tmp_path / "releases" / "7" / "demo.db"
    served.write_bytes(b"")
    os.symlink(tmp_path / "releases" / "7", tmp_path / "current")
    inventory = _engine_inventory(tmp_path, "http://127.0.0.1:7701", "{type: sqlite, path: current/demo.db}")
    assert misplaced_data(inventory, [_served("n1", "sqlite", tmp_path / "releases" / "7", served)]) == []


@pytest.mark.parametrize(("agent", "engine", "served"), [
    ("http://db1.internal:7701", "sqlite", "data"),  # another host's paths
    ("http://10.0.0.5:7701", "sqlite", "data"),
    ("http://127.0.0.1:7701", "sqlite", "absent"),  # not this host's filesystem: an agent in a container
    ("http://127.0.0.1:7701", "questdb", "data"),  # another type: engine_mismatch's finding, not this one's
])
def test_no_data_path_is_compared_where_the_comparison_is_not_sound(tmp_path, agent, engine, served):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo.db").write_bytes(b"")
    inventory = _engine_inventory(tmp_path, agent, "{type: sqlite, path: elsewhere/other.db}")
    where = tmp_path / served
    assert misplaced_data(inventory, [_served("n1", engine, where, where / "demo.db")]) == []


def test_an_unknown_engine_type_is_no_finding_by_itself_only_a_different_one_is():
    # An engine plugin may be installed on the agent hosts alone: snapctl here does not know it.
    from snapctl.health import engine_mismatch

    assert engine_mismatch(_served("n1", "mydb", Path("/x")), "mydb") == []
    [finding] = engine_mismatch(_served("n1", "sqlite", Path("/x")), "sqlit")
    assert (finding.severity, finding.forceable) == ("critical", False)
    assert finding.hint.startswith("set n1's engine: type to sqlite in the inventory")
    assert engine_mismatch(_served("n1", "sqlite", Path("/x")), None) == []  # no engine block: nothing to compare


def test_the_engine_type_compared_is_the_one_the_agent_was_configured_with_not_its_engines_name():
    # An alias, or a plugin subclassing sqlite without a name of its own, runs an engine named
    # 'sqlite' under `type: vendordb`: the inventory's vendordb is right.
    from snapctl.health import engine_mismatch

    assert engine_mismatch(_served("n1", "sqlite", Path("/x"), configured="vendordb"), "vendordb") == []
    [finding] = engine_mismatch(_served("n1", "sqlite", Path("/x"), configured="vendordb"), "sqlite")
    assert finding.hint.startswith("set n1's engine: type to vendordb in the inventory")
    # An agent too old to say its configured type: its engine's name is no proof either way.
    assert engine_mismatch(_served("n1", "sqlite", Path("/x"), configured=None), "vendordb") == []


def test_an_agent_serving_a_path_the_inventory_block_leaves_out_is_no_difference(tmp_path):
    # etcd's data_dir is optional in the inventory's block: a restore or drill uses backup_dir
    # from it, so an agent that also serves a data_dir the block does not name is no mistake.
    (tmp_path / "data").mkdir()
    (tmp_path / "wal").mkdir()
    served = tmp_path / "data" / "demo.db"
    served.write_bytes(b"")
    inventory = _engine_inventory(tmp_path, "http://127.0.0.1:7701", "{type: sqlite, path: data/demo.db}")
    probe = _served("n1", "sqlite", tmp_path / "data", served, more=(tmp_path / "wal",))
    assert misplaced_data(inventory, [probe]) == []


def test_an_agent_that_answered_its_status_with_an_http_error_can_be_forced_past_one_silent_cannot():
    # A 429 to the status says nothing of the prepare (the agent limits each endpoint on its own);
    # an agent that does not answer, or refuses our token, would refuse the prepare the same way.
    from snapctl.health import assess_node

    [limited] = assess_node(NodeProbe("n1", error="the agent's rate limit refused /v1/status once", http_status=429),
                            for_backup=True)
    assert (limited.severity, limited.forceable) == ("critical", True)
    [silent] = assess_node(NodeProbe("n1", error="connection refused"), for_backup=True)
    [refused] = assess_node(NodeProbe("n1", error="wrong bearer token", unauthorized=True, http_status=401),
                            for_backup=True)
    assert (silent.forceable, refused.forceable) == (False, False)


def test_a_refusal_offers_force_only_when_force_overrides_every_critical_finding():
    from snapctl.health import Finding
    from snapctl.preflight import FORCE_HINT, preflight_refusal

    no_leader = Finding("critical", "raft group g", "no leader (m1 (a) follower)")
    down = Finding("critical", "b", "agent unreachable: connection refused", forceable=False,
                   hint="start b's agent, or set b's agent: to the address it listens on")
    assert preflight_refusal([no_leader]).hint == FORCE_HINT
    mixed = preflight_refusal([no_leader, down])
    assert mixed.message == ("preflight refused the backup: raft group g: no leader (m1 (a) follower); "
                             "b: agent unreachable: connection refused")
    assert mixed.hint == ("b: start b's agent, or set b's agent: to the address it listens on; "
                          "--force would not override these")
    assert preflight_refusal([down], forced=True).hint.endswith("; --force did not override these")
