"""The freeze margin's floor on this machine: the same simulated cluster held and released by the
least an orchestrator can do, beside snapctl's backup, alternate runs.

    python -m bench.floor [--nodes 10,100,1000] [--runs 3] [--create-latency 0.3] [--quick]

The floor is a bare asyncio protocol per agent (connected before the run, as snapctl's preflight
leaves its connections), raw request bytes, no task per node, no models, no manifest. It sends
every prepare with one hold instant (``hold_at``, as snapctl does), and when a node's prepare is
acknowledged starts its create call; the complete goes out as soon as that call has returned and
every node is held. Its create call is made two ways:

- ``timers``: a loop timer of the create latency. No provider SDK is this cheap, which makes it
  the floor of the loop's own work: writing N completes and reading N answers on loopback, while
  the N agents (sharing these cores) do theirs.
- ``threads``: a blocking sleep of the create latency in a thread of its own, started up front,
  its end handed to the loop: how a blocking cloud SDK call returns. All N return within
  milliseconds of each other and queue for the GIL and the scheduler, one wake-up at a time.

A node's margin is measured as snapctl's is (docs/benchmarks.md): its freeze window minus its
prepare round trip minus the create latency, both counted from the later of sending the prepare
and the hold instant. That is: from its prepare's acknowledgement to its complete's, minus the
create latency. Each column is the median over the runs of each run's p50 / p99. Between the
floor and ``backup()`` two more columns add snapctl's parts one at a time: its agent client with
a task per node, then the simulated provider's own calls.

A second table is the wall time of a whole run, as ``backup()``'s counts it: the floor's with
fresh connections, one status request to every agent (the preflight's share) and a hold instant
0.1 ms per node ahead (20 ms at least), beside ``backup()``'s, each with the hold skew the
engines reported, and both as a multiple of ``backup()`` at N=10.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bench.common import emit, median, percentile, summary, table
from bench.freeze import UNBOUND, run_backup
from bench.simcluster import SimCluster
from snapctl.provider_threads import ProviderThreads

_LEASE_S = 30.0
_HOLD_LEAD_PER_NODE_S = 0.0001  # the hold instant's lead: the skews it gives are in the wall table


class _Agent(asyncio.Protocol):
    """One kept-alive connection to one agent, one request in flight: ``answered`` is called with
    the loop's time and the body once a whole 2xx answer has arrived; anything else fails the run
    (``failed``)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.buffer = bytearray()
        self.answered: Callable[[float, bytes], None] | None = None
        self.failed: Callable[[Exception], None] = lambda exc: None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, method: bytes, path: bytes, body: dict | None, answered: Callable[[float, bytes], None]) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.answered = answered
        assert self.transport is not None
        self.transport.write(b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                             % (method, path, self.head, len(payload), payload))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        at = asyncio.get_running_loop().time()
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        answered, self.answered = self.answered, None
        if not 200 <= status < 300 or answered is None:
            self.failed(RuntimeError(f"agent answered {status} unasked or in error: {body!r}"))
            return
        answered(at, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answered is not None:
            self.failed(RuntimeError(f"agent closed the connection before answering: {exc}"))


class _Creates:
    """Create calls as blocking sleeps, one started thread per node, their ends handed to the loop."""

    def __init__(self, count: int, latency_s: float) -> None:
        self.latency_s = latency_s
        self.work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        while (returned := self.work.get()) is not None:
            time.sleep(self.latency_s)
            returned()

    def close(self) -> None:
        for _ in self.threads:
            self.work.put(None)


async def _floor_run(agents: list[_Agent], create: str, latency_s: float,
                     creates: _Creates | None) -> tuple[list[float], float]:
    """One hold and release of every node: each node's margin, and the spread of the instants the
    engines began holding (the manifest's hold skew)."""
    loop = asyncio.get_running_loop()
    run_id = f"floor-{secrets.token_hex(4)}"
    lead = max(0.02, len(agents) * _HOLD_LEAD_PER_NODE_S)
    hold_at = (datetime.now(UTC) + timedelta(seconds=lead)).isoformat()
    acked: dict[int, float] = {}
    returned: set[int] = set()
    margins: list[float] = []
    holds: list[datetime] = []
    done = loop.create_future()
    completed = [0]

    def failed(exc: Exception) -> None:
        if not done.done():
            done.set_exception(exc)

    for agent in agents:
        agent.failed = failed

    def complete(index: int) -> None:
        def answered(at: float, body: bytes) -> None:
            margins.append(at - acked[index] - latency_s)
            completed[0] += 1
            if completed[0] == len(agents):
                done.set_result(None)
        agents[index].send(b"POST", b"/v1/complete", {"run_id": run_id}, answered)

    def create_returned(index: int) -> None:
        returned.add(index)
        if len(acked) == len(agents):
            complete(index)

    def prepare_answered(index: int, at: float, body: bytes) -> None:
        acked[index] = at
        holds.append(datetime.fromisoformat(json.loads(body)["state"]["prepared_at"]))
        if create == "timers":
            loop.call_at(at + latency_s, create_returned, index)
        else:
            assert creates is not None
            creates.work.put(lambda: loop.call_soon_threadsafe(create_returned, index))
        if len(acked) == len(agents):  # the barrier: calls that returned before it complete now
            for waiting in sorted(returned):
                complete(waiting)

    for index, agent in enumerate(agents):
        agent.send(b"POST", b"/v1/prepare", {"run_id": run_id, "lease_s": _LEASE_S, "hold_at": hold_at},
                   lambda at, body, index=index: prepare_answered(index, at, body))
    await asyncio.wait_for(done, timeout=60 + latency_s)
    return margins, (max(holds) - min(holds)).total_seconds()


async def _connect(cluster: SimCluster) -> list[_Agent]:
    loop = asyncio.get_running_loop()
    connected = await asyncio.gather(*(
        loop.create_connection(lambda port=port: _Agent("127.0.0.1", port, cluster.token), "127.0.0.1", port)
        for port in cluster.ports.values()))
    return [agent for _, agent in connected]


def _close(agents: list[_Agent]) -> None:
    for agent in agents:
        if agent.transport is not None:
            agent.transport.close()


async def _ask_every_agent(agents: list[_Agent]) -> None:
    """The preflight's share: one status request to every agent, all answered."""
    done = asyncio.get_running_loop().create_future()
    left = [len(agents)]

    def answered(at: float, body: bytes) -> None:
        left[0] -= 1
        if not left[0]:
            done.set_result(None)

    def failed(exc: Exception) -> None:
        if not done.done():
            done.set_exception(exc)

    for agent in agents:
        agent.failed = failed
        agent.send(b"GET", b"/v1/status", None, answered)
    await asyncio.wait_for(done, timeout=60)


def _floor_wall(cluster: SimCluster, latency_s: float) -> tuple[float, float]:
    """One whole run of the floor, as a backup's wall time counts it (fresh connections, a status
    request to every agent, then the hold and release with the create calls as loop timers): its
    wall time and hold skew."""
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        agents = await _connect(cluster)
        try:
            await _ask_every_agent(agents)
            _, hold_skew_s = await _floor_run(agents, "timers", latency_s, None)
            return loop.time() - started, hold_skew_s
        finally:
            _close(agents)

    return asyncio.run(main())


def _floor_margins(cluster: SimCluster, create: str, latency_s: float) -> list[float]:
    async def main() -> list[float]:
        agents = await _connect(cluster)
        creates = _Creates(len(agents), latency_s) if create == "threads" else None
        try:
            return (await _floor_run(agents, create, latency_s, creates))[0]
        finally:
            if creates is not None:
                creates.close()
            _close(agents)

    return asyncio.run(main())


async def _client_run(agents: dict, threads: ProviderThreads, create: Callable[[str], tuple], latency_s: float,
                      run_id: str) -> list[float]:
    """One hold and release through snapctl's agent client, a task per node as backup() has it."""
    hold_at = datetime.now(UTC) + timedelta(seconds=max(0.02, len(agents) * _HOLD_LEAD_PER_NODE_S))
    acked: dict[str, float] = {}
    all_held = asyncio.Event()
    margins: list[float] = []

    async def node(name: str) -> None:
        await agents[name].prepare(run_id, _LEASE_S, hold_at)
        acked[name] = time.monotonic()
        if len(acked) == len(agents):
            all_held.set()
        await asyncio.wrap_future(threads.submit(*create(name)))
        await all_held.wait()
        await agents[name].complete(run_id)
        margins.append(time.monotonic() - acked[name] - latency_s)

    await asyncio.gather(*(node(name) for name in agents))
    return margins


def _client_margins(cluster: SimCluster, latency_s: float, with_provider: bool) -> list[float]:
    """snapctl's agent client (its transport and response models) in a task per node, and its
    provider threads making either bare sleeps or the simulated provider's own snapshot calls."""
    from snapctl.agent_client import open_agents
    from snapctl.providers import create_provider, snapshot_tags

    inventory = cluster.inventory()
    provider = create_provider(inventory.provider, cluster=inventory.cluster, base_dir=inventory.base_dir)
    volumes = {node.name: provider.validate_volumes(node.name, node.volumes, base_dir=inventory.base_dir)
               for node in inventory.nodes}
    run_id = f"floor-{secrets.token_hex(4)}"

    def create(name: str) -> tuple:
        if with_provider:
            return provider.snapshot, volumes[name], snapshot_tags(inventory.cluster, run_id, name)
        return time.sleep, latency_s

    async def main() -> list[float]:
        threads = ProviderThreads(len(volumes))
        threads.start()
        try:
            async with open_agents(inventory) as agents:
                await asyncio.gather(*(agent.status() for agent in agents.values()))  # connect, as a preflight does
                return await _client_run(agents, threads, create, latency_s, run_id)
        finally:
            threads.shutdown()

    return asyncio.run(main())


def _summary(per_run: list[list[float]]) -> str:
    return f"{median([percentile(m, 50) for m in per_run]) * 1000:.1f} / " \
           f"{median([percentile(m, 99) for m in per_run]) * 1000:.1f}"


# Each variant adds one part of a real run to the one before it; "auto" is what backup() does by default.
VARIANTS: dict[str, Callable[[SimCluster, float], list[float]]] = {
    "floor: timers": lambda cluster, latency: _floor_margins(cluster, "timers", latency),
    "floor: threads": lambda cluster, latency: _floor_margins(cluster, "threads", latency),
    "+ snapctl's client": lambda cluster, latency: _client_margins(cluster, latency, False),
    "+ sim provider's calls": lambda cluster, latency: _client_margins(cluster, latency, True),
    "backup(), threads": lambda cluster, latency: run_backup(cluster, latency, provider_process="never").margin,
    "backup(), auto": lambda cluster, latency: run_backup(cluster, latency).margin,
}


def floor(sizes: list[int], runs: int, latency_s: float) -> str:
    rows, walls = [], {}
    for nodes in sizes:
        provider = {"type": "sim", "create_latency_s": latency_s, **UNBOUND}
        margins: dict[str, list[list[float]]] = {name: [] for name in VARIANTS}
        floor_walls: list[tuple[float, float]] = []
        backups = []
        with SimCluster(nodes=nodes, prepare_latency_s=0.05, provider=provider) as cluster:
            run_backup(cluster, latency_s)  # warms imports and the agents
            for _ in range(runs):  # alternate, so that a noisy spell falls on every variant
                for name, variant in VARIANTS.items():
                    gc.collect()  # the variant before left a loop's worth of garbage: not this one's pause
                    margins[name].append(variant(cluster, latency_s))
                gc.collect()
                floor_walls.append(_floor_wall(cluster, latency_s))
                gc.collect()
                backups.append(run_backup(cluster, latency_s))
        rows.append([str(nodes), *(_summary(margins[name]) for name in VARIANTS)])
        walls[nodes] = (median([wall for wall, _ in floor_walls]), median([skew for _, skew in floor_walls]),
                        median([stats.wall_s for stats in backups]), median([stats.hold_skew_s for stats in backups]))
    reference = walls[10][2] if 10 in walls else None
    def times_n10(seconds: float) -> str:
        return f"{seconds / reference:.1f}x" if reference else "-"

    wall_rows = [[str(n), f"{floor_s:.3f}", f"{backup_s:.3f}", f"{floor_skew * 1000:.1f}", f"{backup_skew * 1000:.1f}",
                  times_n10(floor_s), times_n10(backup_s)]
                 for n, (floor_s, floor_skew, backup_s, backup_skew) in walls.items()]
    margin_table = table(f"The margin's floor, and what each part of a run adds: {runs} alternate runs, create "
                         f"{latency_s * 1000:.0f} ms, unbound (median of the runs' p50 / p99, ms)",
                         ["N", *VARIANTS], rows)
    wall_table = table("Wall time: the floor's whole run (fresh connections, a status request to every agent, then "
                       "the hold, create calls as timers) and backup()'s (median s)",
                       ["N", "floor s", "backup() s", "floor hold skew ms", "backup() hold skew ms",
                        "floor / backup() at N=10", "backup() / backup() at N=10"], wall_rows)
    return margin_table + "\n" + wall_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=summary(__doc__))
    parser.add_argument("--nodes", default="10,100,1000", help="cluster sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--create-latency", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true", help="N=1 and 10, one run each")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.runs = "1,10", 1
    emit(floor([int(n) for n in args.nodes.split(",")], args.runs, args.create_latency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
