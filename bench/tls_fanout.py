"""TLS agents: one fan-out of N requests over N kept-alive TLS connections on loopback, through
snapctl's ``AgentTransport`` and through httpx (one client per agent, one shared TLS context:
what snapctl used for TLS agents before), with the plain-http transport beside them; then whole
backups of N lean simulated agents over TLS and over plain http, in alternate runs.

    python -m bench.tls_fanout [--quick] [--nodes 100,1000] [--rounds 10] [--backups 3]

The servers: two processes (one per core), a port per node, each an asyncio server that answers
every request with the same small JSON body, over TLS with a certificate from a throwaway CA
(the plain-http ports the same without). The first fan-out of each client opens its connections
(and their TLS handshakes) and is reported apart; the rounds after it reuse them, as a backup's
prepares and completes reuse the preflight's connections. Client CPU is this process's, per request.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, emit, median, summary, table
from bench.loopback import BODY, RESPONSE

SERVERS = 2


def serve(ports: int, cert: str | None, key: str | None) -> None:
    """One server process: ``ports`` listening ports, TLS when given a certificate, until killed."""
    context = None
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # GETs only: no body to wait for
                self.buffer = self.buffer[end + 4:]
                self.transport.write(RESPONSE)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Answer, "127.0.0.1", 0, ssl=context, backlog=256) for _ in range(ports)]
        print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _servers(nodes: int, cert: str | None, key: str | None) -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    for part in range(SERVERS):
        count = len(range(part, nodes, SERVERS))
        args = [sys.executable, "-m", "bench.tls_fanout", "serve", str(count)] + ([cert, key] if cert else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=REPO)
        procs.append(proc)
        ports += [int(p) for p in proc.stdout.readline().split()]
    return procs, ports


async def _fan_out(call, urls: list[str]) -> None:
    answers = await asyncio.gather(*(call(url) for url in urls))
    if any(body != BODY for body in answers):
        raise RuntimeError("a server's answer did not arrive whole")


def _client_rounds(kind: str, urls: list[str], tls: ssl.SSLContext | None, rounds: int) -> tuple[float, list[float]]:
    """(the first fan-out's wall time, then each round's client CPU per request)."""
    async def main() -> tuple[float, list[float]]:
        if kind == "httpx":
            import httpx

            clients = {url: httpx.AsyncClient(verify=tls, trust_env=False, timeout=30) for url in urls}

            async def call(url: str) -> bytes:
                return (await clients[url].get(url)).content

            async def close() -> None:
                await asyncio.gather(*(c.aclose() for c in clients.values()))
        else:
            from snapctl.agent_transport import AgentTransport

            transport = AgentTransport(tls)

            async def call(url: str) -> bytes:
                return (await transport.call("GET", url, None, {"Authorization": "Bearer 0123456789abcdef"}, 30)).content

            async def close() -> None:
                await transport.aclose()
        try:
            started = time.perf_counter()
            await _fan_out(call, urls)
            first = time.perf_counter() - started
            per_request = []
            for _ in range(rounds):
                cpu = time.process_time()
                await _fan_out(call, urls)
                per_request.append((time.process_time() - cpu) / len(urls))
            return first, per_request
        finally:
            await close()

    return asyncio.run(main())


def run(sizes: list[int], rounds: int) -> str:
    from tests.agent.certs import make_pki  # a throwaway CA, as the TLS tests use

    rows = []
    with tempfile.TemporaryDirectory(prefix="snapctl-bench-tls-") as scratch:
        pki = make_pki(Path(scratch))
        client_tls = ssl.create_default_context(cafile=str(pki.ca))
        for nodes in sizes:
            tls_procs, tls_ports = _servers(nodes, str(pki.server_cert), str(pki.server_key))
            plain_procs, plain_ports = _servers(nodes, None, None)
            try:
                variants = [("snapctl transport, TLS", "transport", [f"https://127.0.0.1:{p}/v1/status" for p in tls_ports], client_tls),
                            ("httpx, a client per agent, TLS", "httpx", [f"https://127.0.0.1:{p}/v1/status" for p in tls_ports], client_tls),
                            ("snapctl transport, plain http", "transport", [f"http://127.0.0.1:{p}/v1/status" for p in plain_ports], None)]
                for label, kind, urls, tls in variants:
                    first, per_request = _client_rounds(kind, urls, tls, rounds)
                    rows.append([str(nodes), label, f"{first * 1000:.0f}", f"{median(per_request) * 1e6:.0f}",
                                 f"{median(per_request) * nodes * 1000:.1f}"])
            finally:
                for proc in tls_procs + plain_procs:
                    proc.kill()
                    proc.wait()
                    proc.stdout.close()
    return table(f"Agents over TLS: one fan-out of N GETs on kept-alive loopback connections, {SERVERS} server processes "
                 f"(median of {rounds} rounds)",
                 ["N", "client", "first fan-out (connects) ms", "client CPU per request µs",
                  "client CPU per fan-out ms"], rows)


def backups(sizes: list[int], runs: int) -> str:
    from bench.common import percentile
    from bench.freeze import UNBOUND, run_backup
    from bench.simcluster import SimCluster

    rows = []
    provider = {"type": "sim", "create_latency_s": 0.3, **UNBOUND}
    for nodes in sizes:
        with SimCluster(nodes=nodes, provider=provider, tls=True) as over_tls, \
                SimCluster(nodes=nodes, provider=provider) as plain:
            measured: dict[str, list] = {"TLS": [], "plain http": []}
            for cluster in (over_tls, plain):  # warm: imports, the catalog's directories
                run_backup(cluster, 0.3)
            for _ in range(runs):
                for label, cluster in (("TLS", over_tls), ("plain http", plain)):
                    measured[label].append(run_backup(cluster, 0.3))
            for label, stats in measured.items():
                rows.append([str(nodes), label, f"{median([median(s.margin) for s in stats]) * 1000:.1f}",
                             f"{median([percentile(s.margin, 99) for s in stats]) * 1000:.1f}",
                             f"{median([s.hold_skew_s for s in stats]) * 1000:.1f}",
                             f"{median([s.wall_s for s in stats]):.2f}"])
    return table(f"Backups over TLS and plain http: lean simulated agents (prepare 50 ms), create 300 ms, rate limit "
                 f"not binding (median of {runs} alternate runs' figures)",
                 ["N", "agents", "margin p50 ms", "margin p99 ms", "hold skew ms", "wall s"], rows) + (
        "\nmargin = a node's freeze window less its own prepare round trip and the create latency, as in "
        "bench.freeze; the first run of each cluster (its TLS handshakes, in the preflight) is not counted.\n")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        serve(int(argv[1]), *(argv[2:4] or (None, None)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.tls_fanout", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="N=10, 3 rounds: a few seconds")
    parser.add_argument("--nodes", help="comma-separated sizes (default 100,1000; quick: 10)")
    parser.add_argument("--rounds", type=int, help="fan-outs per client after the first (default 10; quick: 3)")
    parser.add_argument("--backups", type=int, help="backups per size and kind of agent (default 3; quick: 1; 0: none)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.nodes or ("10" if args.quick else "100,1000")).split(",")]
    sys.path.insert(0, str(REPO))
    emit(run(sizes, args.rounds or (3 if args.quick else 10)))
    runs = args.backups if args.backups is not None else (1 if args.quick else 3)
    if runs:
        emit(backups(sizes, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
