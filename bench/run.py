"""Run every benchmark (or some) and print their tables, headed by the machine they ran on.

    python -m bench.run [--quick] [--only freeze,floor,progress,cloud_sdk,tls_fanout,status_fanout,startup,local_provider,agent,loopback]

Full suite: 7-13 minutes on 2 cores; --quick: about 80 seconds. `./dev bench` installs what it compares
with (rsync; the simulated agents' httptools and uvloop) and runs it. Paste the output into
docs/benchmarks.md. Benchmarks print numbers; nothing here asserts on them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

from bench.common import emit, machine, raise_open_files_limit, summary, use_bench_plugins

BENCHES = ("startup", "agent", "loopback", "tls_fanout", "status_fanout", "freeze", "floor", "progress", "cloud_sdk",
           "local_provider")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each: about a minute")
    parser.add_argument("--only", help="comma-separated: " + ",".join(BENCHES))
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(BENCHES)
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)} (choose from {', '.join(BENCHES)})")
    use_bench_plugins()
    raise_open_files_limit()
    load = os.getloadavg()
    emit(f"## snapctl benchmarks{' (quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
         f"Machine: {machine()}; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.\n")
    for name in chosen:
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        module.main(["--quick"] if args.quick else [])
        emit(f"_({name}: {time.perf_counter() - started:.0f} s)_\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
