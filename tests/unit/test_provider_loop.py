"""LoopCalls: a provider's async create calls run as tasks on the running loop, no more at once than
the run's concurrency; its other calls and its warm-up run in a thread; ``ready`` runs the async
warm-up after the blocking one and says why it failed; ``aclose`` ends what the run gave up on
and closes the provider's client, never failing the run. And ``call_runner`` picks it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from snapctl import provider_loop
from snapctl.config import Policy
from snapctl.errors import ProviderError
from snapctl.provider_loop import LoopCalls
from snapctl.provider_threads import ProviderThreads
from snapctl.provider_worker import PROVIDER_PROCESS_FROM, ProviderWorker, call_runner
from snapctl.providers import Capabilities


class AsyncProvider:
    """Records what ran where; each create call waits for ``release`` (set by default)."""

    name = "async-fake"
    capabilities = Capabilities()

    def __init__(self, warm_up_async_error: Exception | None = None, aclose_hangs: bool = False) -> None:
        self.events: list[str] = []
        self.threads: dict[str, int] = {}
        self.running = 0
        self.most_running = 0
        self.release = asyncio.Event()
        self.release.set()
        self.warm_up_async_error = warm_up_async_error
        self.aclose_hangs = aclose_hangs

    def warm_up(self) -> None:
        self.events.append("warm_up")
        self.threads["warm_up"] = threading.get_ident()

    async def warm_up_async(self) -> None:
        self.events.append("warm_up_async")
        if self.warm_up_async_error is not None:
            raise self.warm_up_async_error

    def snapshot(self, volumes, tags):
        raise AssertionError("the blocking create call must not be made")

    async def snapshot_async(self, volumes, tags):
        self.threads["snapshot_async"] = threading.get_ident()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
            return [f"ref-{volumes}"]
        finally:
            self.running -= 1

    def describe(self, refs):
        self.threads["describe"] = threading.get_ident()
        return refs

    async def aclose(self) -> None:
        self.events.append("aclose")
        if self.aclose_hangs:
            await asyncio.sleep(3600)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_create_calls_run_on_the_loop_no_more_at_once_than_the_runs_concurrency():
    provider = AsyncProvider()

    async def scenario():
        calls = LoopCalls(provider, 2)
        calls.start()
        await calls.ready(5)
        provider.release.clear()
        tasks = [calls.submit(provider.snapshot, f"n{i}", {}) for i in range(5)]
        await asyncio.sleep(0.05)
        assert provider.running == 2  # the other three wait for a slot
        provider.release.set()
        results = await asyncio.gather(*tasks)
        calls.shutdown()
        await calls.aclose()
        return results

    assert _run(scenario()) == [[f"ref-n{i}"] for i in range(5)]
    assert provider.most_running == 2
    assert provider.threads["snapshot_async"] == threading.get_ident()  # asyncio.run's loop is this thread's
    assert provider.events == ["warm_up", "warm_up_async", "aclose"]


def test_other_calls_and_the_blocking_warm_up_run_in_a_thread_not_on_the_loop():
    provider = AsyncProvider()

    async def scenario():
        calls = LoopCalls(provider, 4)
        calls.start()
        await calls.ready(5)
        described = await asyncio.wrap_future(calls.submit(provider.describe, ["r1"]))
        await calls.aclose()
        return described

    assert _run(scenario()) == ["r1"]
    assert provider.threads["warm_up"] != threading.get_ident()
    assert provider.threads["describe"] != threading.get_ident()


def test_a_failed_async_warm_up_fails_ready_with_the_providers_error_and_hint():
    provider = AsyncProvider(warm_up_async_error=ProviderError("no token for the async client", hint="log in"))

    async def scenario():
        calls = LoopCalls(provider, 1)
        calls.start()
        try:
            await calls.ready(5)
        finally:
            await calls.aclose()

    with pytest.raises(ProviderError) as failed:
        _run(scenario())
    assert failed.value.message == "no token for the async client" and failed.value.hint == "log in"


def test_a_foreign_error_or_a_hung_async_warm_up_fails_ready_saying_what_it_was(monkeypatch):
    provider = AsyncProvider(warm_up_async_error=OSError("connection refused"))

    async def ready(timeout: float):
        calls = LoopCalls(provider, 1)
        calls.start()
        try:
            await calls.ready(timeout)
        finally:
            await calls.aclose()

    with pytest.raises(ProviderError, match="could not get ready: OSError: connection refused"):
        _run(ready(5))

    async def hangs() -> None:
        await asyncio.sleep(3600)

    provider.warm_up_async = hangs
    with pytest.raises(ProviderError, match="async client was not ready within 0.2s"):
        _run(ready(0.2))


def test_aclose_cancels_a_call_the_run_gave_up_on_and_a_hung_client_close_fails_nothing(monkeypatch):
    monkeypatch.setattr(provider_loop, "ACLOSE_S", 0.2)
    provider = AsyncProvider(aclose_hangs=True)

    async def scenario():
        calls = LoopCalls(provider, 1)
        calls.start()
        await calls.ready(5)
        provider.release.clear()
        abandoned = calls.submit(provider.snapshot, "n1", {})
        await asyncio.sleep(0.01)
        calls.shutdown()
        await calls.aclose()  # returns: the hung close is bounded and its failure swallowed
        return abandoned

    abandoned = _run(scenario())
    assert abandoned.cancelled()
    assert provider.events[-1] == "aclose"


@pytest.mark.parametrize(("setting", "nodes", "runner"), [
    ("auto", PROVIDER_PROCESS_FROM - 1, LoopCalls), ("never", 10, ProviderThreads), ("always", 10, ProviderWorker),
    # From the worker's threshold on its processes make the calls: the SDK's CPU per call stays
    # off the loop that sends the completes.
    ("auto", PROVIDER_PROCESS_FROM, ProviderWorker),
])
def test_call_runner_uses_the_async_create_call_below_the_workers_threshold_unless_told_otherwise(
        tmp_path: Path, setting, nodes, runner):
    policy = Policy(provider_process=setting, concurrency=1000)
    chosen = call_runner(policy, AsyncProvider(), {"type": "local", "store": "s"}, nodes, "c1", tmp_path)
    assert type(chosen) is runner
    if runner is ProviderWorker:  # auto's worker makes the async calls on its processes' loops; always, blocking ones
        assert chosen._init["async_calls"] is (setting == "auto")
