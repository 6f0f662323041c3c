"""What snapctl's own progress output costs the freeze windows: the same backups with no
reporter, with the log lines the CLI writes when stderr is not a terminal (cron, CI), and with
the live table it draws on a terminal, in alternate runs.

    python -m bench.progress [--quick] [--nodes 100,1000] [--repeats 3]

A backup reports five events per node, and those of the holds come in bursts on the event loop
that sends the completes, so a reporter that does real work per event lengthens every freeze.
The other benchmarks run without a reporter; this one runs the CLI's own (`snapctl.render.progress`),
writing to /dev/null, and reports the freeze windows themselves, not the margin (a slower loop
also lengthens the prepare round trips that the margin subtracts).
"""

from __future__ import annotations

import argparse
import os

from bench.common import emit, median, ms, percentile, secs, summary, table
from bench.freeze import UNBOUND, run_backup
from bench.simcluster import SimCluster

REPORTERS = ("none", "log lines", "live table")


def _reporter(kind: str, sink):
    from rich.console import Console

    from snapctl.render.progress import LineProgress, LiveProgress

    if kind == "log lines":
        return LineProgress(sink)
    if kind == "live table":
        return LiveProgress(Console(file=sink, force_terminal=True, highlight=False))
    return None


def measure(sizes: list[int], repeats: int, create_latency: float = 0.3) -> str:
    rows = []
    provider = {"type": "sim", "create_latency_s": create_latency, **UNBOUND}
    with open(os.devnull, "w") as sink:
        for n in sizes:
            freeze: dict[str, list[float]] = {kind: [] for kind in REPORTERS}
            walls: dict[str, list[float]] = {kind: [] for kind in REPORTERS}
            with SimCluster(nodes=n, prepare_latency_s=0.05, provider=provider) as cluster:
                run_backup(cluster, create_latency)  # warm: connections, imports, catalog directory
                for _ in range(repeats):
                    for kind in REPORTERS:
                        reporter = _reporter(kind, sink)
                        try:
                            stats = run_backup(cluster, create_latency, reporter=reporter)
                        finally:
                            if reporter is not None:
                                reporter.close()
                        freeze[kind] += stats.freeze
                        walls[kind].append(stats.wall_s)
            for kind in REPORTERS:
                rows.append([n, kind, repeats, ms(median(freeze[kind])), ms(percentile(freeze[kind], 99)),
                             secs(median(walls[kind]))])
    return table(f"What the progress output costs (lean agents, prepare 50 ms, create {create_latency * 1000:.0f} ms; "
                 "alternate runs, windows pooled)",
                 ["N", "reporter", "runs", "freeze p50 ms", "freeze p99", "wall s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.progress", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="10 nodes, one run each")
    parser.add_argument("--nodes", help="comma-separated cluster sizes (default 100,1000; quick: 10)")
    parser.add_argument("--repeats", type=int, help="runs per size and reporter (default 3; quick: 1)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.nodes or ("10" if args.quick else "100,1000")).split(",")]
    emit(measure(sizes, args.repeats or (1 if args.quick else 3)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
