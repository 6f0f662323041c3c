"""Snapshot calls in a process of their own, for large clusters.

Cloud SDKs block, so each create call in flight needs a thread, and each thread needs the GIL
again when its call returns and while the SDK builds the result. With hundreds of nodes those
threads all return within a few milliseconds of each other (the holds began together), and in
the orchestrator's process they queue for the GIL with the event loop that must send every
node's COMPLETE: each node stays frozen until both got their turn. Measured at 1000 nodes, create
calls came back ~0.4 s late and their completes were acknowledged ~0.6 s after that
(docs/benchmarks.md). Here the threads live in a child process with its own GIL; the loop reads
their results from a pipe, many per read.

The child (``snapctl/provider_child.py``, its wire format there) builds its own provider from the
inventory's provider block (never the parent's object: a forked SDK client would share its
connections with the parent) and warms it up before it says it is ready. Closing its stdin asks it
to finish the calls it has and exit; a call still running when the parent goes away completes on
its own, and what it made carries the run's tags (`snapctl gc` finds it), as with threads in the
parent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapctl.errors import ProviderError
from snapctl.provider_child import READY, THREADS_HINT, frame, frames
from snapctl.provider_threads import CallRunner, ProviderThreads
from snapctl.providers import provider_factory_path

if TYPE_CHECKING:
    from snapctl.config import Policy
    from snapctl.providers import Provider

# From this many concurrent snapshot calls on, policy.provider_process auto makes them in a child
# process. It costs its start (~0.2 s of imports, and the provider's warm-up, which threads pay
# too; wall time where the preflight is too short to hide it) and buys somewhat shorter freezes: in 15 alternate rounds at 50 and 100 nodes the
# median margin p50 was lower in 13 (by 1-12 ms on a quiet machine), its p99 in 11
# (docs/benchmarks.md, item 30). A freeze window is what the databases feel; the wall time is not.
PROVIDER_PROCESS_FROM = 50
CALL_RUNNER_READY_S = 60.0  # a child's start: imports and its provider, on a loaded machine


class _Results(asyncio.Protocol):
    def __init__(self, worker: ProviderWorker) -> None:
        self.worker = worker
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in frames(self.buffer):
            self.worker._received(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker._ended()


class ProviderWorker:
    """The provider's calls, made by ``threads`` threads in a child process: a ``CallRunner``.

    ``submit`` returns an asyncio Future that the loop itself settles as the child's answers are
    read, many per read: no thread hands it over, so a burst of 1000 answers costs no wake-up of
    the loop per answer (a concurrent Future's would). Nothing here cancels it; whoever awaits it
    with a timeout shields it, so that the rollback still learns what the call made."""

    def __init__(self, provider_config: Mapping[str, Any], *, cluster: str, base_dir: Path, threads: int) -> None:
        self._init = {"provider": dict(provider_config), "factory": provider_factory_path(provider_config["type"]),
                      "cluster": cluster, "base_dir": str(base_dir),
                      "threads": max(1, threads), "sys_path": list(sys.path)}
        self._process: subprocess.Popen | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._reader: asyncio.ReadTransport | None = None
        self._calls: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._ready: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Start the child and hand it the provider's settings; returns at once (the child imports
        and builds its provider meanwhile: ``ready`` waits for that)."""
        self._process = subprocess.Popen([sys.executable, "-m", "snapctl.provider_child"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, close_fds=True)
        assert self._process.stdin is not None
        self._process.stdin.write(frame(self._init))
        self._process.stdin.flush()

    async def ready(self, timeout: float) -> None:
        """Wait until the child has built its provider and started its threads."""
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, self._process.stdin)
        self._reader, _ = await loop.connect_read_pipe(lambda: _Results(self), self._process.stdout)
        try:
            async with asyncio.timeout(timeout):
                await self._ready
        except TimeoutError:
            raise ProviderError(f"the provider worker process was not ready within {timeout:g}s (its start, "
                                "then the provider's SDK and credentials)",
                                hint=f"check the provider's credentials and network; or {THREADS_HINT}") from None

    def submit(self, call: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``call(*args)`` in the child, where ``call`` is a method of the provider: the child
        calls its own provider's method of that name. Call it from the loop that awaited ``ready``."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if self._writer is None or self._writer.is_closing():  # not ready yet, or shut down
            future.set_exception(self._gone_error())
            return future
        try:
            message = frame((self._next_id, call.__name__, args))
        except Exception as exc:  # noqa: BLE001 - a third-party volume model that cannot be pickled
            future.set_exception(ProviderError(f"cannot hand {call.__name__} to the provider worker process: {exc}",
                                               hint=THREADS_HINT))
            return future
        self._calls[self._next_id] = future
        self._next_id += 1
        self._writer.write(message)
        return future

    def shutdown(self) -> None:
        """Let the child end once the calls already submitted are done. Waits (up to 2 s) only for
        a child with nothing left to do, so that it is gone, and counted, when the run ends."""
        if self._writer is not None:
            self._writer.close()
        if self._process is not None and self._process.stdin and (
                self._writer is None or not self._writer.get_write_buffer_size()):
            self._process.stdin.close()  # now, not on the loop's next turn: the child's cue to end
        if self._calls:
            return  # answers still due may arrive while the loop runs; Popen reaps the child later
        if self._reader is not None:
            self._reader.close()
        elif self._process is not None and self._process.stdout:
            self._process.stdout.close()  # never read: the run ended before it needed the child
        if self._process is not None:
            try:  # nothing left to do: it exits as soon as it reads the end of its input
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    def _received(self, message: Any) -> None:
        if message[0] == READY:
            if self._ready is not None and not self._ready.done():
                if message[1] is None:
                    self._ready.set_result(None)
                else:
                    self._ready.set_exception(message[1])
            return
        call_id, ok, value = message
        future = self._calls.pop(call_id, None)
        if future is None or future.done():  # a caller cancelled what it should have shielded
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _ended(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._process is not None:
            try:  # its output ended: it is exiting, and its exit code says how
                self._process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(self._gone_error("before it was ready", "its error is on stderr above"))
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if future.done():
                continue
            future.set_exception(self._gone_error(
                f"with {len(calls)} snapshot call(s) unanswered",
                "what they made carries the run's tags: `snapctl gc` lists snapshots no manifest names"))

    def _gone_error(self, when: str = "", why: str = "") -> ProviderError:
        code = self._process.poll() if self._process is not None else None
        return ProviderError(
            " ".join(filter(None, ["the provider worker process ended",
                                   f"(exit code {code})" if code is not None else "", when])),
            hint="; ".join(filter(None, [why, THREADS_HINT])),
        )


def call_runner(policy: Policy, provider: Provider, provider_config: Mapping[str, Any], nodes: int, cluster: str,
                base_dir: Path) -> CallRunner:
    """Where a run's snapshot calls are made, as ``policy.provider_process`` says: by ``provider``
    in threads of this process, or by a child's own provider built from ``provider_config``. Either
    is warmed up by the time it is ready."""
    calls = min(policy.concurrency, nodes)
    if policy.provider_process == "always" or (policy.provider_process == "auto" and calls >= PROVIDER_PROCESS_FROM):
        return ProviderWorker(provider_config, cluster=cluster, base_dir=base_dir, threads=calls)
    return ProviderThreads(calls, warm_up=provider.warm_up)
