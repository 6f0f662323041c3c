"""snapshot_async: aiobotocore on the test's own event loop against moto over HTTP. The snapshots,
tags and refs of snapshot; its failures as snapshot's; the token bucket and the per-volume retry
awaited, never slept; the client closed by aclose; and no async call without aiobotocore."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from snapctl_aws.client import CREATE
from snapctl_aws.errors import PER_VOLUME_RATE

from snapctl.errors import ProviderError, ProviderThrottled
from snapctl.provider_loop import has_async_create
from snapctl.providers import TAG_NODE, TAG_RUN, SnapshotRef, snapshot_tags
from snapctl.ratelimit import TokenBucket
from tests.providers.aws.conftest import CLUSTER, ZONE
from tests.providers.aws.faults import AioFailFirst, inject_async
from tests.providers.aws.test_snapshot import all_snapshots, run_tags, tags_of


def on_loop(provider: Any, scenario: Callable[[], Awaitable[Any]]) -> Any:
    """``scenario`` on a loop of its own, as a backup runs its calls, the client closed after."""
    async def run() -> Any:
        try:
            return await scenario()
        finally:
            await provider.aclose()

    return asyncio.run(asyncio.wait_for(run(), 60))


def without_run(ref: SnapshotRef) -> dict[str, Any]:
    """A ref as two runs of the same call give it: all but the snapshot's id, time and run."""
    seen = ref.model_dump(exclude={"snapshot_id", "created_at"})
    seen["tags"].pop(TAG_RUN)
    return seen


def stored_without_run(ec2: Any, refs: list[SnapshotRef], run: str) -> list[tuple[str, str, dict[str, str]]]:
    stored = all_snapshots(ec2)
    return [(stored[r.snapshot_id]["VolumeId"], stored[r.snapshot_id]["Description"].replace(run, "RUN"),
             {k: v for k, v in tags_of(stored[r.snapshot_id]).items() if k != TAG_RUN}) for r in refs]


def test_volume_entries_make_the_snapshots_and_refs_that_snapshot_makes(provider, ec2, volume):
    other = ec2.create_volume(Size=4, AvailabilityZone=ZONE)["VolumeId"]
    volumes = provider.validate_volumes("n1", [{"volume": volume, "name": "data"}, {"volume": other}],
                                        base_dir=Path("."))

    blocking = provider.snapshot(volumes, run_tags("run-sync"))
    awaited = on_loop(provider, lambda: provider.snapshot_async(volumes, run_tags("run-async")))

    assert [r.volume for r in awaited] == ["data", other]
    assert [without_run(r) for r in awaited] == [without_run(r) for r in blocking]
    assert all(r.tags[TAG_RUN] == "run-async" for r in awaited)
    assert stored_without_run(ec2, awaited, "run-async") == stored_without_run(ec2, blocking, "run-sync")


def test_an_instance_entry_makes_the_snapshots_and_refs_that_snapshot_makes(provider, machine, ec2):
    # exclude: moto ignores ExcludeDataVolumeIds, so the excluded volume's snapshot is made and
    # deleted again: the path through AwsProvider.delete, in a thread.
    entry = {"instance": machine.instance, "exclude_boot": False, "exclude": [machine.data_volumes[1]]}
    volumes = provider.validate_volumes("n1", [entry], base_dir=Path("."))

    blocking = provider.snapshot(volumes, run_tags("run-sync"))
    awaited = on_loop(provider, lambda: provider.snapshot_async(volumes, run_tags("run-async")))

    assert sorted(r.volume for r in awaited) == sorted([machine.boot_volume, machine.data_volumes[0]])
    by_volume = {r.volume: r for r in blocking}
    assert [without_run(r) for r in awaited] == [without_run(by_volume[r.volume]) for r in awaited]
    assert all(r.extra["instance_id"] == machine.instance for r in awaited)
    assert sorted(stored_without_run(ec2, awaited, "run-async")) == sorted(stored_without_run(ec2, blocking, "run-sync"))
    assert len(all_snapshots(ec2)) == 4  # two each: neither left the excluded volume's behind


def test_fifty_create_calls_gathered_on_one_loop_make_fifty_snapshots_with_one_client(provider, ec2):
    sources = {f"n{i}": ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"] for i in range(50)}
    made: list[int] = []
    make_client = provider.aio._make_client

    async def counted() -> None:
        made.append(1)
        await make_client()

    provider.aio._make_client = counted

    async def backup() -> tuple[list[list[SnapshotRef]], int]:
        # No warm_up_async: the first calls make the client, once, for all of them.
        calls = [provider.snapshot_async(provider.validate_volumes(node, [{"volume": source}], base_dir=Path(".")),
                                         run_tags("run-50", node)) for node, source in sources.items()]
        refs = await asyncio.gather(*calls)
        return refs, (await provider.aio.client()).meta.config.max_pool_connections

    refs, pool = on_loop(provider, backup)

    assert made == [1]
    assert pool == 100  # the create bucket's burst: aiohttp would queue calls past its pool
    stored = all_snapshots(ec2)
    assert len(stored) == 50
    for (node, source), [ref] in zip(sources.items(), refs, strict=True):
        assert stored[ref.snapshot_id]["VolumeId"] == source
        assert tags_of(stored[ref.snapshot_id])[TAG_NODE] == node == ref.node


def test_an_unknown_volume_fails_with_the_error_of_the_blocking_call(provider):
    volumes = provider.validate_volumes("n1", [{"volume": "vol-0123456789abcdef0"}], base_dir=Path("."))

    with pytest.raises(ProviderError) as blocking:
        provider.snapshot(volumes, run_tags())
    with pytest.raises(ProviderError) as awaited:
        on_loop(provider, lambda: provider.snapshot_async(volumes, run_tags()))

    assert "InvalidVolume.NotFound" in awaited.value.message
    assert (type(awaited.value), awaited.value.message, awaited.value.hint) == (
        type(blocking.value), blocking.value.message, blocking.value.hint)


def test_a_failure_part_way_deletes_the_snapshot_already_made_and_raises(provider, ec2, volume):
    raw = [{"volume": volume, "name": "data"}, {"volume": "vol-0123456789abcdef0", "name": "gone"}]
    volumes = provider.validate_volumes("n1", raw, base_dir=Path("."))

    with pytest.raises(ProviderError, match="InvalidVolume.NotFound"):
        on_loop(provider, lambda: provider.snapshot_async(volumes, run_tags()))

    assert all_snapshots(ec2) == {}


def test_the_create_bucket_is_awaited_and_the_loop_goes_on_meanwhile(make_provider, ec2):
    provider = make_provider(create_rate=20, create_burst=1)
    blocking: list[float] = []

    def sleep(seconds: float) -> None:
        blocking.append(seconds)
        time.sleep(seconds)

    provider.ec2.buckets[CREATE] = TokenBucket(20, 1, sleep=sleep)  # the same bucket, its sleeps seen
    sources = {f"n{i}": ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"] for i in range(5)}

    async def backup() -> tuple[float, int]:
        await provider.warm_up_async()
        ticks = 0
        done = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        beating = asyncio.create_task(heartbeat())
        started = time.monotonic()
        await asyncio.gather(*[
            provider.snapshot_async(provider.validate_volumes(node, [{"volume": source}], base_dir=Path(".")),
                                    run_tags("run-paced", node)) for node, source in sources.items()])
        elapsed = time.monotonic() - started
        done.set()
        await beating
        return elapsed, ticks

    elapsed, ticks = on_loop(provider, backup)

    assert blocking == []
    assert elapsed >= 4 / 20 - 0.01  # one token at once, then one each 50 ms
    assert ticks >= 10
    assert len(all_snapshots(ec2)) == 5


def test_the_per_volume_rate_limit_is_waited_out_on_the_loop_and_retried(provider, volume):
    blocking: list[float] = []
    provider.ec2._sleep = blocking.append  # the blocking call's wait: never the async one's
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    async def backup() -> tuple[AioFailFirst, list[SnapshotRef]]:
        fault = await inject_async(provider, "CreateSnapshot", AioFailFirst(2, 400, PER_VOLUME_RATE, "too many"))
        return fault, await provider.snapshot_async(volumes, run_tags())

    fault, refs = on_loop(provider, backup)

    assert fault.calls == 3 and len(refs) == 1
    assert blocking == []


def test_throttling_past_the_retries_raises_provider_throttled_and_pauses_the_shared_bucket(make_provider, ec2, volume):
    provider = make_provider(max_attempts=1)
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    async def backup() -> list[SnapshotRef]:
        await inject_async(provider, "CreateSnapshot",
                           AioFailFirst(1, 503, "RequestLimitExceeded", "slow down", {"Retry-After": "30"}))
        return await provider.snapshot_async(volumes, run_tags())

    with pytest.raises(ProviderThrottled, match="RequestLimitExceeded") as caught:
        on_loop(provider, backup)

    assert caught.value.retry_after == 30
    bucket = provider.ec2.buckets[CREATE]  # the blocking calls' bucket too: EC2 meters the account
    assert bucket.available <= -29 * bucket.rate
    assert all_snapshots(ec2) == {}


def test_warm_up_async_asks_ec2_once_through_the_async_client(provider):
    async def warm() -> AioFailFirst:
        seen = await inject_async(provider, "DescribeSnapshots", AioFailFirst(0, 200, ""))  # counts, fails none
        await provider.warm_up_async()
        await provider.warm_up_async()  # again: nothing
        return seen

    assert on_loop(provider, warm).calls == 1


@pytest.mark.parametrize("case", ["no credentials", "no such profile"])
def test_warm_up_async_fails_with_the_error_of_warm_up(make_provider, monkeypatch, case):
    if case == "no credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name)
        provider = make_provider()
    else:
        provider = make_provider(profile="nosuch")

    with pytest.raises(ProviderError) as blocking:
        provider.warm_up()
    with pytest.raises(ProviderError) as awaited:
        on_loop(provider, provider.warm_up_async)

    assert (awaited.value.message, awaited.value.hint) == (blocking.value.message, blocking.value.hint)
    assert awaited.value.hint


def test_aclose_closes_the_clients_http_session_twice_and_without_a_client_alike(provider, volume):
    async def run() -> list[Any]:
        await provider.aclose()  # no client yet: nothing to close
        await provider.warm_up_async()
        client = await provider.aio.client()
        sessions = list(client._endpoint.http_session._sessions.values())  # aiohttp's, one per proxy
        await provider.aclose()
        await provider.aclose()
        return sessions

    sessions = asyncio.run(asyncio.wait_for(run(), 60))
    assert sessions and all(session.closed for session in sessions)

    # The next run, on another loop, makes a client of its own.
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))
    assert len(on_loop(provider, lambda: provider.snapshot_async(volumes, run_tags()))) == 1


def test_without_aiobotocore_the_provider_has_no_async_create_call(make_provider, monkeypatch):
    assert has_async_create(make_provider())
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "aiobotocore" else find_spec(name, *args))

    provider = make_provider()

    assert not has_async_create(provider)
    assert not any(hasattr(provider, name) for name in ("warm_up_async", "snapshot_async", "aclose"))


def test_the_async_calls_run_on_the_calling_loops_thread(provider, volume):
    """No thread of its own: what snapctl's loop awaits runs on that loop."""
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))
    threads: set[int] = set()

    async def backup() -> list[SnapshotRef]:
        client = await provider.aio.client()
        client.meta.events.register("before-send.ec2.CreateSnapshot", lambda **_: threads.add(threading.get_ident()))
        return await provider.snapshot_async(volumes, snapshot_tags(CLUSTER, "run-1", "n1"))

    assert len(on_loop(provider, backup)) == 1
    assert threads == {threading.get_ident()}


class _PassFirstThenFail(AioFailFirst):
    """Lets the first CreateSnapshot through to moto, then answers the rest as ``AioFailFirst`` does."""

    passed = False

    def __call__(self, **kwargs: Any) -> Any:
        if not self.passed:
            self.passed = True
            return None
        return super().__call__(**kwargs)


def test_a_call_cancelled_part_way_deletes_the_snapshot_it_made(provider, ec2, volume):
    # A run cancels a create call it gave up on (LoopCalls.aclose): what the call made by then
    # must not outlive it with nothing recording it.
    second = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    volumes = provider.validate_volumes("n1", [{"volume": volume, "name": "a"}, {"volume": second, "name": "b"}],
                                        base_dir=Path("."))

    async def cancelled() -> None:
        fault = await inject_async(provider, "CreateSnapshot", _PassFirstThenFail(99, 400, PER_VOLUME_RATE, "busy"))
        task = asyncio.create_task(provider.snapshot_async(volumes, run_tags()))
        while fault.calls < 1:  # the first snapshot made, the second call waiting out the per-volume limit
            await asyncio.sleep(0.01)
        assert len(all_snapshots(ec2)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    on_loop(provider, cancelled)

    assert all_snapshots(ec2) == {}


def test_an_async_client_that_cannot_load_fails_the_warm_up_naming_the_way_out(provider, monkeypatch):
    # aiobotocore pins botocore: an upgrade of botocore past the pin breaks its import. The run must
    # stop before any hold saying so, and how to back up with boto3 meanwhile.
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    with pytest.raises(ProviderError) as failed:
        on_loop(provider, provider.warm_up_async)
    assert failed.value.message.startswith("aws: the async client cannot load aiobotocore.session")
    assert "policy.provider_process: never" in failed.value.hint
