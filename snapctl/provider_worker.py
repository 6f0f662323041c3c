"""Snapshot calls in a process of their own, for large clusters.

Cloud SDKs block, so each create call in flight needs a thread, and each thread needs the GIL
again when its call returns and while the SDK builds the result. With hundreds of nodes those
threads all return within a few milliseconds of each other (the holds began together), and in
the orchestrator's process they queue for the GIL with the event loop that must send every
node's COMPLETE: each node stays frozen until both got their turn. Measured at 1000 nodes, create
calls came back ~0.4 s late and their completes were acknowledged ~0.6 s after that
(docs/benchmarks.md). Here the threads live in a child process with its own GIL; the loop reads
their results from a pipe, many per read.

The child (``snapctl/provider_child.py``, its wire format there) is forked from snapctl's process
where that is safe, else a new interpreter (``snapctl/worker_process.py``). It builds its own
provider from the inventory's provider block (never the parent's object: a forked SDK client
would share its connections with the parent) and warms it up before it says it is ready. Past fifty or so
concurrent calls one process's GIL is itself the queue (its threads return together and take it
in turn), so the child forks siblings once its imports are done and before it builds anything,
each with its own provider, threads and pipes, and the calls are dealt out among them
(``worker_processes``). Closing a process's stdin asks it to finish the calls it has and exit; a
call still running when the parent goes away completes on its own, and what it made carries the
run's tags (`snapctl gc` finds it), as with threads in the parent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapctl.errors import ProviderError, SnapctlError
from snapctl.provider_child import LOG, READY, THREADS_HINT, frame, frames
from snapctl.provider_loop import LoopCalls, has_async_create
from snapctl.provider_threads import CallRunner, ProviderThreads
from snapctl.providers import Capabilities, NodeVolumes, provider_factory_path
from snapctl.worker_process import ForkedChild, start_worker_process

if TYPE_CHECKING:
    from snapctl.config import Inventory, Policy
    from snapctl.providers import Provider

# From this many concurrent snapshot calls on, policy.provider_process auto makes them in a child
# process. It costs its start (a new interpreter's ~0.2 s of imports where it cannot be forked,
# and the provider's warm-up, which threads pay too; wall time where the preflight is too short to
# hide it) and buys somewhat shorter freezes: in 15 alternate rounds at 50 and 100 nodes the
# median margin p50 was lower in 13 (by 1-12 ms on a quiet machine), its p99 in 11
# (docs/performance-log.md, item 30). A freeze window is what the databases feel; the wall time is not.
PROVIDER_PROCESS_FROM = 50
# One process per this many concurrent calls, up to the cap. On this 2-core machine (simulated
# 300 ms calls, alternate runs; docs/performance-log.md, item 42) the freeze margin's p99 read, with
# 1 / 2 / 4 processes: 18-21 / 15-17 / 20-26 ms at 100 calls, - / 37-39 / 33-35 ms at 300, and
# 95-180 / - / 55-121 ms at 1000 (8: no better than 4). Siblings are forked from the first child
# after its imports, so each costs milliseconds to start, not the ~0.2 s of a new interpreter.
CALLS_PER_PROCESS, MAX_PROCESSES = 50, 4
CALL_RUNNER_READY_S = 60.0  # a child's start: imports and its provider, on a loaded machine


class _Channel(asyncio.Protocol):
    """The pipes to one of the worker's processes, and the calls it has not answered yet."""

    def __init__(self, worker: ProviderWorker, index: int) -> None:
        self.worker, self.index = worker, index
        self.buffer = bytearray()
        self.writer: asyncio.WriteTransport | None = None
        self.reader: asyncio.ReadTransport | None = None
        self.calls: dict[int, asyncio.Future] = {}

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in frames(self.buffer):
            self.worker._received(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker._ended(self)


class ProviderWorker:
    """The provider's calls, made by ``threads`` threads in ``processes`` child processes (the first
    started here, the others forked from it): a ``CallRunner``.

    ``submit`` returns an asyncio Future that the loop itself settles as the children's answers are
    read, many per read: no thread hands it over, so a burst of 1000 answers costs no wake-up of
    the loop per answer (a concurrent Future's would). Nothing here cancels it; whoever awaits it
    with a timeout shields it, so that the rollback still learns what the call made."""

    def __init__(self, provider_config: Mapping[str, Any], *, cluster: str, base_dir: Path, threads: int,
                 processes: int = 1, async_calls: bool = False) -> None:
        self.processes = max(1, processes)
        self._init = {"provider": dict(provider_config), "factory": provider_factory_path(provider_config["type"]),
                      "cluster": cluster, "base_dir": str(base_dir),
                      "threads": -(-max(1, threads) // self.processes), "sys_path": list(sys.path),
                      "async_calls": async_calls, "log_level": logging.getLogger().getEffectiveLevel()}
        self._process: subprocess.Popen | ForkedChild | None = None
        self._sibling_pipes: list[tuple[int, int]] = []  # ours: (write to, read from) each forked sibling
        self._channels: list[_Channel] = []
        self._next_id = 0
        self._ready: asyncio.Future[None] | None = None
        self._not_ready = self.processes  # processes that have not said they are ready

    def start(self) -> None:
        """Start the child and hand it the provider's settings; returns at once (the child imports,
        forks its siblings and builds its provider meanwhile: ``ready`` waits for that)."""
        theirs = []
        for _ in range(self.processes - 1):
            (to_read, to_write), (from_read, from_write) = os.pipe(), os.pipe()
            theirs.append((to_read, from_write))
            self._sibling_pipes.append((to_write, from_read))
        try:
            self._process = start_worker_process([fd for pair in theirs for fd in pair])
        except BaseException:
            self.shutdown()  # closes our ends of the siblings' pipes
            raise
        finally:
            for fd in (fd for pair in theirs for fd in pair):
                os.close(fd)  # the child has them; kept here, a sibling's end would never be seen
        assert self._process.stdin is not None
        self._process.stdin.write(frame({**self._init, "siblings": theirs}))
        self._process.stdin.flush()

    async def ready(self, timeout: float) -> None:
        """Wait until every process has built its provider and started its threads."""
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        pipes = [(self._process.stdin, self._process.stdout)] + [
            (os.fdopen(write_fd, "wb", buffering=0), os.fdopen(read_fd, "rb", buffering=0))  # the transports own them
            for write_fd, read_fd in self._sibling_pipes]
        self._sibling_pipes = []
        for index, (to_child, from_child) in enumerate(pipes):
            channel = _Channel(self, index)
            self._channels.append(channel)
            channel.writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, to_child)
            channel.reader, _ = await loop.connect_read_pipe(lambda channel=channel: channel, from_child)
        try:
            async with asyncio.timeout(timeout):
                await self._ready
        except TimeoutError:
            raise ProviderError(f"the provider worker process was not ready within {timeout:g}s (its start, "
                                "then the provider's SDK and credentials)",
                                hint=f"check the provider's credentials and network; or {THREADS_HINT}") from None

    def submit(self, call: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``call(*args)`` in a child, where ``call`` is a method of the provider: the child
        calls its own provider's method of that name. Call it from the loop that awaited ``ready``.
        Calls are dealt to the processes in turn."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        channel = self._channels[self._next_id % len(self._channels)] if self._channels else None
        if channel is None or channel.writer is None or channel.writer.is_closing():  # not ready, or shut down
            future.set_exception(self._gone_error())
            return future
        try:
            message = frame((self._next_id, call.__name__, args))
        except Exception as exc:  # noqa: BLE001 - a third-party volume model that cannot be pickled
            future.set_exception(ProviderError(f"cannot hand {call.__name__} to the provider worker process: {exc}",
                                               hint=THREADS_HINT))
            return future
        channel.calls[self._next_id] = future
        self._next_id += 1
        channel.writer.write(message)
        return future

    async def aclose(self) -> None:
        self.shutdown()

    def shutdown(self, wait: bool = True) -> None:
        """Let the children end once the calls already submitted are done. Waits (up to 2 s) only for
        children with nothing left to do, so that they are gone, and counted, when the run ends.
        ``wait=False``: only close their input, their cue to end, and return at once; they exit
        (a thousand threads: 20-40 ms) while the run writes its manifest."""
        for write_fd, read_fd in self._sibling_pipes:  # never connected: the run ended before ready
            os.close(write_fd)
            os.close(read_fd)
        self._sibling_pipes = []
        for channel in self._channels:
            if channel.writer is not None:
                channel.writer.close()
                if not channel.writer.get_write_buffer_size():
                    # The pipe itself now, not on the loop's next turn: the process's cue to end.
                    channel.writer.get_extra_info("pipe").close()
        if not self._channels and self._process is not None and self._process.stdin:
            self._process.stdin.close()
        if not wait or any(channel.calls for channel in self._channels):
            return  # answers still due may arrive while the loop runs; Popen reaps the child later
        for channel in self._channels:
            if channel.reader is not None:
                channel.reader.close()
        if not self._channels and self._process is not None and self._process.stdout:
            self._process.stdout.close()  # never read: the run ended before it needed the child
        if self._process is not None:
            try:  # nothing left to do: it exits as soon as it reads the end of its input
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    def _received(self, channel: _Channel, message: Any) -> None:
        if message[0] == LOG:
            _log_here(*message[1:])
            return
        if message[0] == READY:
            if self._ready is not None and not self._ready.done():
                if message[1] is not None:
                    self._ready.set_exception(message[1])
                else:
                    self._not_ready -= 1
                    if not self._not_ready:
                        self._ready.set_result(None)
            return
        call_id, ok, value = message
        future = channel.calls.pop(call_id, None)
        if future is None or future.done():  # a caller cancelled what it should have shielded
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _ended(self, channel: _Channel) -> None:
        if channel.reader is not None:
            channel.reader.close()
        if channel.index == 0 and self._process is not None:
            try:  # its output ended: it is exiting, and its exit code says how
                self._process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(self._gone_error("before it was ready", "its error is on stderr above",
                                                       channel.index))
        calls, channel.calls = channel.calls, {}
        for future in calls.values():
            if future.done():
                continue
            future.set_exception(self._gone_error(
                f"with {len(calls)} snapshot call(s) unanswered",
                "what they made carries the run's tags: `snapctl gc` lists snapshots no manifest names",
                channel.index))

    def _gone_error(self, when: str = "", why: str = "", index: int = 0) -> ProviderError:
        # Only the first child is ours to wait for; a sibling's exit code is its parent's to read.
        code = self._process.poll() if self._process is not None and index == 0 else None
        which = "the provider worker process" if index == 0 else f"the provider worker's process {index + 1}"
        return ProviderError(
            " ".join(filter(None, [which, "ended", f"(exit code {code})" if code is not None else "", when])),
            hint="; ".join(filter(None, [why, THREADS_HINT])),
        )


def _log_here(name: str, level: int, message: str, trace: str | None) -> None:
    """A record a child logged, handled as if logged in this process: the CLI's handler says it
    once on stderr and keeps it for the `-o json` document (snapctl/logged_warnings.py)."""
    record = logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": message, "exc_text": trace})
    logging.getLogger(name).handle(record)


def worker_processes(calls: int, creates: int, capabilities: Capabilities) -> int:
    """How many processes make ``calls`` concurrent snapshot calls (``creates`` create calls in the
    run): one per ``CALLS_PER_PROCESS``, at most ``MAX_PROCESSES``; one only, when the provider
    meters its create calls with a token bucket the run could empty, since each process would
    keep a bucket of its own and together overrun the cloud's limit."""
    if capabilities.max_creates_per_s and creates > (capabilities.create_burst or 1):
        return 1
    return max(1, min(MAX_PROCESSES, -(-calls // CALLS_PER_PROCESS)))


def uses_async_create(policy: Policy, provider: Provider, calls: int) -> bool:
    """Whether ``auto`` makes a run's create calls with the provider's async client on snapctl's
    loop: where it has one and the calls are too few for the worker. From PROVIDER_PROCESS_FROM
    on the worker's processes make them (with the async client, on a loop in each): a real SDK
    spends CPU on every call (aiobotocore's CreateSnapshot ~0.75 ms), which on snapctl's loop would
    delay the completes of every held node (docs/performance-log.md, item 61)."""
    return policy.provider_process == "auto" and calls < PROVIDER_PROCESS_FROM and has_async_create(provider)


def held_by_process_locks(inventory: Inventory, volumes: Mapping[str, NodeVolumes]) -> list[str]:
    """The embedded nodes whose hold a create call in snapctl's own process would silently drop:
    their engine holds by a POSIX lock of this process (SQLite's fcntl locks), and the provider
    reads directories of this host (the local provider copies them), so its open and close of the
    database file ends the lock (sqlite.org/howtocorrupt.html, 2.2) while the node counts as held."""
    if not any(nv.directories is not None for nv in volumes.values()):
        return []
    from node_agent.engines.base import load_engine_factory

    held = []
    for node in inventory.nodes:
        if node.agent != "embedded" or not isinstance(kind := node.engine.get("type"), str):
            continue
        try:
            factory = load_engine_factory(kind)
        except SnapctlError:
            continue  # an unknown type is check_engine_blocks' to refuse
        if getattr(factory, "hold_is_process_lock", False):
            held.append(node.name)
    return held


def call_runner(policy: Policy, provider: Provider, provider_config: Mapping[str, Any], nodes: int, cluster: str,
                base_dir: Path, creates: int | None = None, *, out_of_process: bool = False) -> CallRunner:
    """Where a run's snapshot calls are made, as ``policy.provider_process`` says: by ``provider``
    in threads of this process, or by children's own providers built from ``provider_config``
    (``worker_processes`` of them). Either is warmed up by the time it is ready. ``creates``: the
    run's create calls (its volumes), ``nodes`` if not given. ``out_of_process``: ``auto`` makes
    them in the worker at any count (``held_by_process_locks``; ``never`` is refused by the preflight)."""
    calls = min(policy.concurrency, nodes)
    if not out_of_process and uses_async_create(policy, provider, calls):
        return LoopCalls(provider, calls)
    if policy.provider_process == "always" or (
            policy.provider_process == "auto" and (out_of_process or calls >= PROVIDER_PROCESS_FROM)):
        # auto's worker makes a provider's async create calls on a loop in each of its processes.
        return ProviderWorker(provider_config, cluster=cluster, base_dir=base_dir, threads=calls,
                              processes=worker_processes(calls, nodes if creates is None else creates,
                                                         provider.capabilities),
                              async_calls=policy.provider_process == "auto" and has_async_create(provider))
    return ProviderThreads(calls, warm_up=provider.warm_up)
