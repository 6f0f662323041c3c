"""The local provider against `cp -a` and `rsync -a`: a full snapshot of a data directory, an
incremental one after 5% of its files changed (against `rsync -a --link-dest`), and the peak
memory of a snapshot as the data grows.

    python -m bench.local_provider [--quick] [--size 2G] [--dir /tmp] [--repeats 5]

`snapshot()` returns once the copy is complete, with its write-back started but not waited for
(pending: what the engine's hold lasts for), like `cp -a`, which leaves its copy in the page
cache; `wait()` then fsyncs it (completed, on disk). So the full-snapshot table times both from
the same call: the snapshot against `cp -a`, snapshot + wait against `cp -a; sync`.

Data is generated under --dir (checked for room first) and removed afterwards. The page cache
is warm for every contender alike (the data was just written); each copy's destination is
removed and `sync` run before the next, outside the timing. The contenders take turns in a
rotating order; ratios are medians of each round's ratio, so a slow spell of the disk or of a
neighbour weighs on the contenders of one round alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, emit, median, ratio, secs, summary, table, timer, tool_version, verdict

BIG_FILE = 64 * 2**20
SMALL_FILE = 1 * 2**20


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def generate(root: Path, size: int) -> list[Path]:
    """Half the bytes in 64 MiB files (table files), half in 1 MiB files (segments, WAL)."""
    root.mkdir(parents=True)
    block = os.urandom(SMALL_FILE)
    files = []
    big = max(1, size // 2 // BIG_FILE)
    small = max(1, (size - big * BIG_FILE) // SMALL_FILE)
    for i in range(big):
        path = root / "tables" / f"t{i:04d}.dat"
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as out:
            out.writelines(i.to_bytes(4, "little") + j.to_bytes(4, "little") + block[8:]
                           for j in range(BIG_FILE // SMALL_FILE))
        files.append(path)
    for i in range(small):
        path = root / "segments" / f"{i // 256:03d}" / f"s{i:06d}.seg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "little") + block[8:])
        files.append(path)
    return files


def change_files(files: list[Path], fraction: float) -> int:
    """Rewrite the start of every 1/fraction-th file (new content and mtime); returns their bytes."""
    step = max(1, round(1 / fraction))
    changed = 0
    for path in files[step // 2::step]:
        size = path.stat().st_size
        with open(path, "r+b") as out:
            out.write(os.urandom(min(size, 4096)))
        changed += size
    return changed


def snapctl_snapshot(source: Path, store: Path, run: str) -> dict:
    """One local-provider snapshot, then its wait, in a child process (so its peak RSS is its own):
    ``s`` until snapshot() returned, ``durable_s`` until wait() did. The peak is the process's own
    VmHWM: Linux carries the parent's peak into a child's ``ru_maxrss`` across fork and exec, so
    after a 1000-node benchmark in the same ``bench.run`` that read 566 MiB."""
    code = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from snapctl_local import LocalProvider\n"
        "from snapctl.providers import snapshot_tags\n"
        "src, store, run = sys.argv[1:4]\n"
        "p = LocalProvider(LocalProvider.settings_model(type='local', store=store), cluster='bench', base_dir=Path('.'))\n"
        "vols = p.validate_volumes('n1', [{'name': 'data', 'path': src}], base_dir=Path('.'))\n"
        "t = time.perf_counter()\n"
        "refs = p.snapshot(vols, snapshot_tags('bench', run, 'n1'))\n"
        "took = time.perf_counter() - t\n"
        "p.wait(refs, time.monotonic() + 3600)\n"
        "durable = time.perf_counter() - t\n"
        "hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print(json.dumps({'s': took, 'durable_s': durable, 'peak_rss_kib': hwm,"
        " 'copied': refs[0].extra['copied_bytes'], 'linked': refs[0].extra['linked_files']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(source), str(store), run], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout)


def timed(command: list[str]) -> float:
    with timer() as wall:
        subprocess.run(command, check=True, capture_output=True)
    return wall[0]


def clean(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()


def run(size: int, base: Path, repeats: int) -> str:
    free = shutil.disk_usage(base).free
    needed = size * 5  # source, store (two snapshots), one contender's copy, slack
    if free < needed:
        return f"local provider bench skipped: {base} has {free / 2**30:.1f} GiB free, needs {needed / 2**30:.1f}\n"
    has_rsync = shutil.which("rsync") is not None
    work = Path(tempfile.mkdtemp(prefix="snapctl-bench-local-", dir=base))
    try:
        source = work / "src"
        files = generate(source, size)
        os.sync()
        cp_dir = work / "cp"
        snap, durable_snap = "snapctl snapshot", "snapctl snapshot + wait"
        contenders = {
            snap: lambda: snapctl_snapshot(source, work / "store", f"full{len(peak_rss)}"),
            "cp -a": lambda: timed(["cp", "-a", str(source), str(cp_dir)]),
            "cp -a; sync": lambda: timed(["sh", "-c", f"cp -a '{source}' '{cp_dir}' && sync"]),
        }
        if has_rsync:
            contenders["rsync -a"] = lambda: timed(["rsync", "-a", f"{source}/", str(cp_dir)])
        results: dict[str, list[float]] = {snap: [], durable_snap: [], **{name: [] for name in contenders if name != snap}}
        peak_rss: list[int] = []
        names = list(contenders)
        for i in range(repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                took = contenders[name]()
                if isinstance(took, dict):
                    peak_rss.append(took["peak_rss_kib"])
                    results[durable_snap].append(took["durable_s"])
                    took = took["s"]
                results[name].append(took)
                clean(work / "store", cp_dir)

        def vs(name: str, base: str) -> float:
            return median([a / b for a, b in zip(results[name], results[base])])

        on_disk = {snap: "no (pending; engine released)", durable_snap: "yes", "cp -a; sync": "yes (all filesystems)"}
        rows = [[name, on_disk.get(name, "no"), secs(median(times)), secs(min(times)), ratio(vs(name, "cp -a")),
                 ratio(vs(name, "cp -a; sync"))] for name, times in results.items()]
        out = table(f"Local provider: full snapshot of {size / 2**30:.2f} GiB in {len(files)} files "
                    f"({repeats} runs, rotating order)",
                    ["copy", "on disk when done", "median s", "min s", "/ cp -a", "/ cp -a; sync"], rows)
        out += (f"\nsnapctl snapshot (the engine's hold) at least as fast as cp -a: {verdict(vs(snap, 'cp -a') <= 1)}; "
                f"snapshot + wait (on disk) at least as fast as cp -a; sync: "
                f"{verdict(vs(durable_snap, 'cp -a; sync') <= 1)}.\n"
                f"(ratios: medians of each round's ratio; snapshot and snapshot + wait are the same calls)\n")

        # Incremental: a full snapshot, 5% of the files rewritten, then the next snapshot. Each
        # round also takes a full snapshot of the same data next to it (order alternating), so the
        # ratio compares the two in the same state of the disk, not the incremental with the
        # full-snapshot rounds above. Every snapshot is waited for: only a completed one is linked.
        store = work / "store"
        snapctl_snapshot(source, store, "base")
        rounds = []
        for i in range(repeats):  # each round rewrites another 5% of the files
            changed = change_files(files[i:], 0.05)
            os.sync()
            if i % 2:
                full = snapctl_snapshot(source, work / "store-full", f"full{i}")
                incremental = snapctl_snapshot(source, store, f"incr{i}")
            else:
                incremental = snapctl_snapshot(source, store, f"incr{i}")
                full = snapctl_snapshot(source, work / "store-full", f"full{i}")
            clean(work / "store-full")
            rounds.append((incremental, full))
        incremental = sorted((r for r, _ in rounds), key=lambda r: r["s"])[len(rounds) // 2]
        share = median([r["s"] / f["s"] for r, f in rounds])
        durable_share = median([r["durable_s"] / f["durable_s"] for r, f in rounds])
        full_here = median([f["s"] for _, f in rounds])
        rows = [["snapctl incremental", secs(median([r["s"] for r, _ in rounds])), secs(full_here),
                 f"{share * 100:.1f}%", verdict(share <= 0.10),
                 f"{incremental['copied'] / 2**20:.0f} MiB copied, {incremental['linked']} files hard-linked"],
                ["snapctl incremental + wait", secs(median([r["durable_s"] for r, _ in rounds])),
                 secs(median([f["durable_s"] for _, f in rounds])), f"{durable_share * 100:.1f}%",
                 verdict(durable_share <= 0.10), "on disk"]]
        if has_rsync:
            subprocess.run(["rsync", "-a", f"{source}/", str(work / "rs-base")], check=True)
            changed = change_files(files[repeats:], 0.05)
            os.sync()
            took = timed(["rsync", "-a", f"--link-dest={work / 'rs-base'}", f"{source}/", str(work / "rs-incr")])
            rows.append(["rsync -a --link-dest", secs(took), "-", f"{took / full_here * 100:.1f}%", "-", ""])
        out += "\n" + table(f"Incremental after changing 5% of the files ({changed / 2**20:.0f} MiB; {repeats} runs)",
                            ["copy", "median s", "full snapshot s (same rounds)", "of snapctl full", "<=10%", "note"],
                            rows)
        out += "\n(of snapctl full: median of each round's incremental / full)\n"

        # Memory: the same snapshot of a quarter of the data, and of all of it.
        quarter = work / "quarter"
        quarter_files = generate(quarter, max(size // 4, 2 * SMALL_FILE))
        small = snapctl_snapshot(quarter, work / "store-q", "q")
        out += "\n" + table("Peak memory (RSS) of one snapshot as the data grows", ["data", "files", "peak RSS MiB"], [
            [f"{max(size // 4, 2 * SMALL_FILE) / 2**30:.2f} GiB", len(quarter_files), f"{small['peak_rss_kib'] / 1024:.0f}"],
            [f"{size / 2**30:.2f} GiB", len(files), f"{median(peak_rss) / 1024:.0f}"],
        ])
        out += f"\n{tool_version('cp') or 'cp'}; {tool_version('rsync') or 'rsync not installed'}; data under {base}.\n"
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_provider", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="128 MiB, one run")
    parser.add_argument("--size", help="data size, e.g. 2G, 512M (default 2G; quick: 128M)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to generate the data")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    size = parse_size(args.size or ("128M" if args.quick else "2G"))
    emit(run(size, Path(args.dir), args.repeats or (1 if args.quick else 5)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
