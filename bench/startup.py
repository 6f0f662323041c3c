"""Start-up: `snapctl --help` and `snapctl status --help` wall time, and which cloud SDKs a
command imports (none unless its provider is used).

    python -m bench.startup [--quick] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from bench.common import emit, median, ms, summary, table, timer, verdict
from bench.simcluster import SimCluster

CLOUD_SDKS = ("boto3", "botocore", "google.cloud", "google.api_core", "azure")
# For the warm-up run: it writes the .pyc files every install has. With PYTHONDONTWRITEBYTECODE set
# (some shells and CI do), each timed run would compile snapctl's own edited modules (~7 ms of --help).
WRITE_BYTECODE = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def snapctl_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "snapctl")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "snapctl.cli"]


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    with timer() as elapsed:
        subprocess.run(command, capture_output=True, timeout=60, check=False, env=env)
    return elapsed[0]


def sdks_imported(args: list[str]) -> list[str]:
    """The cloud SDK modules `snapctl ARGS` imported, from the interpreter's own import log."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "snapctl.cli", *args],
                            capture_output=True, text=True, timeout=120, check=False)
    found = set()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        module = line.rsplit("|", 1)[-1].strip()
        if module.startswith(CLOUD_SDKS):
            found.add(module.split(".")[0] if not module.startswith("google.") else ".".join(module.split(".")[:2]))
    return sorted(found)


def run(repeats: int) -> str:
    base = [sys.executable, "-c", "pass"]
    commands = {
        "python -c pass (interpreter floor)": base,
        # typer and the stdlib it pulls in: what any typer CLI pays before its own first line runs.
        "python -c 'import typer' (CLI framework floor)": [sys.executable, "-c", "import typer"],
        "snapctl --help": [*snapctl_command(), "--help"],
        "snapctl status --help": [*snapctl_command(), "status", "--help"],
    }
    rows = []
    for label, command in commands.items():
        wall(command, WRITE_BYTECODE)  # page cache and .pyc files warm
        times = [wall(command) for _ in range(repeats)]
        goal = "-" if label.startswith("python") else verdict(median(times) <= 0.150)
        rows.append([label, ms(median(times)), ms(min(times)), goal])
    out = table(f"Start-up ({repeats} runs each)", ["command", "median ms", "min ms", "<=150 ms"], rows)

    checks = []
    with SimCluster(nodes=3, prepare_latency_s=0.0) as cluster:
        inventory = str(cluster.write_inventory())
        for args in (["--help"], ["status", "-i", inventory], ["backup", "--dry-run", "-i", inventory],
                     ["list", "-i", inventory]):
            imported = sdks_imported(args)
            checks.append(["snapctl " + " ".join(a if a != inventory else "INV" for a in args),
                           ", ".join(imported) or "none", verdict(not imported)])
    out += "\n" + table("Cloud SDKs imported (sim provider inventory)", ["command", "cloud SDKs imported", "none"],
                        checks)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    emit(run(args.repeats or (3 if args.quick else 15)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
