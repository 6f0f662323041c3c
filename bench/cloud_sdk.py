"""Cloud SDKs and the freeze window: what loading each cloud's SDK costs, and where a backup pays it.

    python -m bench.cloud_sdk [--quick] [--runs 3] [--nodes 10] [--providers aws,gcp,azure]

Each cloud's real SDK talks HTTP on 127.0.0.1 to a local server that answers its wire format
(moto for EC2; tests/fakes for Compute Engine and Azure Resource Manager), and every measurement
is a new process, as every `snapctl backup` is.

- One provider in a new process: its first ``snapshot()`` with nothing loaded (what the first
  create call of a hold paid before providers warmed up), or ``warm_up()`` and then the first
  ``snapshot()``.
- A whole backup of N simulated agents with each cloud's provider, create calls in snapctl's
  threads, in alternate runs: the provider warmed up before the holds (as snapctl runs) or loading
  on the first create call (as it ran before): each node's freeze window, the part of it beyond
  its own prepare round trip, and the run's wall time.
- aws's and azure's create calls made each of the ways a backup can make them: the SDK's blocking
  client in snapctl's threads or in the provider worker's processes, or its async client as tasks
  on snapctl's event loop (``snapshot_async``), at 100 nodes, in alternate runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO, async_calls_on_the_loop_at_every_size, emit, median, ms, secs, summary, table, timer
from bench.simcluster import SimCluster

GCP_ZONE = "europe-west1-b"
AZURE_GROUP = "rg-bench"


@contextlib.contextmanager
def _clouds(nodes: list[str], providers: list[str]) -> Iterator[dict[str, tuple[dict, dict[str, list], dict[str, str]]]]:
    """Each of ``providers``: (provider block, node -> volumes block, environment), its server on
    127.0.0.1; only those servers start."""
    sys.path.insert(0, str(REPO))  # the local cloud servers live with the tests
    clouds: dict[str, tuple[dict, dict[str, list], dict[str, str]]] = {}
    with contextlib.ExitStack() as stack:
        if "aws" in providers:
            from tests.moto_server import DEFAULT_REGION, DUMMY_AWS_ENV, dummy_aws_credentials, shared_moto_server

            moto = shared_moto_server()
            moto.reset()
            with dummy_aws_credentials():
                import boto3

                ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
                volumes = {n: [{"volume": ec2.create_volume(Size=8, AvailabilityZone=f"{DEFAULT_REGION}a")["VolumeId"],
                                "name": "data"}] for n in nodes}
            clouds["aws"] = ({"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url,
                              "poll_interval_s": 0.05}, volumes, dict(DUMMY_AWS_ENV))
        if "gcp" in providers:
            from tests.fakes.gcp_compute import FakeGcpCompute

            gcp = stack.enter_context(FakeGcpCompute(op_running_polls=1, creating_polls=0, uploading_polls=0))
            for node in nodes:
                gcp.add_disk(GCP_ZONE, f"{node}-data")
            clouds["gcp"] = ({"type": "gcp", "project": gcp.project, "api_endpoint": gcp.url, "anonymous": True,
                              "poll_interval_s": 0.05},
                             {n: [{"disk": f"{n}-data", "zone": GCP_ZONE, "name": "data"}] for n in nodes}, {})
        if "azure" in providers:
            from tests.fakes.azure_compute import FakeAzureCompute

            azure = stack.enter_context(FakeAzureCompute(op_polls=1, provisioning_polls=0))
            clouds["azure"] = ({"type": "azure", "subscription_id": azure.subscription, "resource_group": AZURE_GROUP,
                                "location": "westeurope", "base_url": azure.url, "insecure_http_for_tests": True,
                                "dummy_credential_for_tests": True, "polling_interval_s": 0.05},
                               {n: [{"disk_id": azure.add_disk(AZURE_GROUP, f"{n}-data"), "name": "data"}]
                                for n in nodes}, {})
        yield clouds


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "bench.cloud_sdk", *args], capture_output=True, text=True,
                            timeout=300, check=False, cwd=REPO, env={**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"bench.cloud_sdk {args[0]} failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- in a child: one provider's calls ----------------------------------------------------------

def _calls(provider_block: dict, volumes_block: list, warm: bool) -> dict[str, float]:
    from snapctl.providers import create_provider, snapshot_tags

    provider = create_provider(provider_block, cluster="bench", base_dir=Path.cwd())
    volumes = provider.validate_volumes("node0001", volumes_block, base_dir=Path.cwd())
    times: dict[str, float] = {}
    if warm:
        with timer() as elapsed:
            provider.warm_up()
        times["warm_up_s"] = elapsed[0]
    with timer() as elapsed:
        provider.snapshot(volumes, snapshot_tags("bench", "run-1", "node0001"))
    times["first_call_s"] = elapsed[0]
    return times


# ---- in a child: one backup --------------------------------------------------------------------

def _backup(inventory_path: Path, warm: bool, on_loop: bool = False) -> dict[str, Any]:
    from snapctl import orchestrator
    from snapctl.config import load_inventory
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.provider_threads import ProviderThreads
    from snapctl.runner import run

    if not warm:  # as snapctl ran before its providers warmed up: the first create call loads the SDK
        orchestrator.call_runner = lambda policy, provider, *_, **__: ProviderThreads(len(inventory.nodes))
    inventory = load_inventory(inventory_path)
    with timer() as elapsed, async_calls_on_the_loop_at_every_size(on_loop):
        manifest = run(backup(inventory, BackupOptions(prune=False)))
    if manifest.status != "succeeded":
        raise RuntimeError(f"backup failed: {manifest.error}")
    # Deleted once measured: a local server's listings (moto's) slow down as snapshots pile up, and
    # the next runs' waits and finds would pay for this one's.
    from snapctl.providers import open_provider

    cleanup = open_provider(inventory)
    for record in manifest.nodes.values():
        for ref in record.snapshots:
            cleanup.delete(ref)
    beyond = []
    for record in manifest.nodes.values():
        opened = max(record.prepare_sent_at, manifest.hold_at) if manifest.hold_at else record.prepare_sent_at
        beyond.append(record.freeze_window_s - (record.prepare_acked_at - opened).total_seconds())
    return {"freeze": [r.freeze_window_s for r in manifest.nodes.values()], "beyond": beyond, "wall": elapsed[0]}


# ---- the tables --------------------------------------------------------------------------------

def first_calls(runs: int, providers: list[str]) -> str:
    rows = []
    with _clouds(["node0001"], providers) as clouds:
        for name in providers:
            block, volumes, env = clouds[name]
            cold, warm = [], []
            for _ in range(runs):
                for warmed, into in ((False, cold), (True, warm)):
                    into.append(_child(["calls", json.dumps(block), json.dumps(volumes["node0001"])]
                                       + (["--warm"] if warmed else []), env))
            rows.append([name, ms(median([c["first_call_s"] for c in cold])),
                         ms(median([w["warm_up_s"] for w in warm])), ms(median([w["first_call_s"] for w in warm]))])
    return table(f"One provider in a new process: snapshot() of one volume, its real SDK against a local server "
                 f"(median of {runs})", ["provider", "first call, nothing loaded ms", "warm_up() ms",
                                         "first call after warm_up ms"], rows)


def backups(nodes: int, runs: int, providers: list[str]) -> str:
    rows = []
    names = [f"node{i:04d}" for i in range(1, nodes + 1)]
    with _clouds(names, providers) as clouds:
        for name in providers:
            block, volumes, env = clouds[name]
            measured: dict[str, list[dict[str, Any]]] = {"warm_up before the holds": [],
                                                          "loaded by the first create call": []}
            with SimCluster(nodes=nodes, prepare_latency_s=0.05, provider=block, volumes_of=volumes.__getitem__,
                            policy={"provider_process": "never"}) as cluster:
                path = cluster.write_inventory()
                _child(["backup", str(path), "--warm"], env)  # the catalog's directories, the agents' first requests
                for _ in range(runs):
                    for variant, into in measured.items():
                        warm = variant.startswith("warm_up")
                        into.append(_child(["backup", str(path)] + (["--warm"] if warm else []), env))
            for variant, results in measured.items():
                rows.append([name, variant, *(ms(median([pick(result[key]) for result in results]))
                                              for key in ("freeze", "beyond") for pick in (median, max)),
                             secs(median([result["wall"] for result in results]))])
    return table(f"A backup of {nodes} simulated agents (prepare 50 ms), create calls in snapctl's threads, each run "
                 f"a new process (median of {runs} runs' p50 and max)",
                 ["provider", "the SDK", "freeze p50 ms", "freeze max ms", "beyond the prepare RTT p50 ms",
                  "beyond max ms", "wall s"], rows) + (
        "\nbeyond the prepare RTT = a node's freeze window less its own prepare round trip: the create call, the "
        "complete, and whatever else the hold waited for.\n")


# Where a backup makes a cloud's create calls: its SDK's blocking client in snapctl's threads or in
# the provider worker's processes, or its async client on snapctl's event loop (auto's choice below
# 50 calls; the bench lifts that threshold for it).
CALL_MODES = {"blocking, threads": ("never", False), "blocking, worker": ("always", False),
              "async client, worker's loops": ("auto", False), "async client, snapctl's loop": ("auto", True)}
ASYNC_CLIENTS = ("aws", "azure")  # aws: aiobotocore (snapctl-aws[async]); azure: azure-mgmt-compute's aio


def call_modes(nodes: int, runs: int, providers: list[str]) -> str:
    """Each cloud with an async client, its real SDK, its create calls made each of the four ways
    in alternate runs."""
    rows = []
    names = [f"node{i:04d}" for i in range(1, nodes + 1)]
    with _clouds(names, providers) as clouds:
        for name in providers:
            block, volumes, env = clouds[name]
            measured: dict[str, list[dict[str, Any]]] = {mode: [] for mode in CALL_MODES}
            with SimCluster(nodes=nodes, prepare_latency_s=0.05, provider=block,
                            volumes_of=volumes.__getitem__) as cluster:
                modes = list(CALL_MODES.items())
                for round_ in range(runs + 1):  # the first round warms the catalog's directories and the agents
                    for mode, (setting, on_loop) in modes[round_ % len(modes):] + modes[:round_ % len(modes)]:
                        inventory = cluster.write_inventory(provider_process=setting)
                        result = _child(["backup", str(inventory), "--warm"] + (["--on-loop"] if on_loop else []), env)
                        if round_:
                            measured[mode].append(result)
            for mode, results in measured.items():
                rows.append([name, mode, *(ms(median([pick(result[key]) for result in results]))
                                           for key in ("freeze", "beyond") for pick in (median, max)),
                             secs(median([result["wall"] for result in results]))])
    return table(f"Create calls made four ways: a backup of {nodes} simulated agents (prepare 50 ms), each cloud's "
                 f"real SDK against its local server, each run a new process (median of {runs} alternate runs' p50 "
                 "and max)", ["provider", "create calls", "freeze p50 ms", "freeze max ms",
                              "beyond the prepare RTT p50 ms", "beyond max ms", "wall s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_sdk", description=summary(__doc__))
    sub = parser.add_subparsers(dest="command")
    calls = sub.add_parser("calls", help="(internal) one provider's calls in this process")
    calls.add_argument("provider")
    calls.add_argument("volumes")
    calls.add_argument("--warm", action="store_true")
    one = sub.add_parser("backup", help="(internal) one backup in this process")
    one.add_argument("inventory", type=Path)
    one.add_argument("--warm", action="store_true")
    one.add_argument("--on-loop", action="store_true", help="async create calls on the loop at any size")
    parser.add_argument("--quick", action="store_true", help="3 nodes, one run each: about a minute")
    parser.add_argument("--runs", type=int, help="runs per variant (default 3; quick: 1)")
    parser.add_argument("--nodes", type=int, help="simulated agents in the backups (default 10; quick: 3)")
    parser.add_argument("--providers", default="aws,gcp,azure", help="comma-separated (default aws,gcp,azure)")
    parser.add_argument("--modes-nodes", type=int,
                        help="simulated agents in the backups that compare the ways of calling (default 100; quick: 3)")
    args = parser.parse_args(argv)
    if args.command == "calls":
        with tempfile.TemporaryDirectory(prefix="snapctl-bench-") as scratch:
            os.chdir(scratch)
            print(json.dumps(_calls(json.loads(args.provider), json.loads(args.volumes), args.warm)))
        return 0
    if args.command == "backup":
        print(json.dumps(_backup(args.inventory, args.warm, args.on_loop), default=str))
        return 0
    runs = args.runs or (1 if args.quick else 3)
    providers = [name for name in args.providers.split(",") if name]
    unknown = sorted(set(providers) - {"aws", "gcp", "azure"})
    if unknown:
        parser.error(f"unknown provider {', '.join(unknown)}: choose from aws, gcp, azure")
    emit(first_calls(runs, providers))
    emit(backups(args.nodes or (3 if args.quick else 10), runs, providers))
    if with_async := [name for name in providers if name in ASYNC_CLIENTS]:
        emit(call_modes(args.modes_nodes or (3 if args.quick else 100), runs, with_async))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
