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
    nodes = result.json["data"]["nodes"]
    assert [n["node"] for n in nodes] == ["node1", "node2", "node3"]
    assert all(not n["ok"] and n["error"] for n in nodes)


def test_a_timeout_of_zero_or_less_is_bad_input(cluster):
    result = cluster.snapctl("trigger", "--timeout", "0", "-o", "json", check_json=True)
    assert result.returncode == ExitCode.BAD_INPUT
    assert result.json["error"] == "--timeout 0: the timeout must be a number of seconds more than zero"


def test_a_target_every_node_refuses_is_bad_input_with_the_agents_hint(cluster):
    # It exited 1, as if the cluster had failed, and the agent's hint was dropped: only its message was kept.
    result = cluster.snapctl("trigger", "nosuch", "-o", "json", check_json=True)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    nodes = result.json["data"]["nodes"]
    assert [n["node"] for n in nodes] == ["node1", "node2", "node3"]
    for node in nodes:
        assert not node["ok"] and node["bad_input"] and node["jobs"] == []
        assert "sqlite has one database: unknown trigger target 'nosuch'" in node["error"]
        assert node["hint"] == "omit the target or use 'main'"

    text = cluster.snapctl("trigger", "nosuch", "--node", "node1")
    assert text.returncode == ExitCode.BAD_INPUT
    assert "(hint:" in text.stdout and "omit the target or use 'main')" in text.stdout  # its cell may wrap


def test_a_target_refused_by_some_nodes_while_another_fails_is_a_failure(cluster):
    from snapctl import demo

    assert demo._stop(cluster.directory / demo.DEMO_DIR / "node2.pid", demo.AGENT) is not None
    result = cluster.snapctl("trigger", "nosuch", "-o", "json", check_json=True)
    assert result.returncode == ExitCode.RUN_FAILED
    nodes = {n["node"]: n for n in result.json["data"]["nodes"]}
    assert [nodes[n]["bad_input"] for n in ("node1", "node2", "node3")] == [True, False, True]


def test_a_node_given_twice_is_triggered_once(cluster):
    # `--node node2 --node node2` ran node2's engine snapshot twice at once: the second found it busy.
    result = cluster.snapctl("trigger", "--node", "node2", "--node", "node2", "-o", "json", check_json=True)
    assert result.returncode == ExitCode.OK, result.stdout
    assert [n["node"] for n in result.json["data"]["nodes"]] == ["node2"]
