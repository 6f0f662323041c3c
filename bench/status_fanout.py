"""`snapctl status` across N simulated agents: the CLI's wall time (process start to exit) and
the fan-out alone (``collect_status`` in this process).

    python -m bench.status_fanout [--quick] [--nodes 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys

from bench.common import emit, median, ms, percentile, secs, summary, table, timer, verdict
from bench.simcluster import SimCluster


def cli_status(cluster: SimCluster, env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Wall time of one `snapctl status -o json`, its exit code and the number of nodes it reported."""
    snapctl = os.path.join(os.path.dirname(sys.executable), "snapctl")
    command = [snapctl] if os.path.exists(snapctl) else [sys.executable, "-m", "snapctl.cli"]
    with timer() as wall:
        result = subprocess.run([*command, "status", "-o", "json", "-i", str(cluster.inventory_path)],
                                capture_output=True, text=True, timeout=120, check=False, env=env)
    try:
        document = json.loads(result.stdout)
        reported = len((document.get("data") or document).get("nodes") or [])
    except ValueError:
        reported = -1
    return wall[0], result.returncode, reported


def in_process(cluster: SimCluster) -> float:
    from snapctl.status import collect_status

    async def fan_out() -> None:  # returns nothing: asyncio.run reprs a large result on the way out (snapctl.cli._run)
        await collect_status(inventory)

    inventory = cluster.inventory()
    with timer() as wall:
        asyncio.run(fan_out())
    return wall[0]


def run(nodes: int, repeats: int) -> str:
    rows = []
    with SimCluster(nodes=nodes, prepare_latency_s=0.0) as cluster:
        cluster.write_inventory()
        # Warm the page cache and the agents, and write the .pyc files every install has: with
        # PYTHONDONTWRITEBYTECODE set, each run would compile snapctl's edited modules (~55 ms).
        cli_status(cluster, {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
        cli = [cli_status(cluster) for _ in range(repeats)]
        core = [in_process(cluster) for _ in range(repeats)]
    walls = [w for w, _, _ in cli]
    rows.append(["snapctl status -o json (CLI process)", nodes, secs(median(walls)), secs(percentile(walls, 100)),
                 verdict(median(walls) <= 1.0), f"exit {cli[-1][1]}, {cli[-1][2]} nodes in JSON"])
    rows.append(["collect_status() fan-out, in process", nodes, secs(median(core)), secs(max(core)), "-", ""])
    return table(f"Status fan-out over {nodes} agents ({cluster.agent_stack} agents, {repeats} runs)",
                 ["what", "N", "median s", "max s", "<=1 s", "note"], rows) + (
        f"\nper node: {ms(median(walls) / nodes)} ms of CLI wall time.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.status_fanout", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="50 agents, one run")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    emit(run(args.nodes or (50 if args.quick else 1000), args.repeats or (1 if args.quick else 5)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
