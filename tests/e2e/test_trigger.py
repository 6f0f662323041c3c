"""`snapctl trigger` runs each chosen node's own engine snapshot through its real agent."""

from __future__ import annotations

from snapctl.errors import ExitCode


def test_trigger_runs_the_engine_snapshot_on_every_node(cluster):
    result = cluster.snapctl("trigger", "-o", "json", check_json=True)
    assert result.returncode == 0, result.stderr
    nodes = {n["node"]: n for n in result.json["data"]["nodes"]}
    assert set(nodes) == {"node1", "node2", "node3"}
    assert all(n["ok"] and n["jobs"][0]["status"] == "succeeded" for n in nodes.values())


def test_trigger_on_chosen_nodes_only(cluster):
    result = cluster.snapctl("trigger", "--node", "node2", "-o", "json", check_json=True)
    assert [n["node"] for n in result.json["data"]["nodes"]] == ["node2"]


def test_trigger_reports_an_unreachable_node_and_fails(cluster):
    from snapctl import demo
    from snapctl.config import load_inventory

    demo.down(load_inventory(cluster.inventory))
    result = cluster.snapctl("trigger", "-o", "json", check_json=True)
    assert result.returncode == ExitCode.RUN_FAILED
    assert all(not n["ok"] and n["error"] for n in result.json["data"]["nodes"])


def test_a_timeout_of_zero_or_less_is_bad_input(cluster):
    result = cluster.snapctl("trigger", "--timeout", "0", "-o", "json", check_json=True)
    assert result.returncode == ExitCode.BAD_INPUT
    assert result.json["error"] == "--timeout 0: the timeout must be a number of seconds more than zero"
