"""50 agents, some dead, some hanging, some slow: status accounts for every node within one per-node
timeout, because it asks them all at once."""

from __future__ import annotations

import asyncio

from snapctl.status import collect_status
from tests.conftest import LOOPBACK, free_port
from tests.status.conftest import FakeAgent, fake_agents, load, write_inventory

TIMEOUT_S = 2.0


def test_fifty_nodes_some_unreachable_some_slow_all_accounted_for_in_one_timeout(tmp_path):
    agents = [FakeAgent(f"ok{i}") for i in range(20)]
    agents += [FakeAgent(f"slow{i}", "slow", delay_s=1.0) for i in range(10)]  # answer within the timeout
    agents += [FakeAgent(f"late{i}", "slow", delay_s=30.0) for i in range(5)]  # answer long after it
    agents += [FakeAgent(f"hang{i}", "hang") for i in range(10)]  # accept, never answer
    dead = [f"dead{i}" for i in range(5)]  # nothing listening
    with fake_agents(agents) as fleet:
        nodes = [{"name": a.node, "agent": a.url} for a in agents]
        nodes += [{"name": name, "agent": f"http://{LOOPBACK}:{free_port()}"} for name in dead]
        inventory = load(write_inventory(tmp_path, nodes, policy={"agent_timeout_s": f"{TIMEOUT_S}s"}))
        status = asyncio.run(collect_status(inventory))

    # Asked one after the other, the first slow node would answer (after 1 s) before the silent
    # ones were asked, and the whole would take over 50 s: every agent is asked before any answers
    # late.
    first_late_answer = next(i for i, (what, node) in enumerate(fleet.events)
                             if what == "answered" and node.startswith("slow"))
    asked_before = {node for what, node in fleet.events[:first_late_answer] if what == "asked"}
    assert asked_before == {a.node for a in agents}, "the fan-out is not parallel"
    by_node = {p.node: p for p in status.probes}
    assert sorted(by_node) == sorted([a.node for a in agents] + dead), "every node is accounted for, once"
    reachable = {n for n, p in by_node.items() if p.status is not None}
    assert reachable == {a.node for a in agents if a.behaviour == "ok" or a.delay_s == 1.0}
    for name in [a.node for a in agents if a.behaviour == "hang" or a.delay_s == 30.0]:
        assert f"within {TIMEOUT_S:g}s" in by_node[name].error, by_node[name].error
    for name in dead:  # the node is named once, by the finding: "dead0: agent unreachable: cannot reach ..."
        assert by_node[name].error.startswith("cannot reach the agent"), by_node[name].error
    unreachable = {f.subject for f in status.verdict.findings if f.severity == "critical" and "unreachable" in f.message}
    assert unreachable == set(by_node) - reachable
    assert status.verdict.level == "critical" and status.preflight
