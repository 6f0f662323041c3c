"""What every bench script shares: statistics, a plain-text table, the machine line, limits."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"  # the sim engine and provider's dist-info


def use_bench_plugins() -> None:
    """Make the simulated engine and provider visible as entry points, in this process and in children."""
    for path in (str(REPO), str(PLUGINS)):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(PLUGINS), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    from node_agent.engines.base import available_engines
    from snapctl.providers import available_providers

    available_engines.cache_clear()
    available_providers.cache_clear()


def raise_open_files_limit(wanted: int = 16384) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def summary(doc: str | None) -> str:
    """A script's docstring's first paragraph on one line: its ``--help`` description."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: p99 of 100 values is the 99th smallest, never an interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f}"


def secs(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds:.2f}"


def ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def verdict(ok: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[ok]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes into docs/benchmarks.md as is), preceded by its title."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    out = [f"### {title}", "", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out) + "\n"


def emit(text: str) -> None:
    print(text, flush=True)


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu or platform.processor() or 'unknown cpu'}), {mem_gib:.0f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def tool_version(tool: str) -> str | None:
    path = shutil.which(tool)
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
    return out[0] if out else path


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


@contextlib.contextmanager
def async_calls_on_the_loop_at_every_size(lift: bool) -> Iterator[None]:
    """auto makes async create calls on the loop only below the worker's threshold; the bench
    measures the loop at every size, beside the worker, by lifting that threshold for a run."""
    from snapctl import provider_worker

    threshold = provider_worker.PROVIDER_PROCESS_FROM
    if lift:
        provider_worker.PROVIDER_PROCESS_FROM = 1 << 30
    try:
        yield
    finally:
        provider_worker.PROVIDER_PROCESS_FROM = threshold
