"""--force and the preflight, with real agents on loopback: --force overrides a cluster in a bad
state, never a finding that makes the backup impossible or no backup of the node; each refusal's
hint gives the fix for what it refused on, and offers --force only where --force would help; the
inventory's engine block is checked against what each agent runs."""

from __future__ import annotations

import json

import yaml

from snapctl.errors import ExitCode
from tests.conftest import free_port
from tests.faults.harness import LOOPBACK, FaultCluster


def _variant(cluster: FaultCluster, name: str, change, **top) -> object:
    path = cluster.write_inventory(cluster.directory / f"{cluster.cluster}.{name}.yaml", **top)
    data = yaml.safe_load(path.read_text())
    change(data["nodes"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _hint(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.lstrip().startswith("hint:"))


def _succeeded(cluster: FaultCluster) -> list[str]:
    return [r for r in cluster.run_ids() if cluster.manifest(r)["status"] == "succeeded"]


def test_force_does_not_back_up_through_swapped_agents_nor_let_retention_delete_the_good_backup(scene):
    # It did: exit 0, a "succeeded" run of node3's database recorded as node2's and the reverse, and
    # keep_last: 1 deleted the good run before it. `drill latest` then failed its checksums.
    cluster = scene
    assert cluster.snapctl("backup", "--no-prune").returncode == ExitCode.OK
    [good] = _succeeded(cluster)
    kept = cluster.snapshot_dirs(good)

    def swap(nodes):
        nodes[1]["agent"], nodes[2]["agent"] = nodes[2]["agent"], nodes[1]["agent"]

    swapped = _variant(cluster, "swapped", swap, retention={"keep_last": 1})
    for args in ((), ("--force",)):
        result = cluster.snapctl("backup", *args, inventory=swapped)
        assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stdout + result.stderr
        assert "the agent answers as node 'node3'" in result.stderr and "Traceback" not in result.stderr
        hint = _hint(result.stderr)
        assert "set node2's agent: to its own agent's address" in hint
        # Not also "list that directory in the node's volumes": what another node's agent says of
        # its data is no news of this node's, and the fix it gave was the wrong one.
        assert "in none of its volumes" not in result.stderr and "volumes" not in hint
        assert "pass --force" not in hint and ("did not override" if args else "would not override") in hint
    assert _succeeded(cluster) == [good] and cluster.snapshot_dirs(good) == kept
    refused = [cluster.manifest(r) for r in cluster.run_ids() if r != good]
    assert [(m["status"], m["forced"]) for m in refused] == [("failed", False), ("failed", False)]
    assert cluster.held() == set()


def test_an_agent_nothing_listens_for_is_refused_with_its_fix_and_force_does_not_try(scene):
    # The hint offered --force; the forced run then failed with "cannot reach the agent", and only
    # then said what to do.
    cluster = scene
    port = free_port()

    def dead(nodes):
        nodes[1]["agent"] = f"http://{LOOPBACK}:{port}"

    inventory = _variant(cluster, "dead", dead)
    for args in ((), ("--force",)):
        result = cluster.snapctl("backup", *args, inventory=inventory)
        assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stdout + result.stderr
        assert "node2: agent unreachable" in result.stderr
        hint = _hint(result.stderr)
        assert "start node2's agent, or set node2's agent: to the address it listens on" in hint
        assert "pass --force" not in hint
    assert cluster.held() == set() and cluster.snapshot_dirs() == []


def test_an_engine_type_the_agent_does_not_run_is_critical_in_status_and_refused_even_forced(scene):
    # `engine: {type: etcd}` beside an agent running sqlite: status healthy, backup exit 0, and a
    # manifest saying etcd that no drill could restore. A typo'd type passed the same way.
    cluster = scene
    for kind, block in (("etcd", {"type": "etcd", "backup_dir": str(cluster.directory / "etcd-backups")}),
                        ("sqlit", {"type": "sqlit", "path": "whatever.db"})):
        def wrong(nodes, block=block):
            nodes[0]["engine"] = block

        inventory = _variant(cluster, f"engine-{kind}", wrong)
        status = cluster.snapctl("status", "-o", "json", inventory=inventory)
        assert status.returncode == ExitCode.CRITICAL, status.stdout + status.stderr
        verdict = json.loads(status.stdout)["data"]["verdict"]
        [finding] = [f for f in verdict["findings"] if f["subject"] == "node1"]
        assert finding["message"].startswith(f"the inventory says its engine is '{kind}', but its agent runs 'sqlite'")
        assert finding["forceable"] is False and "set node1's engine: type to sqlite" in finding["hint"]
        assert finding in verdict["preflight_refusals"] and verdict["safe_to_back_up"] is False
        forced = cluster.snapctl("backup", "--force", inventory=inventory)
        assert forced.returncode == ExitCode.PREFLIGHT_REFUSED, forced.stdout + forced.stderr
        assert "set node1's engine: type to sqlite" in _hint(forced.stderr)
    assert _succeeded(cluster) == [] and cluster.snapshot_dirs() == []


def test_an_engine_block_naming_another_database_than_its_agent_serves_is_degraded_and_on_record(scene):
    # node1's path named other.db while its agent served db.sqlite: status and backup said nothing,
    # and `restore latest --to DIR` failed on node1 after restoring it.
    cluster = scene
    other = cluster.agents["node1"].volume / "other.db"

    def moved(nodes):
        nodes[0]["engine"] = {"type": "sqlite", "path": str(other)}

    inventory = _variant(cluster, "other-db", moved)
    status = cluster.snapctl("status", "-o", "json", inventory=inventory)
    assert status.returncode == ExitCode.DEGRADED, status.stdout + status.stderr
    [finding] = [f for f in json.loads(status.stdout)["data"]["verdict"]["findings"] if f["subject"] == "node1"]
    assert finding["severity"] == "degraded" and f"names {other.parent}, {other}" in finding["message"]
    assert f"its agent serves {other.parent}, {cluster.agents['node1'].database}" in finding["message"]
    result = cluster.snapctl("backup", "--no-prune", "-o", "json", inventory=inventory)
    assert result.returncode == ExitCode.OK, result.stderr
    assert any(d.startswith("node1: its inventory engine block names") for d in result.json["data"]["degradations"])
    # The same file reached by another path (a relative one, here) is no difference.
    def relative(nodes):
        nodes[0]["engine"] = {"type": "sqlite", "path": "node1/data/db.sqlite"}

    same = _variant(cluster, "relative", relative)
    assert cluster.snapctl("status", inventory=same).returncode == ExitCode.OK
