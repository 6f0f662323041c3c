"""The orchestrator's fan-out over the nodes: every node's step runs at once; the first failure
is recorded on its node, stops the others and is raised, so that the run rolls back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from snapctl.errors import RunFailed
from snapctl.events import NullReporter
from snapctl.manifest import NodeRecord
from snapctl.orchestrator import _on_every_node


def _run(nodes: list[str]) -> SimpleNamespace:
    return SimpleNamespace(manifest=SimpleNamespace(nodes={n: NodeRecord(name=n) for n in nodes}),
                           reporter=NullReporter())


def test_every_node_runs_its_step_at_once() -> None:
    started: list[str] = []
    both_started = asyncio.Event()

    async def step(run, node: str) -> None:
        started.append(node)
        if len(started) == 2:
            both_started.set()
        await both_started.wait()  # a step that waited for the others to finish would hang here

    run = _run(["n1", "n2"])
    asyncio.run(asyncio.wait_for(_on_every_node(run, ["n1", "n2"], step), 5))
    assert sorted(started) == ["n1", "n2"]
    assert all(record.error is None for record in run.manifest.nodes.values())


def test_the_first_failure_is_recorded_stops_the_others_and_is_raised() -> None:
    stopped: list[str] = []

    async def step(run, node: str) -> None:
        if node == "n2":
            await asyncio.sleep(0.01)
            raise RunFailed("node n2: prepare refused")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(node)
            raise

    run = _run(["n1", "n2", "n3"])
    with pytest.raises(RunFailed, match="node n2: prepare refused"):
        asyncio.run(asyncio.wait_for(_on_every_node(run, ["n1", "n2", "n3"], step), 5))
    assert run.manifest.nodes["n2"].error == "node n2: prepare refused"
    assert sorted(stopped) == ["n1", "n3"]  # cancelled, not left running; their records untouched
    assert run.manifest.nodes["n1"].error is None


def test_of_failures_that_come_together_the_first_nodes_is_raised_and_each_is_recorded() -> None:
    async def step(run, node: str) -> None:
        raise RunFailed(f"node {node}: engine unreachable")

    run = _run(["n1", "n2", "n3"])
    with pytest.raises(RunFailed, match="node n1: engine unreachable"):
        asyncio.run(_on_every_node(run, ["n1", "n2", "n3"], step))
    assert [r.error for r in run.manifest.nodes.values()] == [f"node n{i}: engine unreachable" for i in (1, 2, 3)]


def test_no_nodes_is_nothing_to_do() -> None:
    async def step(run, node: str) -> None:
        raise AssertionError("no node, no step")

    asyncio.run(_on_every_node(_run([]), [], step))
