"""The floor this machine sets: one fan-out of N small HTTP requests over N kept-alive loopback
connections, when neither side does anything but move bytes.

    python -m bench.loopback [--quick] [--nodes 10,100,1000] [--rounds 20]

A backup over N nodes makes three such fan-outs (status, prepare, complete) and waits a hold lead
of about one more; every node's complete is sent inside its freeze window. On a 2-core machine
that also hosts all N agents, the kernel's loopback path (which runs the receiver's TCP work in
the sender's system call) and the servers' share of the cores bound what any client can reach.
Three clients against the same servers, in turns:

- ``raw``: non-blocking sockets and one epoll loop, no asyncio: the cheapest a Python client gets.
- ``asyncio protocol``: a bare asyncio protocol per connection that writes and counts answers:
  what asyncio itself costs.
- ``snapctl transport``: snapctl's ``AgentTransport`` (asyncio), every request its own coroutine
  with its deadline, as the orchestrator sends them; also on uvloop when the simulated agents'
  optional packages have it (``bench/simcluster.py``), for comparison: snapctl itself runs on asyncio.
- the servers: the same two epoll processes for both, answering a fixed 200 response.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import subprocess
import sys
import time

from bench.common import emit, median, summary, table
from bench.freeze import process_cpu_s

REQUEST = (b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
           b"User-Agent: snapctl\r\nAuthorization: Bearer 0123456789abcdef0123456789abcdef\r\n\r\n")
BODY = b'{"node":"n1","engine":{"engine":"sim","version":"sim","reachable":true,"held":false},"lease":null}'
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
SERVERS = 2  # one per core


def serve(ports: int) -> None:
    """One server process: a port per node, as every agent has its own; answer every request on
    every connection, forever."""
    listeners = {}
    poller = select.epoll()
    for _ in range(ports):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        poller.register(listener, select.EPOLLIN)
        listeners[listener.fileno()] = listener
    print(" ".join(str(listener.getsockname()[1]) for listener in listeners.values()), flush=True)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    while True:
        for fd, _ in poller.poll():
            if (listener := listeners.get(fd)) is not None:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[conn.fileno()] = (conn, bytearray())
                    poller.register(conn, select.EPOLLIN)
                continue
            conn, buffer = conns[fd]
            data = conn.recv(65536)
            if not data:
                poller.unregister(fd)
                conn.close()
                del conns[fd]
                continue
            buffer += data
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                del buffer[:end + 4]
                conn.send(RESPONSE)


def raw_fan_out(socks: list[socket.socket], poller: select.epoll) -> None:
    for sock in socks:
        sock.send(REQUEST)
    waiting = {sock.fileno(): sock for sock in socks}
    while waiting:
        for fd, _ in poller.poll():
            sock = waiting.get(fd)
            if sock is not None and sock.recv(65536).endswith(BODY):
                del waiting[fd]


class _Counting(asyncio.Protocol):
    """The least an asyncio client can do: write, and count whole answers as they arrive."""

    def __init__(self, round_: dict) -> None:
        self.round = round_

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.endswith(BODY):
            self.round["left"] -= 1
            if not self.round["left"]:
                self.round["done"].set_result(None)


def measure(nodes: int, ports: list[int], server_pids: list[int], rounds: int) -> dict[str, tuple[float, float, float]]:
    """Per client: (median wall of one fan-out s, client CPU µs per request, servers' CPU µs per request)."""
    from snapctl.agent_transport import AgentTransport

    results: dict[str, list[tuple[float, float, float]]] = {
        "raw": [], "asyncio protocol": [], "snapctl transport": []}
    socks = []
    for i in range(nodes):
        sock = socket.create_connection(("127.0.0.1", ports[i % len(ports)]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    poller = select.epoll()
    for sock in socks:
        poller.register(sock, select.EPOLLIN)
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/v1/status" for i in range(nodes)]
    headers = {"Authorization": "Bearer 0123456789abcdef0123456789abcdef"}

    async def transport_rounds(loop_name: str = "") -> None:
        loop = asyncio.get_running_loop()
        transport = AgentTransport()
        await asyncio.gather(*(transport.call("GET", url, None, headers, 5) for url in urls))  # connect
        round_: dict = {}
        bare = [(await loop.create_connection(lambda: _Counting(round_), "127.0.0.1", ports[i % len(ports)]))[1]
                for i in range(nodes)]
        for _ in range(rounds):
            with sampled(results.setdefault(f"snapctl transport{loop_name}", []), server_pids, nodes):
                await asyncio.gather(*(transport.call("GET", url, None, headers, 5) for url in urls))
            if loop_name:
                continue
            round_.update(left=nodes, done=loop.create_future())
            with sampled(results["asyncio protocol"], server_pids, nodes):
                for protocol in bare:
                    protocol.transport.write(REQUEST)
                await round_["done"]
            with sampled(results["raw"], server_pids, nodes):
                raw_fan_out(socks, poller)
        for protocol in bare:
            protocol.transport.close()
        await transport.aclose()

    raw_fan_out(socks, poller)
    asyncio.run(transport_rounds())
    uvloop = _uvloop()
    if uvloop is not None:
        uvloop.run(transport_rounds(" on uvloop"))
    for sock in socks:
        sock.close()
    return {name: (median([w for w, _, _ in runs]), median([c for _, c, _ in runs]), median([s for _, _, s in runs]))
            for name, runs in results.items()}


def _uvloop():
    """uvloop from the simulated agents' optional packages (bench/simcluster.py), if there."""
    from bench.simcluster import AGENT_DEPS

    if str(AGENT_DEPS) not in sys.path and AGENT_DEPS.is_dir():
        sys.path.append(str(AGENT_DEPS))
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


class sampled:
    """Times one fan-out: wall, this process's CPU and the servers' CPU, per request."""

    def __init__(self, into: list, server_pids: list[int], requests: int) -> None:
        self.into, self.server_pids, self.requests = into, server_pids, requests

    def __enter__(self) -> None:
        self.start = (time.perf_counter(), time.process_time(), process_cpu_s(self.server_pids))

    def __exit__(self, *exc: object) -> None:
        wall, cpu, servers = self.start
        self.into.append((time.perf_counter() - wall, (time.process_time() - cpu) / self.requests * 1e6,
                          (process_cpu_s(self.server_pids) - servers) / self.requests * 1e6))


def run(sizes: list[int], rounds: int) -> str:
    rows = []
    for n in sizes:
        servers = [subprocess.Popen([sys.executable, "-m", "bench.loopback", "serve", str(-(-n // SERVERS))],
                                    stdout=subprocess.PIPE, text=True) for _ in range(SERVERS)]
        try:
            ports = [int(port) for server in servers for port in server.stdout.readline().split()]
            pids = [server.pid for server in servers]
            for name, (wall, client_us, server_us) in measure(n, ports, pids, rounds).items():
                rows.append([n, name, f"{wall * 1000:.1f}", f"{wall / n * 1e6:.0f}", f"{client_us:.0f}", f"{server_us:.0f}"])
        finally:
            for server in servers:
                server.kill()
                server.wait()
    return table(f"Loopback floor: one fan-out of N requests over N kept-alive connections ({SERVERS} server "
                 f"processes, {os.cpu_count()} cores; median of {rounds} rounds)",
                 ["N", "client", "fan-out ms", "µs per request (wall)", "client CPU µs/request",
                  "servers CPU µs/request"], rows) + (
        "\nCPU per request includes the kernel's share (system time): on loopback the sender's system "
        "call also runs the receiver's TCP processing.\n")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.loopback", description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="N = 10, 100; 5 rounds")
    parser.add_argument("--nodes", help="comma-separated N (default 10,100,1000)")
    parser.add_argument("--rounds", type=int, help="fan-outs per N and client (default 20)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.nodes or ("10,100" if args.quick else "10,100,1000")).split(",")]
    emit(run(sizes, args.rounds or (5 if args.quick else 20)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
