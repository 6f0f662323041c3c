"""Freeze windows, prepare skew and wall time of `snapctl backup` over N simulated nodes, the
rate-limited case (cluster barrier against per-node consistency) and the sequential baseline.

    python -m bench.freeze [--quick] [--nodes 1,10,100,1000] [--prepare-latency 0.05] [--create-latency 0.3]

The backup is snapctl's own `backup()` (preflight, lock, prepare, snapshot, complete, manifest)
against real agents over loopback HTTP; every number comes from the run's manifest, except the
snapshot issuance instants, which the simulated provider stamps on each snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    async_calls_on_the_loop_at_every_size,
    emit,
    median,
    ms,
    percentile,
    ratio,
    secs,
    summary,
    table,
    timer,
    verdict,
)
from bench.simcluster import SimCluster
from snapctl.runner import run as run_coroutine

UNBOUND = {"create_rate": 1_000_000.0, "create_burst": 1_000_000}  # a bucket that never binds
ASYNC_CALLS = "loop (async create call)"


@dataclass
class RunStats:
    nodes: int
    wall_s: float
    freeze: list[float]  # per node: complete acknowledged - prepare sent
    rtt: list[float]  # per node: prepare acknowledged - prepare sent
    margin: list[float]  # per node: freeze - (own prepare round trip + create latency)
    ack_skew_s: float  # spread of prepare acknowledgements, as the manifest reports it
    hold_skew_s: float  # spread of the instants the engines began to hold (their own clocks)
    issued: list[float]  # snapshot create calls let through, wall clock, sorted
    returned_late: list[float]  # per node: its create call's return - (issue + create latency)
    to_release: list[float]  # per node: complete acknowledged - its create call's return
    snapctl_cpu_s: float  # CPU time of snapctl during the run: every thread, and its provider worker
    agents_cpu_s: float  # CPU time of the simulated agents' processes during the run


def run_backup(cluster: SimCluster, create_latency_s: float, consistency: str = "cluster", reporter: object = None,
               provider: dict[str, object] | None = None, **policy: object) -> RunStats:
    """One backup of ``cluster``; ``reporter``: the progress it reports to (none by default);
    ``provider``: settings of the simulated provider to change for this run."""
    from snapctl.orchestrator import BackupOptions, backup

    inventory = cluster.inventory(provider, **policy)
    options = BackupOptions(consistency=consistency)
    if hasattr(options, "prune"):
        options.prune = False  # retention is not what is measured here
    agents_before, snapctl_before = process_cpu_s(cluster.agent_pids), snapctl_cpu_s()
    with timer() as wall:
        manifest = run_coroutine(backup(inventory, options, reporter))
    snapctl_cpu, agents_cpu = snapctl_cpu_s() - snapctl_before, process_cpu_s(cluster.agent_pids) - agents_before
    if manifest.status != "succeeded":
        raise RuntimeError(f"backup failed: {manifest.error}")
    records = list(manifest.nodes.values())
    freeze, rtt = windows(manifest)
    issued = sorted(ref.extra["issued_at"] for r in records for ref in r.snapshots)
    last_calls = [max(r.snapshots, key=lambda ref: ref.extra["returned_at"]).extra for r in records]
    late = [call["returned_at"] - call["issued_at"] - create_latency_s for call in last_calls]
    to_release = [r.complete_acked_at.timestamp() - call["returned_at"] for r, call in zip(records, last_calls)]
    return RunStats(len(records), wall[0], freeze, rtt, [f - t - create_latency_s for f, t in zip(freeze, rtt)],
                    manifest.prepare_skew_s or 0.0, manifest.hold_skew_s or 0.0, issued, late, to_release,
                    snapctl_cpu, agents_cpu)


def windows(manifest) -> tuple[list[float], list[float]]:
    """Per node, in the manifest's order: its freeze window and its prepare round trip. A node's
    window opens at the later of its prepare's sending and the agreed hold instant (hold_at): its
    round trip is counted from there too, as snapctl's freeze_window_s is."""
    records = list(manifest.nodes.values())
    opened = [max(r.prepare_sent_at, manifest.hold_at) if manifest.hold_at else r.prepare_sent_at for r in records]
    return ([r.freeze_window_s for r in records],
            [(r.prepare_acked_at - start).total_seconds() for r, start in zip(records, opened)])


def snapctl_cpu_s() -> float:
    """This process's CPU and that of its children once ended (the provider worker; the agents
    are children too but run on until the bench ends)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the full line)
    return total / os.sysconf("SC_CLK_TCK")


def run_sequential(cluster: SimCluster) -> float:
    """The single-host way: prepare, snapshot, complete one node after another (same agents,
    same client, same provider)."""
    from snapctl.agent_client import open_agents
    from snapctl.providers import create_provider, snapshot_tags

    inventory = cluster.inventory()
    provider = create_provider(inventory.provider, cluster=inventory.cluster, base_dir=inventory.base_dir)
    volumes = {n.name: provider.validate_volumes(n.name, n.volumes, base_dir=inventory.base_dir)
               for n in inventory.nodes}

    async def sequential() -> None:
        async with open_agents(inventory) as agents:
            run_id = f"seq-{time.time_ns()}"
            for name, agent in agents.items():
                await agent.prepare(run_id, 60)
                await asyncio.to_thread(provider.snapshot, volumes[name], snapshot_tags("bench", run_id, name))
                await agent.complete(run_id)

    with timer() as wall:
        asyncio.run(sequential())
    return wall[0]


def scaling(sizes: list[int], repeats: int, prepare_latency: float, create_latency: float,
            baseline_at: int | None, stack: str = "lean", create_cpu: float = 0.0) -> str:
    from snapctl.provider_worker import PROVIDER_PROCESS_FROM, worker_processes
    from snapctl.providers import Capabilities

    rows, walls, baseline_rows, served = [], {}, [], ""
    for n in sizes:
        provider = {"type": "sim", "create_latency_s": create_latency, "create_cpu_s": create_cpu, **UNBOUND}
        # Where the create calls run: what policy.provider_process auto picks at this N, and from
        # PROVIDER_PROCESS_FROM on also the threads it replaces, in alternate runs.
        workers = worker_processes(n, n, Capabilities(max_creates_per_s=UNBOUND["create_rate"],
                                                       create_burst=UNBOUND["create_burst"]))
        worker = f"worker, {workers} process{'es' if workers > 1 else ''}"
        # (policy.provider_process, the sim provider's async_create): a blocking SDK's calls, then
        # the same provider with an async create call, which auto makes on snapctl's loop.
        # (policy.provider_process, async_create, on the loop at every N)
        variants = {worker if n >= PROVIDER_PROCESS_FROM else "threads": ("auto", False, False)}
        if n >= PROVIDER_PROCESS_FROM:
            variants["threads"] = ("never", False, False)
            variants[f"{worker}, async calls"] = ("auto", True, False)  # auto's choice for an async provider
        variants[ASYNC_CALLS] = ("auto", True, True)
        with SimCluster(nodes=n, prepare_latency_s=prepare_latency, provider=provider, stack=stack) as cluster:
            served = cluster.agent_stack
            runs_of: dict[str, list[RunStats]] = {calls: [] for calls in variants}
            variants_async = {calls: setting[1] for calls, setting in variants.items()}

            def one(setting: tuple[str, bool, bool]) -> RunStats:
                with async_calls_on_the_loop_at_every_size(setting[2]):
                    return run_backup(cluster, create_latency, provider={"async_create": setting[1]},
                                      provider_process=setting[0])

            for setting in variants.values():  # warm: connections, imports, catalog directory
                one(setting)
            for _ in range(repeats):
                for calls, setting in variants.items():
                    runs_of[calls].append(one(setting))
            if n == baseline_at:
                seq = [run_sequential(cluster) for _ in range(max(1, repeats // 3))]
                snap = median([r.wall_s for r in next(iter(runs_of.values()))])
                baseline_rows.append([n, secs(median(seq)), secs(snap), ratio(median(seq) / snap),
                                      verdict(median(seq) / snap >= 10)])
        for calls, runs in runs_of.items():
            def pooled(attr: str, runs: list[RunStats] = runs) -> list[float]:
                return [v for r in runs for v in getattr(r, attr)]

            wall = median([r.wall_s for r in runs])
            kind = variants_async[calls]
            walls.setdefault((n, kind), wall)  # auto's choice is what N=10 is compared with, per kind of call
            margin_p99 = percentile(pooled("margin"), 99)
            ack_skew = median([r.ack_skew_s for r in runs])
            rows.append([n, calls, len(runs), ms(median(pooled("rtt"))), ms(percentile(pooled("rtt"), 99)),
                         ms(median(pooled("freeze"))), ms(percentile(pooled("freeze"), 99)), ms(margin_p99),
                         verdict(margin_p99 <= 0.020), ms(percentile(pooled("returned_late"), 99)),
                         ms(percentile(pooled("to_release"), 99)), ms(ack_skew),
                         ms(median([r.hold_skew_s for r in runs])), secs(wall),
                         ms(median([r.snapctl_cpu_s / n for r in runs])),
                         ms(median([r.agents_cpu_s / n for r in runs])), wall, kind])
    for row in rows:
        kind, wall = row.pop(), row.pop()
        reference = walls.get((10, kind))
        row.append(ratio(wall / reference) if reference else "-")
    out = table(
        f"Freeze window and skew, rate limit not binding ({'real agent stack, ' if stack == 'real' else ''}"
        f"{served} agents, prepare {prepare_latency * 1000:.0f} ms, "
        f"create {create_latency * 1000:.0f} ms"
        f"{f' and {create_cpu * 1000:.2f} ms of CPU per call' if create_cpu else ''}; pooled over runs)",
        ["N", "create calls in", "runs", "prepare RTT p50 ms", "RTT p99", "freeze p50 ms", "freeze p99", "margin p99 ms",
         "margin<=20ms", "create late p99 ms", "return to release p99 ms", "ack skew ms", "hold skew ms", "wall s", "snapctl CPU ms/node", "agents CPU ms/node",
         "wall / N=10"], rows)
    out += ("\nfreeze window and prepare round trip count from the later of the prepare's sending and the "
            "agreed hold instant (hold_at); margin = freeze window - (that node's prepare round trip + create "
            "latency); create late = how much later than the create latency a create call came back "
            "(the GIL, among the provider threads); return to release = from that return to the complete's "
            "acknowledgement; ack skew = spread of prepare acknowledgements at snapctl; hold skew = spread of the "
            "instants the engines began holding; CPU per node: snapctl's process (all threads; with the "
            "provider worker, its processes too) and the simulated agents' processes, which share this "
            "machine's cores with it; create calls in: threads of snapctl's process or its provider worker's "
            "processes (policy.provider_process; auto's choice first, then the other, in alternate runs), "
            f"or \"{ASYNC_CALLS}\": the same provider with an async create call (snapshot_async, as the aws "
            "(aiobotocore) and azure plugins' async clients), awaited on snapctl's event loop, no thread per call, "
            "at every N (auto itself makes it there only below the worker's threshold of 50 calls); wall / N=10 "
            "compares each kind of create call with its own N=10 run.\n")
    if baseline_rows:
        out += "\n" + table("Sequential per-node baseline vs snapctl (same agents, same run)",
                            ["N", "sequential s", "snapctl s", "speed-up", ">=10x"], baseline_rows)
    return out


def rate_limited(n: int, burst: int, rate: float, prepare_latency: float, create_latency: float) -> str:
    provider = {"type": "sim", "create_latency_s": create_latency, "create_rate": rate, "create_burst": burst}
    rows = []
    ideal = max(0.0, (n - burst) / rate)  # the bucket lets `burst` go at once, then `rate` per second
    with SimCluster(nodes=n, prepare_latency_s=prepare_latency, provider=provider) as cluster:
        for mode in ("cluster", "per-node"):
            stats = run_backup(cluster, create_latency, mode)
            span = stats.issued[-1] - stats.issued[0]
            efficiency = ideal / span if span > 0 else 1.0
            rows.append([mode, n, secs(span), secs(ideal), f"{efficiency * 100:.1f}%", verdict(efficiency >= 0.95),
                         ms(median(stats.freeze)), ms(percentile(stats.freeze, 99)), ms(max(stats.freeze)),
                         ms(percentile(stats.margin, 99)), secs(stats.wall_s)])
    return table(
        f"Rate limit binding: {n} nodes, token bucket {burst} burst / {rate:g} per s, create {create_latency * 1000:.0f} ms",
        ["mode", "N", "issuance span s", "bucket allows s", "efficiency", ">=95%", "freeze p50 ms", "freeze p99",
         "freeze max", "margin p99 ms", "wall s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freeze", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="small N, one run each: under a minute")
    parser.add_argument("--nodes", help="comma-separated cluster sizes (default 1,10,100,1000; quick: 1,10,50)")
    parser.add_argument("--repeats", type=int, help="runs per size (default 5; quick: 1)")
    parser.add_argument("--prepare-latency", type=float, default=0.05, help="engine prepare time, s")
    parser.add_argument("--create-latency", type=float, default=0.3, help="provider create call time, s")
    parser.add_argument("--create-cpu", type=float, default=0.0,
                        help="CPU a real SDK spends per create call, s (aiobotocore's: ~0.00075), where the call is made")
    parser.add_argument("--bound-nodes", type=int, help="nodes in the rate-limited case (default 300; quick: 40)")
    parser.add_argument("--skip-bound", action="store_true", help="leave out the rate-limited case")
    parser.add_argument("--agent-stack", choices=("lean", "real"), default="lean",
                        help="simulated agents: lean (bench.leanagent, default) or real (the agent's FastAPI app)")
    parser.add_argument("--real-at", help="also run these sizes with the real agent stack, for comparison "
                                          "(default 100,1000; quick: none; '' for none)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.nodes or ("1,10,50" if args.quick else "1,10,100,1000")).split(",")]
    repeats = args.repeats or (1 if args.quick else 5)
    baseline_at = 100 if 100 in sizes else (10 if args.quick and 10 in sizes else None)
    emit(scaling(sizes, repeats, args.prepare_latency, args.create_latency, baseline_at, args.agent_stack,
                 args.create_cpu))
    real_at = args.real_at if args.real_at is not None else ("" if args.quick or args.agent_stack == "real"
                                                               else "100,1000")
    if real_at:
        emit(scaling([int(n) for n in real_at.split(",")], max(1, repeats // 2), args.prepare_latency,
                     args.create_latency, None, "real"))
    if not args.skip_bound:
        if args.quick:  # the same shape, scaled down: 4x the burst at 20 per second
            emit(rate_limited(args.bound_nodes or 40, 10, 20.0, args.prepare_latency, args.create_latency))
        else:
            emit(rate_limited(args.bound_nodes or 300, 100, 5.0, args.prepare_latency, args.create_latency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
