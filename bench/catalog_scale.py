"""The catalog at scale, as an operator backing up hourly for a year sees it: a catalog of N runs
(3 nodes each) in a local directory and on S3 (moto on loopback), and what each command costs
over it: wall time, the store calls it makes (and, on S3, the HTTP requests), the bytes it reads.

    python -m bench.catalog_scale [--quick] [--runs 10000] [--stores local,s3] [--moto-port 0]

The manifests are written directly in the catalog's own format (``Manifest`` and its keys, the
index by the catalog's own code), so a catalog of 10,000 runs takes seconds, not a year. Each
command runs in this process through the CLI (``snapctl.cli.app``, its output thrown away), so
its store calls can be counted; the inventory's agents are ports nobody listens on (status and
the dry run find them unreachable at once), and the local provider's store is empty (verify finds
the snapshots missing, prune and gc find none to delete): what is measured is the catalog's part.
Prune, which deletes, runs last, with a policy that keeps about 50 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc as pygc
import io
import os
import shutil
import socket
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import emit, ms, summary, table, timer

CLUSTER = "scale"
NODES = ("n1", "n2", "n3")
START = datetime(2025, 1, 1, tzinfo=UTC)
# About 50 runs kept out of a year of hourly runs: a day of them, two weeks, two months, half a year.
RETENTION = {"keep_last": 24, "daily": 14, "weekly": 8, "monthly": 6}
# One run in ~100 failed, in the first quarter of the year; none since: the only errors in the
# catalog are old ones, as they are once a setup's teething troubles are over.
FAILED_EVERY = 97
REGION = "us-east-1"
BUCKET = "snapctl-catalog-scale"


def run_id(i: int) -> str:
    return f"{START + timedelta(hours=i):%Y%m%dT%H%M%SZ}-{i % 4096:03x}"


def manifest(i: int, runs: int) -> Any:
    from snapctl.manifest import Manifest, NodeRecord
    from snapctl.providers import SnapshotRef

    rid, started = run_id(i), START + timedelta(hours=i)
    failed = i % FAILED_EVERY == FAILED_EVERY - 1 and i < runs // 4
    nodes = {}
    for node in NODES:
        tags = {"snapctl-cluster": CLUSTER, "snapctl-run": rid, "snapctl-node": node, "snapctl-volume": "data"}
        ref = SnapshotRef(provider="local", snapshot_id=f"{rid}-{node}-data", node=node, volume="data",
                          state="completed", bytes=1 << 30, created_at=f"{started:%Y-%m-%dT%H:%M:%S}Z", tags=tags)
        nodes[node] = NodeRecord(name=node, engine="sqlite", snapshots=[] if failed else [ref],
                                 prepare_sent_at=started, prepare_acked_at=started + timedelta(milliseconds=40),
                                 complete_acked_at=started + timedelta(milliseconds=400), freeze_window_s=0.36)
    return Manifest(cluster=CLUSTER, run_id=rid, status="failed" if failed else "succeeded", provider="local",
                    snapctl_version="0.1.0", owner="backup@ctl1:4242", started_at=started,
                    finished_at=started + timedelta(seconds=40), nodes=nodes, max_freeze_window_s=0.36,
                    error="preflight refused the backup: node n2 unreachable" if failed else None,
                    snapshots_completed=not failed)


def build(store: Any, runs: int, put: Callable[[str, bytes], None]) -> float:
    """Write ``runs`` manifests and their index with ``put``; the seconds it took."""
    from snapctl.catalog import Catalog
    from snapctl.catalog.index import index_entry

    catalog = Catalog(store, CLUSTER)
    entries = []

    def one(i: int) -> None:
        made = manifest(i, runs)
        put(f"{CLUSTER}/manifests/{made.run_id}.json", made.model_dump_json(indent=2).encode())
        entries.append(index_entry(made))

    with timer() as took, ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(runs)))
        catalog._write_index(entries, None)  # the catalog's own format, newest first
    return took[0]


class Counts:
    """Store calls by kind, bytes read, and S3 requests, counted by wrapping the stores' classes."""

    KINDS = ("read", "list", "write", "create", "replace", "delete")

    def __init__(self) -> None:
        self.calls = dict.fromkeys(self.KINDS, 0)
        self.read_bytes = 0
        self.requests = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.__init__()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from botocore.endpoint import Endpoint

        from snapctl.catalog.local import LocalBlobStore
        from snapctl.catalog.s3 import S3BlobStore

        saved = []
        for cls in (LocalBlobStore, S3BlobStore):
            for kind in self.KINDS:
                original = getattr(cls, kind)
                saved.append((cls, kind, original))
                setattr(cls, kind, self._counting(kind, original))
        make_request = Endpoint.make_request

        def counted_request(endpoint: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.requests += 1
            return make_request(endpoint, *args, **kwargs)

        Endpoint.make_request = counted_request
        try:
            yield
        finally:
            Endpoint.make_request = make_request
            for cls, kind, original in saved:
                setattr(cls, kind, original)

    def _counting(self, kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counting(store: Any, *args: Any, **kwargs: Any) -> Any:
            # S3's replace reads through read(): counted as the replace it is, not twice.
            inner = getattr(self._depth, "n", 0)
            self._depth.n = inner + 1
            try:
                result = original(store, *args, **kwargs)
            finally:
                self._depth.n = inner
            if inner == 0:
                with self._lock:
                    self.calls[kind] += 1
                    if kind == "read" and result is not None:
                        self.read_bytes += len(result)
            return result

        return counting

    _depth = threading.local()

    def said(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.calls.items() if n) or "none"


def write_inventory(where: Path, catalog: dict[str, str]) -> Path:
    import yaml

    ports = []
    for _ in NODES:  # ports nobody listens on: each agent is unreachable at once (connection refused)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    (where / "snapshots").mkdir(exist_ok=True)  # empty, and there: gc refuses a store that does not exist
    document = {
        "cluster": CLUSTER,
        "provider": {"type": "local", "store": str(where / "snapshots")},
        "catalog": catalog,
        "auth": {"token_file": str(where / "token")},
        "policy": {"agent_timeout_s": "2s"},
        "retention": RETENTION,
        "rpo": "24h",
        "nodes": [{"name": node, "agent": f"http://127.0.0.1:{port}",
                   "engine": {"type": "sqlite", "path": str(where / node / "data" / "db.sqlite")},
                   "volumes": [{"name": "data", "path": str(where / node / "data")}]}
                  for node, port in zip(NODES, ports, strict=True)],
    }
    (where / "token").write_text("t" * 32 + "\n")
    os.chmod(where / "token", 0o600)
    for node in NODES:
        (where / node / "data").mkdir(parents=True, exist_ok=True)
    path = where / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def cli(args: list[str]) -> int:
    """One command through the CLI in this process, its output discarded; its exit code."""
    import typer

    from snapctl.cli import app
    from snapctl.errors import SnapctlError

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = app(args=args, standalone_mode=False)
        except SnapctlError as exc:
            return int(exc.exit_code)
        except typer.TyperException:  # a usage error: an option this snapctl does not have
            return 2
    return int(code or 0)


def resolve(inventory: Path, ref: str) -> int:
    """What restore, drill and verify do first with RUN: the catalog's resolution, then the load."""
    from snapctl.catalog import open_catalog
    from snapctl.config import load_inventory

    catalog = open_catalog(load_inventory(inventory))
    catalog.load(catalog.resolve(ref, []))
    return 0


def measure(counts: Counts, what: Callable[[], int], traced: bool) -> tuple[float, int, float]:
    """Wall seconds, exit code and, when ``traced``, the peak traced MiB of one call (in a second
    call: tracing is slow)."""
    pygc.collect()
    counts.reset()
    with timer() as took:
        code = what()
    if not traced:
        return took[0], code, float("nan")
    said = dict(counts.calls), counts.read_bytes, counts.requests
    tracemalloc.start()
    what()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    counts.calls, counts.read_bytes, counts.requests = said
    return took[0], code, peak


def commands(inventory: Path, newest: str) -> list[tuple[str, Callable[[], int]]]:
    inv = ["-i", str(inventory)]
    prefix = newest[:13]  # 2026...T..: the hour's runs, one of them
    return [
        ("list", lambda: cli(["list", *inv])),
        ("list --limit 0 (every run)", lambda: cli(["list", "--limit", "0", *inv])),
        ("list -o json", lambda: cli(["list", "-o", "json", *inv])),
        ("show latest", lambda: cli(["show", "latest", *inv])),
        (f"show {prefix} (a unique prefix)", lambda: cli(["show", prefix, *inv])),
        ("status (agents unreachable)", lambda: cli(["status", *inv])),
        ("backup --dry-run (agents unreachable)", lambda: cli(["backup", "--dry-run", *inv])),
        ("verify latest", lambda: cli(["verify", "latest", *inv])),
        ("restore's RUN: latest", lambda: resolve(inventory, "latest")),
        ("restore's RUN: a unique prefix", lambda: resolve(inventory, prefix)),
        ("gc", lambda: cli(["gc", *inv])),
        ("prune --dry-run", lambda: cli(["prune", "--dry-run", *inv])),
    ]


def run_store(kind: str, runs: int, where: Path, moto_url: str | None, prune_too: bool,
              only: set[str] | None) -> tuple[list[list[str]], str]:
    from snapctl.catalog import LocalBlobStore

    counts = Counts()
    if kind == "local":
        root = where / "catalog"
        store = LocalBlobStore(root)

        def put(key: str, data: bytes) -> None:  # no fsync per manifest: a bench's catalog, built fast
            path = store._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        inventory = write_inventory(where, {"path": str(root)})
    else:
        import boto3

        from snapctl.catalog.s3 import S3BlobStore

        client = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=BUCKET)
        prefix = f"{where.name}"
        store = S3BlobStore(f"s3://{BUCKET}/{prefix}", client=client)
        put = store.write
        inventory = write_inventory(where, {"url": f"s3://{BUCKET}/{prefix}", "endpoint_url": moto_url,
                                            "region": REGION})
    built = build(store, runs, put)
    rows = []
    newest = run_id(runs - 1)
    todo = commands(inventory, newest)
    if prune_too:
        todo.append(("prune (keeps ~50)", lambda: cli(["prune", "-i", str(inventory)])))
    if only:
        todo = [(name, what) for name, what in todo if name.split()[0] in only]
    todo[0][1]()  # imports the commands' modules: the first row is not their import time
    with counts.installed():
        for name, what in todo:
            if name.startswith("prune ("):
                pygc.collect()
                counts.reset()
                with timer() as took:
                    code = what()
                wall, peak = took[0], float("nan")  # it deletes: not run twice
            else:
                wall, code, peak = measure(counts, what, kind == "local")
            rows.append([kind, runs, name, ms(wall), code, counts.said(), f"{counts.read_bytes / 2**20:.1f}",
                         counts.requests if kind == "s3" else "-", "-" if peak != peak else f"{peak:.0f}"])
    return rows, f"{kind}: {runs} runs written in {built:.1f} s"


@contextlib.contextmanager
def moto_server(port: int) -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalog_scale", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="500 runs")
    parser.add_argument("--runs", help="comma-separated catalog sizes (default 1000,10000)")
    parser.add_argument("--stores", default="local,s3", help="local, s3 or both")
    parser.add_argument("--moto-port", type=int, default=0, help="moto's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--no-prune", action="store_true", help="leave out the prune that deletes")
    parser.add_argument("--only", help="comma-separated command names (their first word: list,show,status,...)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.runs or ("500" if args.quick else "1000,10000")).split(",")]
    stores = args.stores.split(",")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true"}
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="snapctl-catalog-scale-") as tmp, contextlib.ExitStack() as stack:
        os.environ.update(env, XDG_STATE_HOME=str(Path(tmp) / "state"))
        moto_url = stack.enter_context(moto_server(args.moto_port)) if "s3" in stores else None
        for runs in sizes:
            for kind in stores:
                where = Path(tmp) / f"{kind}-{runs}"
                where.mkdir()
                made, note = run_store(kind, runs, where, moto_url, not args.no_prune,
                                       set(args.only.split(",")) if args.only else None)
                rows += made
                notes.append(note)
                shutil.rmtree(where, ignore_errors=True)
    emit(table("Catalog at scale: each command over a catalog of N runs (3 nodes each), in process",
               ["store", "N", "command", "wall ms", "exit", "store calls", "MiB read", "S3 requests",
                "peak traced MiB"], rows))
    emit("; ".join(notes) + f". At {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
