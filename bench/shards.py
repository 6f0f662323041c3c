"""The upper bound of several orchestrator loops (docs/performance-log.md, item 51): the simulated
cluster split into K inventories, and K snapctl processes running `backup()` over their share at
the same instant, each with its own event loop, preflight, hold instant and provider worker.

    python -m bench.shards [--quick] [--nodes 1000] [--loops 1,2,4] [--sets 3] [--runs 5]

Not a design snapctl has: nothing holds the K runs to one barrier, which a real split would need
(no node released before every node of every share is held), so this flatters it. K=1 is
`backup()` as it is. The loops alternate within each set; each cell is the median of the runs'
own figures (wall from the first start to the last return; freeze and margin as bench.freeze).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import REPO, emit, median, ms, percentile, secs, summary, table
from bench.freeze import UNBOUND, windows
from bench.simcluster import SimCluster

CREATE_LATENCY_S = 0.3


def measure(nodes: int, loops: list[int], sets: int, runs: int) -> str:
    results: dict[int, list[tuple[float, list[float], list[float]]]] = {k: [] for k in loops}
    provider = {"type": "sim", "create_latency_s": CREATE_LATENCY_S, **UNBOUND}
    with SimCluster(nodes=nodes, prepare_latency_s=0.05, provider=provider) as cluster:
        whole = yaml.safe_load(cluster.write_inventory(provider_process="auto").read_text())
        for _ in range(sets):
            for k in loops:
                results[k] += _run_split(cluster.directory, whole, k, runs)
    rows = []
    for k in loops:
        walls = [wall for wall, _, _ in results[k]]
        freeze = {q: [percentile(f, q) for _, f, _ in results[k]] for q in (50, 99)}
        margin = {q: [percentile(m, q) for _, _, m in results[k]] for q in (50, 99)}
        each = str(nodes // k) if nodes % k == 0 else f"{nodes // k}-{nodes // k + 1}"
        rows.append([k, each, len(walls), secs(median(walls)),
                     f"{ms(median(freeze[50]))} / {ms(median(freeze[99]))}",
                     f"{ms(median(margin[50]))} / {ms(median(margin[99]))}"])
    return table(f"Several orchestrator loops, an upper bound: {nodes} lean agents (prepare 50 ms), create "
                 f"{CREATE_LATENCY_S * 1000:.0f} ms, {sets} alternate sets of {runs} runs (median of the runs)",
                 ["loops", "nodes each", "runs", "wall s", "freeze p50 / p99 ms", "margin p50 / p99 ms"], rows)


def _run_split(directory: Path, whole: dict, k: int, runs: int) -> list[tuple[float, list[float], list[float]]]:
    children = []
    try:
        for share in range(k):
            inventory = dict(whole, cluster=f"{whole['cluster']}-{k}-{share}", catalog={"path": f"catalog-{k}-{share}"},
                             nodes=whole["nodes"][share::k])
            inventory["policy"] = dict(whole["policy"], concurrency=max(64, len(inventory["nodes"])))
            path = directory / f"share-{k}-{share}.yaml"
            path.write_text(yaml.safe_dump(inventory, sort_keys=False))
            children.append(subprocess.Popen([sys.executable, "-m", "bench.shards", "--share", str(path)], cwd=REPO,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for child in children:  # each has made its warm-up run: connections, imports, catalog
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a share's process exited with {child.wait()}")
        measured = []
        for _ in range(runs):
            time.sleep(0.3)  # the previous runs' processes wind down
            for child in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            answers = [json.loads(child.stdout.readline()) for child in children]
            wall = max(a["ended"] for a in answers) - min(a["started"] for a in answers)
            measured.append((wall, [f for a in answers for f in a["freeze"]],
                             [m for a in answers for m in a["margin"]]))
        return measured
    finally:
        for child in children:
            child.stdin.close()
            child.wait(timeout=60)


def _serve_share(inventory_path: str) -> int:
    """One share's process: a warm-up backup, then one backup per "go" line, its figures as JSON."""
    from bench.common import raise_open_files_limit, use_bench_plugins
    from snapctl.config import load_inventory
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.runner import run as run_coroutine

    use_bench_plugins()
    raise_open_files_limit()
    inventory = load_inventory(inventory_path)
    run_coroutine(backup(inventory, BackupOptions(prune=False)))
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.time()
        manifest = run_coroutine(backup(inventory, BackupOptions(prune=False)))
        ended = time.time()
        if manifest.status != "succeeded":
            raise RuntimeError(f"backup failed: {manifest.error}")
        freeze, rtt = windows(manifest)
        print(json.dumps({"started": started, "ended": ended, "freeze": freeze,
                          "margin": [f - t - CREATE_LATENCY_S for f, t in zip(freeze, rtt)]}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="40 nodes, loops 1,2, one set of 2 runs")
    parser.add_argument("--nodes", type=int, help="simulated agents in all (default 1000; quick: 40)")
    parser.add_argument("--loops", help="comma-separated numbers of loops (default 1,2,4; quick: 1,2)")
    parser.add_argument("--sets", type=int, help="alternate sets (default 3; quick: 1)")
    parser.add_argument("--runs", type=int, help="runs per set and number of loops (default 5; quick: 2)")
    parser.add_argument("--share", help=argparse.SUPPRESS)  # internal: serve one share's backups
    args = parser.parse_args(argv)
    if args.share:
        return _serve_share(args.share)
    loops = [int(k) for k in (args.loops or ("1,2" if args.quick else "1,2,4")).split(",")]
    emit(measure(args.nodes or (40 if args.quick else 1000), loops, args.sets or (1 if args.quick else 3),
                 args.runs or (2 if args.quick else 5)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
