"""Where a node's freeze margin goes: each node followed from its prepare's acknowledgement to
its complete's, across snapctl, the kernel and the (lean) agent.

    python -m bench.trace [--nodes 100] [--runs 2] [--provider-process auto|always|never]

Every instant is on the one host's wall clock: the simulated provider stamps when each create
call started and when it returned (its sleep ends at the start plus the create latency), this
script when snapctl's client began each complete, the lean agents when it arrived and when the
engine was released, the manifest when snapctl processed each answer. One table per run, p50 /
p99 in ms, and the CPU time snapctl's event loop thread spent per node from sending the
prepares to writing the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import emit, percentile, table
from bench.freeze import UNBOUND
from bench.leanagent import TRACE_DIR_ENV
from bench.simcluster import SimCluster
from snapctl.events import NullReporter


class _LoopCpu(NullReporter):
    """The loop thread's CPU clock at the prepare step and at the wait step (after the manifest)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def step(self, name: str, message: str) -> None:
        if name in ("prepare", "wait"):
            self.marks[name] = time.thread_time()

STAGES = ["prepare acknowledged -> create call started", "create call's sleep ended -> call returned",
          "call returned -> snapctl sent the complete",
          "complete sent -> arrived at the agent", "arrived -> engine released (the agent's work)",
          "released -> acknowledgement processed by snapctl", "margin"]


def trace(nodes: int, runs: int, provider_process: str, create_latency: float = 0.3) -> str:
    from snapctl import agent_client
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.runner import run as run_coroutine

    sent: dict[str, float] = {}
    complete = agent_client.HttpAgentClient.complete

    async def timed_complete(self, run_id: str):
        sent[self.node] = time.time()
        return await complete(self, run_id)

    agent_client.HttpAgentClient.complete = timed_complete  # type: ignore[method-assign]
    columns, manifests, loop_cpu = [], [], []
    with tempfile.TemporaryDirectory(prefix="snapctl-trace-") as trace_dir:
        os.environ[TRACE_DIR_ENV] = trace_dir
        try:
            provider = {"type": "sim", "create_latency_s": create_latency, **UNBOUND}
            with SimCluster(nodes=nodes, prepare_latency_s=0.05, provider=provider) as cluster:
                for attempt in range(runs + 1):  # the first warms connections and imports
                    sent.clear()
                    clock = _LoopCpu()
                    manifest = run_coroutine(backup(cluster.inventory(provider_process=provider_process),
                                                    BackupOptions(prune=False), clock))
                    if attempt:
                        manifests.append((manifest, dict(sent)))
                        loop_cpu.append((clock.marks["wait"] - clock.marks["prepare"]) / nodes)
        finally:
            del os.environ[TRACE_DIR_ENV]
            agent_client.HttpAgentClient.complete = complete  # type: ignore[method-assign]
        at_agents: dict[tuple[str, str], list[float]] = {}
        for dump in Path(trace_dir).glob("*.json"):
            for node, event, instant in json.loads(dump.read_text()):
                at_agents.setdefault((node, event), []).append(instant)
    for index, (manifest, sent_at) in enumerate(manifests):
        stages: list[list[float]] = [[] for _ in STAGES]
        for record in manifest.nodes.values():
            last = max(record.snapshots, key=lambda ref: ref.extra["returned_at"]).extra
            arrived = at_agents[(record.name, "arrived")][1 + index]
            released = at_agents[(record.name, "released")][1 + index]
            opened = max(record.prepare_sent_at, manifest.hold_at) if manifest.hold_at else record.prepare_sent_at
            first = min(record.snapshots, key=lambda ref: ref.extra["issued_at"]).extra
            values = [first["issued_at"] - record.prepare_acked_at.timestamp(),
                      last["returned_at"] - last["issued_at"] - create_latency, sent_at[record.name] - last["returned_at"],
                      arrived - sent_at[record.name], released - arrived,
                      record.complete_acked_at.timestamp() - released,
                      record.freeze_window_s - (record.prepare_acked_at - opened).total_seconds() - create_latency]
            for stage, value in zip(stages, values):
                stage.append(value)
        columns.append([f"{percentile(v, 50) * 1000:.1f} / {percentile(v, 99) * 1000:.1f}" for v in stages])
    rows = [[stage, *(column[i] for column in columns)] for i, stage in enumerate(STAGES)]
    return table(f"Where the margin goes: {nodes} nodes, create {create_latency * 1000:.0f} ms, "
                 f"provider_process {provider_process} (p50 / p99 ms)",
                 ["from -> to", *(f"run {i + 1}" for i in range(len(columns)))], rows) + (
        "\nsnapctl's event loop thread, CPU per node from sending the prepares to writing the manifest: "
        + ", ".join(f"{cpu * 1e6:.0f} µs" for cpu in loop_cpu) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--provider-process", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)
    emit(trace(args.nodes, args.runs, args.provider_process))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
