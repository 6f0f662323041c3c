"""snapshot_async: a backup's creates with azure-mgmt-compute's aio client (aiohttp) on one event
loop, against the local ARM; the same snapshots and errors as snapshot(), and the loop never blocked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snapctl.errors import ProviderError, ProviderThrottled
from snapctl.providers import TAG_VOLUME
from tests.fakes.azure_compute import FakeAzureCompute
from tests.providers.azure.conftest import DISKS, RESOURCE_GROUP
from tests.providers.azure.test_azure_provider import RG, _CountingCredential, _with_credential, tags

REPO = Path(__file__).resolve().parents[3]


def _with(provider, credential):
    from snapctl_azure.aio import AsyncArm

    provider = _with_credential(provider, credential)
    provider._aio = AsyncArm(provider.api)
    return provider


def run(provider, *calls, warm_up_async: bool = True) -> list[Any]:
    """Each of ``calls`` (volumes, tags) as one snapshot_async, gathered on a fresh loop, then aclose."""

    async def main() -> list[Any]:
        try:
            if warm_up_async:
                await provider.warm_up_async()
            return await asyncio.gather(*(provider.snapshot_async(v, t) for v, t in calls))
        finally:
            await provider.aclose()

    return asyncio.run(main())


def test_snapshot_async_makes_what_snapshot_makes(azure, provider, volumes):
    provider.warm_up()
    sync_refs = provider.snapshot(volumes, tags(run="sync.1"))
    [async_refs] = run(provider, (volumes, tags(run="async.1")))

    puts = azure.requests_to("PUT", "/snapshots/")
    assert [p.status for p in puts] == [202] * 4
    sync_puts, async_puts = puts[:2], puts[2:]
    for put, ref, disk_id in zip(async_puts, async_refs, azure.disk_ids):
        assert put.body["properties"] == {"incremental": True,
                                          "creationData": {"createOption": "Copy", "sourceResourceId": disk_id}}
        assert put.body["tags"] == {**tags(run="async.1"), TAG_VOLUME: ref.volume}
        assert put.body["location"] == "westeurope"
        assert ref.snapshot_id.endswith(put.path.rsplit("/", 1)[-1])
        assert ref.snapshot_id.split("/")[:-1] == sync_refs[0].snapshot_id.split("/")[:-1]
        assert "/operations/" in ref.extra["operation"] and ref.created_at
        assert azure.snapshots()[ref.extra["name"]]["properties"]["provisioningState"] == "Creating"
    for sync, made in zip(sync_refs, async_refs):
        assert made.model_dump(exclude={"snapshot_id", "tags", "created_at", "extra"}) == \
            sync.model_dump(exclude={"snapshot_id", "tags", "created_at", "extra"})
        assert made.extra.keys() == sync.extra.keys() and made.extra["disk_id"] == sync.extra["disk_id"]
    assert [p.body["properties"] for p in sync_puts] == [p.body["properties"] for p in async_puts]
    # What snapshot_async made, the sync client waits for and finds, as a backup's wait does.
    done = provider.wait(async_refs, time.monotonic() + 30)
    assert [r.state for r in done] == ["completed", "completed"]
    assert {r.snapshot_id for r in provider.find({"snapctl-run": "async.1"})} == {r.snapshot_id for r in async_refs}


def test_fifty_calls_gathered_on_one_loop_all_succeed(azure, provider, volumes):
    provider.warm_up()
    calls = [(volumes, tags(node="n1", run=f"run.{i}")) for i in range(50)]

    results = run(provider, *calls)

    assert all(len(refs) == len(DISKS) for refs in results)
    puts = azure.requests_to("PUT", "/snapshots/")
    assert len(puts) == 50 * len(DISKS) and {p.status for p in puts} == {202}
    made = {r.extra["name"] for refs in results for r in refs}
    assert len(made) == 50 * len(DISKS) and made == set(azure.snapshots())


def test_without_warm_up_the_client_is_built_once_on_first_use(azure, provider, volumes):
    credential = _CountingCredential()
    provider = _with(provider, credential)

    results = run(provider, *[(volumes, tags(run=f"run.{i}")) for i in range(10)], warm_up_async=False)

    assert len(results) == 10 and len(azure.requests_to("PUT")) == 20
    assert len(credential.scopes) == 1  # ten calls at once, one client and one token


def test_warm_up_async_reads_once_through_the_async_client_with_the_token_ready_and_again_does_nothing(
        azure, provider, volumes):
    # One read, changing nothing: a proxy or CA only aiohttp's client lacks stops the run before any
    # hold, not in the first create call with every node held.
    credential = _CountingCredential()
    provider = _with(provider, credential)
    provider.warm_up()

    async def main() -> None:
        try:
            await provider.warm_up_async()
            client = provider._aio._client
            await provider.warm_up_async()
            assert provider._aio._client is client
            reads = [(r.method, r.path.split("?")[0]) for r in azure.requests]
            assert reads == [("GET", f"/subscriptions/{azure.subscription}/resourceGroups/{RESOURCE_GROUP}"
                                     "/providers/Microsoft.Compute/snapshots")], reads  # once, writing nothing
            assert provider._aio.transport.session is not None
            await provider.snapshot_async(volumes, tags())
        finally:
            await provider.aclose()

    asyncio.run(main())
    assert credential.scopes == [("https://management.azure.com/.default",)]  # warm_up's token served the creates
    assert len(azure.requests_to("PUT")) == 2


def test_warm_up_async_without_usable_credentials_fails_as_warm_up_does(azure, provider, volumes):
    from azure.core.exceptions import ClientAuthenticationError

    provider = _with(provider, _CountingCredential(
        ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included credentials.")))

    async def main() -> None:
        try:
            await provider.warm_up_async()
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(main())
    assert caught.value.message.startswith("azure get an access token: no usable credentials: DefaultAzureCredential")
    assert "az login" in caught.value.hint
    assert azure.requests == []


def test_a_token_near_its_expiry_is_asked_for_again_in_a_thread(azure, provider, volumes):
    class ShortLived(_CountingCredential):
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            from azure.core.credentials import AccessToken

            self.threads = getattr(self, "threads", set()) | {threading.current_thread().name}
            super().get_token(*scopes, **kwargs)
            return AccessToken(f"token-{len(self.scopes)}", int(time.time()) + 100)

    credential = ShortLived()
    provider = _with(provider, credential)
    provider.warm_up()
    run(provider, (volumes, tags()))

    # 100 s to expiry is inside azure-core's refresh window: warm_up_async's read and each PUT
    # asked for a new one.
    assert len(credential.scopes) == 1 + 1 + len(DISKS)
    assert "MainThread" in credential.threads and len(credential.threads) > 1  # warm_up's, then the loop's helpers


def test_permission_denied_is_the_same_error_as_the_sync_path(azure, provider, volumes):
    azure.deny("Microsoft.Compute/snapshots/write", method="PUT")
    with pytest.raises(ProviderError) as sync_err:
        provider.snapshot(volumes, tags())
    azure.deny("Microsoft.Compute/snapshots/write", method="PUT")
    with pytest.raises(ProviderError) as async_err:
        run(provider, (volumes, tags()))

    assert type(async_err.value) is type(sync_err.value)
    assert async_err.value.message == sync_err.value.message == (
        "azure create snapshot of disk pgdata: permission denied, the credentials lack "
        "Microsoft.Compute/snapshots/write")
    assert "does not have authorization" in async_err.value.hint
    assert "token" not in async_err.value.message


def test_a_throttled_put_is_retried_after_retry_after(azure, provider, volumes):
    azure.throttle(1, retry_after=1, method="PUT")

    [refs] = run(provider, (volumes, tags()))

    attempts = azure.requests_to("PUT", "/snapshots/")
    assert [a.status for a in attempts] == [429, 202, 202]
    assert attempts[0].path == attempts[1].path  # the same name again: a retried PUT cannot duplicate
    assert len(refs) == 2 and len(azure.snapshots()) == 2


def test_a_retry_after_longer_than_allowed_fails_at_once(azure, make_provider, volumes):
    provider = make_provider(max_retry_wait_s=5)
    azure.throttle(1, retry_after=3600, method="PUT")

    with pytest.raises(ProviderThrottled) as err:
        run(provider, (volumes, tags()))
    assert err.value.retry_after == 3600 and len(azure.requests_to("PUT")) == 1
    assert "create_rate" in err.value.hint


def test_a_missing_second_disk_deletes_the_first_snapshot_and_raises(azure, provider):
    gone = azure.resource_id(RG, "disks", "gone")
    volumes = provider.validate_volumes("n1", [{"disk_id": azure.disk_ids[0]}, {"disk_id": gone}], base_dir=Path("."))

    with pytest.raises(ProviderError, match=f"Resource {gone} not found") as err:
        run(provider, (volumes, tags()))
    assert "resource_group" in err.value.hint
    assert len(azure.requests_to("PUT", "/snapshots/")) == 2
    assert azure.snapshots() == {}


def test_a_refused_second_put_deletes_the_first_snapshot_and_raises(azure, provider, volumes):
    azure.deny("Microsoft.Compute/snapshots/write", method="PUT", path_contains="-wal-")

    with pytest.raises(ProviderError, match="lack Microsoft.Compute/snapshots/write"):
        run(provider, (volumes, tags()))
    assert [p.status for p in azure.requests_to("PUT", "/snapshots/")] == [202, 403]
    assert azure.snapshots() == {}


class _SlowArm(FakeAzureCompute):
    """Every answer takes ``delay`` seconds (in the server's own thread, not holding its lock)."""

    delay = 0.5

    def handle(self, *args: Any) -> Any:
        time.sleep(self.delay)
        return super().handle(*args)


class _GatedArm(FakeAzureCompute):
    """Holds each snapshot PUT until ``want`` of them are in flight at once, then lets every one
    through and holds no more. Calls that block the loop arrive one at a time: the first is let go
    only after ``give_up_s``, and ``peak`` stays 1."""

    give_up_s = 30.0

    def __init__(self, want: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.want = want
        self.peak = 0
        self._in_flight = 0
        self._open = False
        self._gate = threading.Condition()

    def handle(self, method: str, raw_path: str, *args: Any) -> Any:
        if method != "PUT" or "/snapshots/" not in raw_path:
            return super().handle(method, raw_path, *args)
        with self._gate:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            self._gate.notify_all()
            self._gate.wait_for(lambda: self._open or self._in_flight >= self.want, timeout=self.give_up_s)
            self._open = True
        try:
            return super().handle(method, raw_path, *args)
        finally:
            with self._gate:
                self._in_flight -= 1


def test_the_loop_is_never_blocked_while_twenty_calls_wait_for_a_slow_arm(make_provider):
    with _GatedArm(want=20) as slow:
        disk_ids = [slow.add_disk(RESOURCE_GROUP, disk) for disk in DISKS]
        provider = make_provider(base_url=slow.url)
        volumes = provider.validate_volumes("n1", [{"disk_id": d} for d in disk_ids], base_dir=Path("."))
        provider.warm_up()  # in a thread, as the core calls it; the rest runs on the loop

        async def main() -> list[Any]:
            try:
                await provider.warm_up_async()
                return await asyncio.gather(*(provider.snapshot_async(volumes, tags(run=f"run.{i}"))
                                              for i in range(20)))
            finally:
                await provider.aclose()

        results = asyncio.run(main())

    assert len(results) == 20 and len(slow.snapshots()) == 40
    # Every node's first PUT was waiting on the ARM at once: none of them held the loop while it waited.
    assert slow.peak >= 20, slow.peak


def test_a_node_cancelled_mid_call_deletes_what_it_made(make_provider):
    with _SlowArm() as slow:
        disk_ids = [slow.add_disk(RESOURCE_GROUP, disk) for disk in DISKS]
        provider = make_provider(base_url=slow.url)
        volumes = provider.validate_volumes("n1", [{"disk_id": d} for d in disk_ids], base_dir=Path("."))
        provider.warm_up()

        async def main() -> None:
            try:
                task = asyncio.create_task(provider.snapshot_async(volumes, tags()))
                while not slow.requests_to("PUT"):  # the first PUT arrived (recorded as it is answered)
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                await provider.aclose()

        asyncio.run(main())
        first = slow.requests_to("PUT")[0].path.rsplit("/", 1)[-1]
        assert slow.requests_to("DELETE", first)
        assert first not in slow.snapshots()


def test_aclose_closes_the_session_and_twice_or_before_any_use_is_fine(azure, make_provider, volumes):
    fresh = make_provider()
    asyncio.run(fresh.aclose())  # nothing was built

    provider = make_provider()
    provider.warm_up()

    async def main() -> Any:
        await provider.warm_up_async()
        await provider.snapshot_async(volumes, tags())
        session = provider._aio.transport.session
        assert not session.closed
        await provider.aclose()
        await provider.aclose()
        return session

    assert asyncio.run(main()).closed
    # A later run on another loop opens a client of its own.
    [refs] = run(provider, (volumes, tags(run="again")))
    assert len(refs) == 2 and len(azure.requests_to("PUT")) == 4


def test_no_import_happens_on_the_loop_after_warm_up(azure, volumes):
    """In a fresh interpreter: warm_up (in a thread) imports everything snapshot_async needs."""
    script = textwrap.dedent(f"""
        import asyncio, sys, threading
        from pathlib import Path
        from snapctl_azure import AzureProvider, AzureSettings
        from tests.fakes.azure_compute import StaticTokenCredential

        settings = AzureSettings.model_validate({{"type": "azure", "subscription_id": "{azure.subscription}",
            "resource_group": "{RESOURCE_GROUP}", "location": "westeurope", "base_url": "{azure.url}",
            "insecure_http_for_tests": True}})
        provider = AzureProvider(settings, cluster="Prod.EU", base_dir=Path("."), credential=StaticTokenCredential())
        volumes = provider.validate_volumes("n1", {[{"disk_id": d} for d in azure.disk_ids]!r}, base_dir=Path("."))
        worker = threading.Thread(target=provider.warm_up)
        worker.start(); worker.join()
        imported = []

        async def main():
            loop_thread = threading.get_ident()
            sys.addaudithook(lambda event, args: event == "import" and threading.get_ident() == loop_thread
                             and args[0] not in sys.modules and imported.append(args[0]))
            await provider.warm_up_async()
            refs = await provider.snapshot_async(volumes, {tags()!r})
            await provider.aclose()
            return refs

        refs = asyncio.run(main())
        assert len(refs) == 2, refs
        print(sorted(set(imported)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
