"""The node agent: prepare/complete round trips on loopback and the agent's resident memory.

    python -m bench.agent [--quick] [--rounds 200]

A real `snapctl-agent` process each time: once with the SQLite engine (a real database held in
a write transaction), once with the simulated engine (no engine work: the agent's own cost).
Calls go through snapctl's own agent client, as a backup run makes them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import emit, median, ms, percentile, summary, table, use_bench_plugins
from bench.freeze import process_cpu_s

ROUND_S = 0.06


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(engine: dict, directory: Path, rounds: int, pki=None) -> list[object]:
    """``pki``: serve over TLS with its server certificate (``tests.agent.certs.Pki``)."""
    from snapctl.agent_client import open_agents
    from snapctl.config import parse_inventory

    token = secrets.token_urlsafe(24)
    (directory / "token").write_text(token)
    (directory / "token").chmod(0o600)  # as deployed: the agent warns about a token others can read
    port = _free_port()
    config = directory / f"agent-{engine['type']}.yaml"
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)} if pki else None
    config.write_text(yaml.safe_dump({"node": "n1", "port": port, "token_file": "token", "engine": engine,
                                      "log_level": "warning", **({"tls": tls} if tls else {})}))
    agent_bin = os.path.join(os.path.dirname(sys.executable), "snapctl-agent")
    command = [agent_bin] if os.path.exists(agent_bin) else [sys.executable, "-m", "node_agent.main"]
    proc = subprocess.Popen([*command, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"snapctl-agent did not start: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)
        rss_idle = _rss_mib(proc.pid)
        inventory = parse_inventory(yaml.safe_dump({
            "cluster": "bench", "provider": {"type": "sim"},
            "auth": {"token_file": "token", "token_env": None, **({"ca_file": str(pki.ca)} if pki else {})},
            "nodes": [{"name": "n1", "agent": f"http{'s' if pki else ''}://127.0.0.1:{port}", "volumes": ["data"]}],
        }), base_dir=directory)

        cpu: list[float] = []  # the agent's CPU seconds when the measured rounds begin and end

        async def rounds_of_calls() -> tuple[list[float], list[float], list[float]]:
            prepares, completes, statuses = [], [], []
            async with open_agents(inventory) as agents:
                agent = agents["n1"]
                for i in range(rounds + 10):
                    if i == 10:
                        cpu.append(process_cpu_s([proc.pid]))
                    run_id = f"bench-{i}"
                    started = time.perf_counter()
                    await agent.status()
                    status_done = time.perf_counter()
                    await agent.prepare(run_id, 30)
                    prepared = time.perf_counter()
                    await agent.complete(run_id)
                    completed = time.perf_counter()
                    if i >= 10:  # the first calls open connections and warm caches
                        statuses.append(status_done - started)
                        prepares.append(prepared - status_done)
                        completes.append(completed - prepared)
                    # Stay under the agent's per-client limit (20 calls per second per endpoint).
                    await asyncio.sleep(max(0.0, ROUND_S - (time.perf_counter() - started)))
            return prepares, completes, statuses

        prepares, completes, statuses = asyncio.run(rounds_of_calls())
        cpu_per_call = (process_cpu_s([proc.pid]) - cpu[0]) / (3 * rounds)  # status, prepare, complete
        pairs = [p + c for p, c in zip(prepares, completes)]
        return [engine["type"] + (", tls" if pki else ""), rounds, ms(median(prepares)), ms(percentile(prepares, 99)), ms(median(completes)),
                ms(percentile(completes, 99)), ms(median(pairs)), ms(median(statuses)), ms(cpu_per_call),
                f"{rss_idle:.0f}",
                f"{_rss_mib(proc.pid):.0f}"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def run(rounds: int) -> str:
    use_bench_plugins()  # the sim engine, for the agent process too (PYTHONPATH)
    with tempfile.TemporaryDirectory(prefix="snapctl-bench-agent-") as tmp:
        directory = Path(tmp)
        db = directory / "bench.db"
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT)")
            conn.executemany("INSERT INTO events (payload) VALUES (?)", [("x" * 100,)] * 10_000)
        from tests.agent.certs import make_pki  # a throwaway CA, as the TLS tests use

        rows = [measure({"type": "sqlite", "path": str(db)}, directory, rounds),
                measure({"type": "sim"}, directory, rounds),
                measure({"type": "sim"}, directory, rounds, make_pki(directory / "pki"))]
    return table(f"Agent round trips on loopback ({rounds} rounds, snapctl's HTTP client)",
                 ["engine", "rounds", "prepare p50 ms", "prepare p99", "complete p50 ms", "complete p99",
                  "prepare+complete p50 ms", "status p50 ms", "agent CPU ms per call", "RSS idle MiB",
                  "RSS after MiB"], rows) + (
        "\nsqlite: 10,000 rows; prepare checkpoints the WAL, takes BEGIN IMMEDIATE and reads row counts and "
        "checksums (the manifest's evidence). sim: no engine work, the agent's own cost; sim, tls: the same over TLS, connections kept alive (the handshake, in the first calls, not counted). Agent CPU: the agent "
        "process's user and system time over the measured rounds, per call (status, prepare and complete alike).\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="30 rounds")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args(argv)
    emit(run(args.rounds or (30 if args.quick else 200)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
