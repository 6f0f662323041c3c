"""Where a node's freeze margin goes: each node followed from its prepare's acknowledgement to
its complete's, across snapctl, the kernel and the (lean) agent.

    python -m bench.trace [--nodes 100] [--runs 2] [--provider-process auto|always|never]

Every instant is on the one host's wall clock: the simulated provider stamps when each create
call started and when it returned (its sleep ends at the start plus the create latency), this
script when snapctl's client began each complete, the lean agents when it arrived and when the
engine was released, the manifest when snapctl processed each answer. One table per run, p50 /
p99 in ms, and the CPU time snapctl's event loop thread spent per node from sending the
prepares to writing the manifest.

A second table follows the whole run phase by phase, with how many of the machine's cores were
busy in each (every process's, the agents' included: from /proc/stat, sampled every 5 ms by a
process of its own), which says where the run waits and where it is short of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from itertools import pairwise
from pathlib import Path
from typing import Self

from bench.common import emit, percentile, summary, table
from bench.freeze import UNBOUND
from bench.leanagent import TRACE_DIR_ENV
from bench.simcluster import SimCluster
from snapctl.events import NullReporter


class _LoopCpu(NullReporter):
    """The loop thread's CPU clock at the prepare step and at the wait step (after the manifest),
    and the wall clock (time.time) at every step."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.steps: dict[str, float] = {}

    def step(self, name: str, message: str) -> None:
        self.steps.setdefault(name, time.time())
        if name in ("prepare", "wait"):
            self.marks[name] = time.thread_time()


class _BusyCores:
    """Samples /proc/stat's busy jiffies (all cores) with the wall clock, in a process of its own:
    a thread of this one would take the GIL from snapctl's loop every few milliseconds."""

    _SAMPLER = ("import sys, time\n"
                "every = float(sys.argv[1])\n"
                "while True:\n"
                "    with open('/proc/stat') as stat:\n"
                "        jiffies = [int(f) for f in stat.readline().split()[1:]]\n"
                "    print(time.time(), sum(jiffies) - jiffies[3] - jiffies[4], flush=True)\n"
                "    time.sleep(every)\n")

    def __init__(self, every_s: float = 0.005) -> None:
        self.samples: list[tuple[float, int]] = []
        self._every_s = every_s
        self._out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by __exit__
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self._process = subprocess.Popen([sys.executable, "-c", self._SAMPLER, str(self._every_s)], stdout=self._out)
        return self

    def __exit__(self, *_exc) -> None:
        assert self._process is not None
        self._process.kill()
        self._process.wait()
        self._out.close()

    def read(self) -> None:
        """Take in what the sampler wrote so far (``cores`` looks only at what was read)."""
        self._out.seek(0)
        lines = [line.split() for line in self._out.read().splitlines()]
        self.samples = [(float(line[0]), int(line[1])) for line in lines if len(line) == 2]

    def cores(self, start: float, end: float) -> float | None:
        """Cores busy on average from ``start`` to ``end`` (wall clock), between the samples around them."""
        times = [sample[0] for sample in self.samples]
        first, last = max(0, bisect_left(times, start) - 1), min(len(times) - 1, bisect_left(times, end))
        if last <= first:
            return None
        (t0, busy0), (t1, busy1) = self.samples[first], self.samples[last]
        return (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / (t1 - t0) if t1 > t0 else None


_RESOLVABLE_S = 0.02  # /proc/stat counts in 10 ms ticks: a shorter phase's share of them says nothing
PHASES = ["start -> preflight done (lock, connects, a status request to every agent)",
          "-> prepares sent (provider worker ready)", "-> hold instant (the lead)",
          "-> last prepare answer processed", "-> first complete acknowledged (create calls under way)",
          "-> last complete acknowledged", "-> backup() returned (manifest, wait, cleanup)"]


def _phases(manifest, steps: dict[str, float], started: float, ended: float, busy: _BusyCores) -> list[str]:
    hold_at = manifest.hold_at.timestamp() if manifest.hold_at else steps["prepare"]
    records = list(manifest.nodes.values())
    busy.read()
    bounds = [started, steps["provider"], steps["prepare"], hold_at,
              max(r.prepare_acked_at.timestamp() for r in records),
              min(r.complete_acked_at.timestamp() for r in records),
              max(r.complete_acked_at.timestamp() for r in records), ended]
    cells = []
    for start, end in pairwise(bounds):
        cores = busy.cores(start, end) if end - start >= _RESOLVABLE_S else None
        cells.append(f"{(end - start) * 1000:.0f} ms, {'-' if cores is None else f'{cores:.1f}'}")
    return cells


STAGES = ["prepare acknowledged -> create call started", "create call's sleep ended -> call returned",
          "call returned -> snapctl sent the complete",
          "complete sent -> arrived at the agent", "arrived -> engine released (the agent's work)",
          "released -> acknowledgement processed by snapctl", "margin"]


def trace(nodes: int, runs: int, provider_process: str, create_latency: float = 0.3, async_create: bool = False) -> str:
    from snapctl import agent_client
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.runner import run as run_coroutine

    sent: dict[str, float] = {}
    complete = agent_client.HttpAgentClient.complete

    async def timed_complete(self, run_id: str):
        sent[self.node] = time.time()
        return await complete(self, run_id)

    agent_client.HttpAgentClient.complete = timed_complete  # type: ignore[method-assign]
    columns, manifests, loop_cpu, phases = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="snapctl-trace-") as trace_dir:
        os.environ[TRACE_DIR_ENV] = trace_dir
        try:
            provider = {"type": "sim", "create_latency_s": create_latency, "async_create": async_create, **UNBOUND}
            with SimCluster(nodes=nodes, prepare_latency_s=0.05, provider=provider) as cluster, \
                    _BusyCores() as busy:
                for attempt in range(runs + 1):  # the first warms connections and imports
                    sent.clear()
                    clock = _LoopCpu()
                    inventory = cluster.inventory(provider_process=provider_process)
                    started = time.time()
                    manifest = run_coroutine(backup(inventory, BackupOptions(prune=False), clock))
                    ended = time.time()
                    if attempt:
                        manifests.append((manifest, dict(sent)))
                        loop_cpu.append((clock.marks["wait"] - clock.marks["prepare"]) / nodes)
                        phases.append(_phases(manifest, clock.steps, started, ended, busy))
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
    runs_header = [f"run {i + 1}" for i in range(len(columns))]
    return table(f"Where the margin goes: {nodes} nodes, create {create_latency * 1000:.0f} ms, "
                 f"provider_process {provider_process}{', async create call' if async_create else ''} (p50 / p99 ms)", ["from -> to", *runs_header], rows) + (
        "\nsnapctl's event loop thread, CPU per node from sending the prepares to writing the manifest: "
        + ", ".join(f"{cpu * 1e6:.0f} µs" for cpu in loop_cpu) + "\n\n") + table(
        f"The run's phases: {nodes} nodes (duration, and cores busy on average: every process's, out of "
        f"{os.cpu_count()}; '-' under 20 ms)", ["phase", *runs_header],
        [[phase, *(run[i] for run in phases)] for i, phase in enumerate(PHASES)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=summary(__doc__))
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--provider-process", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--async-create", action="store_true",
                        help="the simulated provider's async create call (snapshot_async), made on snapctl's loop")
    args = parser.parse_args(argv)
    emit(trace(args.nodes, args.runs, args.provider_process, async_create=args.async_create))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
