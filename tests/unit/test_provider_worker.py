"""ProviderWorker: snapshot calls made in a child process (or several) reach the parent with their
results and errors (hint included); calls under way survive shutdown and Ctrl-C to the process
group; a child that dies or cannot start fails its calls with an error that names it and says how
to do without; a provider whose token bucket a run could empty keeps its calls in one process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from snapctl import logged_warnings, worker_process
from snapctl.config import Policy
from snapctl.errors import BadInputError, ProviderError
from snapctl.provider_threads import ProviderThreads
from snapctl.provider_worker import (
    CALLS_PER_PROCESS,
    MAX_PROCESSES,
    PROVIDER_PROCESS_FROM,
    ProviderWorker,
    call_runner,
    worker_processes,
)
from snapctl.providers import Capabilities, available_providers, create_provider, snapshot_tags

THIRD_PARTY = Path(__file__).resolve().parents[1] / "e2e" / "thirdparty"


@pytest.fixture(params=["forked", "new interpreter"])
def slow_provider(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The third-party `slow` provider (the local one, after a pause) and one node's volume; the
    worker's first process forked from this one or a new interpreter, whatever threads it has."""
    monkeypatch.setattr(worker_process, "can_fork", lambda: request.param == "forked")
    monkeypatch.syspath_prepend(str(THIRD_PARTY))  # the child gets the parent's sys.path
    available_providers.cache_clear()
    data = tmp_path / "data"
    data.mkdir()
    (data / "table.dat").write_bytes(os.urandom(4096))

    def make(delay_s: float = 0.0, fail_nodes: tuple[str, ...] = (), store: str = "store",
             fail_warm_up: str | None = None, warm_up_s: float = 0.0, processes: int = 1, **async_settings):
        config = {"type": "slow", "store": store, "delay_s": delay_s, "fail_nodes": list(fail_nodes),
                  "fail_warm_up": fail_warm_up, "warm_up_s": warm_up_s, **async_settings}
        provider = create_provider(config, cluster="c1", base_dir=tmp_path)
        volumes = provider.validate_volumes("n1", [{"name": "data", "path": str(data)}], base_dir=tmp_path)
        worker = ProviderWorker(config, cluster="c1", base_dir=tmp_path, threads=4, processes=processes,
                                async_calls="async_calls" in async_settings)
        workers.append(worker)
        return provider, volumes, worker

    workers: list[ProviderWorker] = []
    yield make
    available_providers.cache_clear()
    for worker in workers:  # each test ran the way its name says
        if worker._process is not None:
            assert isinstance(worker._process, worker_process.ForkedChild) == (request.param == "forked")


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_snapshot_call_is_made_in_the_child_and_its_refs_come_back(slow_provider, tmp_path):
    provider, volumes, worker = slow_provider()
    refs = _run(_one_snapshot(worker, provider, volumes))
    assert [(r.node, r.volume, r.tags["snapctl-run"]) for r in refs] == [("n1", "data", "r1")]
    assert refs[0].extra["pid"] not in (None, os.getpid())
    assert refs[0].extra["warm"] is True  # the child warmed its provider up before saying it was ready
    copied = Path(refs[0].extra["path"]) / "data" / "table.dat"
    assert copied.read_bytes() == (tmp_path / "data" / "table.dat").read_bytes()
    # The parent's own provider sees what the child made: the state lives on disk, not in a process.
    assert [r.snapshot_id for r in provider.find({"snapctl-run": "r1"})] == [refs[0].snapshot_id]


def test_an_error_in_the_child_arrives_as_the_same_error_with_its_hint(slow_provider, tmp_path):
    provider, volumes, worker = slow_provider(store="not-a-dir/store")

    async def go():
        worker.start()
        await worker.ready(30)
        # Made a file once both providers exist (each checks its store when it is made).
        (tmp_path / "not-a-dir").write_text("")
        try:
            await asyncio.wrap_future(worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r1", "n1")))
        finally:
            worker.shutdown()

    with pytest.raises(ProviderError) as caught:
        _run(go())
    assert "cannot use the snapshot store" in caught.value.message
    assert caught.value.hint == "check that the store directory is writable by this user"


def test_a_call_under_way_finishes_after_shutdown_and_after_ctrl_c_to_the_process_group(slow_provider):
    provider, volumes, worker = slow_provider(delay_s=0.5)

    async def go():
        worker.start()
        await worker.ready(30)
        first = worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r1", "n1"))
        os.kill(worker._process.pid, signal.SIGINT)  # what Ctrl-C sends the whole foreground group
        worker.shutdown()
        refs = await asyncio.wrap_future(first)
        late = worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r2", "n1"))
        return refs, late, await asyncio.to_thread(worker._process.wait, 10)

    refs, late, exit_code = _run(go())
    assert refs[0].tags["snapctl-run"] == "r1"
    assert exit_code == 0  # ended by the end of its input, once its call was done
    with pytest.raises(ProviderError, match="provider worker process ended"):
        late.result()


def test_calls_of_a_child_that_died_fail_naming_it_and_how_to_do_without(slow_provider):
    provider, volumes, worker = slow_provider(delay_s=30)

    async def go():
        worker.start()
        await worker.ready(30)
        call = worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r1", "n1"))
        worker._process.kill()
        try:
            await asyncio.wrap_future(call)
        finally:
            worker.shutdown()

    with pytest.raises(ProviderError) as caught:
        _run(go())
    assert "provider worker process ended (exit code -9)" in caught.value.message
    assert "provider_process: never" in caught.value.hint


async def _one_snapshot(worker: ProviderWorker, provider, volumes):
    worker.start()
    try:
        await worker.ready(30)
        return await worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r1", "n1"))
    finally:
        worker.shutdown()


async def _started_then_ready(worker: ProviderWorker, before_ready=lambda: None) -> None:
    worker.start()
    before_ready()
    try:
        await worker.ready(30)
    finally:
        worker.shutdown()


def test_a_child_that_cannot_build_its_provider_fails_ready_saying_why(slow_provider, tmp_path):
    slow_provider()  # the slow provider's entry point, on the path the child gets
    worker = ProviderWorker({"type": "slow", "store": "s", "delay_s": "not a number"}, cluster="c1",
                            base_dir=tmp_path, threads=1)
    with pytest.raises(BadInputError, match=r"^provider slow: .*delay_s"):
        _run(_started_then_ready(worker))
    assert worker._process.wait(60) == 0  # it said why, and ended


def test_a_child_killed_before_it_was_ready_fails_ready_naming_its_end(slow_provider):
    _, _, worker = slow_provider()
    with pytest.raises(ProviderError, match=r"provider worker process ended \(exit code -9\) before it was ready"):
        _run(_started_then_ready(worker, lambda: worker._process.kill()))


def test_a_child_whose_provider_cannot_warm_up_fails_ready_with_that_error_and_ends(slow_provider):
    _, _, worker = slow_provider(fail_warm_up="slow: no credentials found")
    with pytest.raises(ProviderError) as caught:
        _run(_started_then_ready(worker))
    assert caught.value.message == "slow: no credentials found"
    assert caught.value.hint == "give the provider its credentials"
    assert worker._process.wait(60) == 0


def test_a_child_still_warming_up_at_the_deadline_fails_ready_saying_what_it_waited_for(slow_provider):
    _, _, worker = slow_provider(warm_up_s=30)
    worker.start()

    async def go():
        try:
            await worker.ready(1)
        finally:
            worker.shutdown()

    with pytest.raises(ProviderError) as caught:
        _run(go())
    assert caught.value.message.startswith("the provider worker process was not ready within 1s")
    assert "credentials" in caught.value.hint and "provider_process: never" in caught.value.hint
    worker._process.kill()  # still asleep in its warm-up: nothing of it is needed


def test_a_run_that_ends_before_it_needed_the_child_leaves_no_child_behind(slow_provider):
    _, _, worker = slow_provider()
    worker.start()  # as a backup does before its preflight, which may then refuse the run
    worker.shutdown()  # waits 2 s at most: a loaded machine may need longer for the child's imports
    assert worker._process.wait(60) == 0  # it ended by itself, at the end of its input


@pytest.mark.parametrize(("setting", "concurrency", "nodes", "runner"), [
    ("auto", 1000, PROVIDER_PROCESS_FROM - 1, ProviderThreads),
    ("auto", 1000, PROVIDER_PROCESS_FROM, ProviderWorker),
    ("auto", PROVIDER_PROCESS_FROM - 1, 1000, ProviderThreads),  # calls at once, not nodes, crowd the threads
    ("always", 1000, 1, ProviderWorker),
    ("never", 1000, 1000, ProviderThreads),
])
def test_provider_process_picks_where_the_calls_run(tmp_path, setting, concurrency, nodes, runner):
    policy = Policy(provider_process=setting, concurrency=concurrency)
    config = {"type": "local", "store": "s"}
    provider = create_provider(config, cluster="c1", base_dir=tmp_path)
    assert type(call_runner(policy, provider, config, nodes, "c1", tmp_path)) is runner


def test_call_runner_sizes_the_worker_by_the_runs_calls_and_creates(tmp_path):
    config = {"type": "local", "store": "s"}
    provider = create_provider(config, cluster="c1", base_dir=tmp_path)
    assert call_runner(Policy(concurrency=1000), provider, config, 1000, "c1", tmp_path).processes == MAX_PROCESSES
    assert call_runner(Policy(concurrency=CALLS_PER_PROCESS), provider, config, 1000, "c1", tmp_path).processes == 1
    provider.capabilities = Capabilities(max_creates_per_s=5, create_burst=100)
    assert call_runner(Policy(concurrency=1000), provider, config, 1000, "c1", tmp_path, 1000).processes == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_calls_are_dealt_out_to_every_process_of_the_worker_and_all_end_with_it(slow_provider):
    provider, volumes, worker = slow_provider(processes=3)

    async def go():
        worker.start()
        await worker.ready(30)
        try:
            calls = [worker.submit(provider.snapshot, volumes, snapshot_tags("c1", f"r{i}", "n1")) for i in range(6)]
            return await asyncio.gather(*calls)
        finally:
            worker.shutdown()

    results = _run(go())
    assert [refs[0].tags["snapctl-run"] for refs in results] == [f"r{i}" for i in range(6)]
    made_by = [refs[0].extra["pid"] for refs in results]
    assert len(set(made_by)) == 3 and os.getpid() not in made_by  # in turn: 0, 1, 2, 0, 1, 2
    assert made_by[:3] == made_by[3:]
    assert all(refs[0].extra["warm"] for refs in results)  # each process warmed its own provider up
    # ... and froze what it imported and built out of the collector's scans, which a burst of
    # returning calls would otherwise wait for.
    assert all(refs[0].extra["gc_frozen"] > 1000 for refs in results)
    assert worker._process.wait(10) == 0
    assert not any(_alive(pid) for pid in made_by)  # the first child reaped its forked siblings


def test_shutdown_without_waiting_lets_every_process_end_while_the_loop_goes_on(slow_provider):
    provider, volumes, worker = slow_provider(processes=2)

    async def go():
        worker.start()
        await worker.ready(30)
        refs = await worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r1", "n1"))
        processes = [worker._process.pid, *_children_of(worker._process.pid)]
        worker.shutdown(wait=False)  # as a run does once its last call returned
        assert worker._process.returncode is None  # it returned without waiting for them
        late = worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r2", "n1"))
        for _ in range(600):  # they end by themselves while the loop runs on
            if worker._process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        ended = worker._process.poll()
        worker.shutdown()  # again, as the run's end does: nothing left to wait for
        return refs, processes, late, ended

    refs, processes, late, ended = _run(go())
    assert refs[0].tags["snapctl-run"] == "r1"
    assert ended == 0 and not any(_alive(pid) for pid in processes)
    with pytest.raises(ProviderError, match="provider worker process ended"):
        late.result()  # a call after it, by mistake, fails at once instead of hanging


def test_a_forked_process_that_dies_fails_its_own_calls_naming_it_and_not_the_others(slow_provider):
    provider, volumes, worker = slow_provider(delay_s=1.0, processes=2)

    async def go():
        worker.start()
        await worker.ready(30)
        try:
            first = worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r1", "n1"))
            second = worker.submit(provider.snapshot, volumes, snapshot_tags("c1", "r2", "n1"))
            sibling = [pid for pid in _children_of(worker._process.pid)]
            assert len(sibling) == 1
            os.kill(sibling[0], signal.SIGKILL)
            return await asyncio.gather(first, second, return_exceptions=True)
        finally:
            worker.shutdown()

    made, lost = _run(go())
    assert made[0].tags["snapctl-run"] == "r1"  # the first child's call was not disturbed
    assert isinstance(lost, ProviderError)
    assert lost.message == "the provider worker's process 2 ended with 1 snapshot call(s) unanswered"
    assert "snapctl gc" in lost.hint and "provider_process: never" in lost.hint


def test_calls_under_way_in_every_process_finish_after_shutdown_and_ctrl_c(slow_provider):
    provider, volumes, worker = slow_provider(delay_s=0.5, processes=2)

    async def go():
        worker.start()
        await worker.ready(30)
        calls = [worker.submit(provider.snapshot, volumes, snapshot_tags("c1", f"r{i}", "n1")) for i in range(2)]
        processes = [worker._process.pid, *_children_of(worker._process.pid)]
        for pid in processes:  # what Ctrl-C sends the whole foreground group
            os.kill(pid, signal.SIGINT)
        worker.shutdown()
        results = await asyncio.gather(*calls)
        return results, processes, await asyncio.to_thread(worker._process.wait, 10)

    results, processes, exit_code = _run(go())
    assert [refs[0].tags["snapctl-run"] for refs in results] == ["r0", "r1"]
    assert {refs[0].extra["pid"] for refs in results} == set(processes)
    assert exit_code == 0 and not _alive(processes[1])  # both ended at the end of their input


def test_the_sdk_is_imported_once_before_the_siblings_are_forked(slow_provider, tmp_path, monkeypatch):
    imports = tmp_path / "sdk-imports"
    monkeypatch.setenv("SNAPCTL_SLOW_SDK_IMPORTS", str(imports))  # the children inherit it
    monkeypatch.delitem(sys.modules, "snapctl_slow_sdk", raising=False)  # a forked child would inherit it too
    _, _, worker = slow_provider(processes=3)
    _run(_started_then_ready(worker))
    assert worker._process.wait(10) == 0
    # Each process's warm_up imports it, but the first child had it before it forked the others.
    assert imports.read_text().split() == [str(worker._process.pid)]


@pytest.mark.parametrize("async_calls", [True, False], ids=["async calls", "blocking calls"])
def test_the_async_sdk_is_imported_once_before_the_siblings_are_forked_where_the_calls_are_async(
        slow_provider, tmp_path, monkeypatch, async_calls):
    imports = tmp_path / "async-sdk-imports"
    monkeypatch.setenv("SNAPCTL_SLOW_ASYNC_SDK_IMPORTS", str(imports))
    monkeypatch.delitem(sys.modules, "snapctl_slow_async_sdk", raising=False)
    settings = {"async_calls": True} if async_calls else {}
    _, _, worker = slow_provider(processes=3, **settings)
    _run(_started_then_ready(worker))
    assert worker._process.wait(10) == 0
    # Each process's warm_up_async imports it, but the first had it before it forked the others;
    # blocking calls never need it, so nothing imports it.
    imported = imports.read_text().split() if imports.exists() else []
    assert imported == ([str(worker._process.pid)] if async_calls else [])


def test_an_sdk_that_prints_as_it_is_imported_says_it_on_stderr_not_into_the_results(slow_provider, monkeypatch,
                                                                                    capfd):
    monkeypatch.setenv("SNAPCTL_SLOW_SDK_SAY", "sdk: a notice at import")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # a new interpreter's print reaches its descriptor at once
    monkeypatch.delitem(sys.modules, "snapctl_slow_sdk", raising=False)
    provider, volumes, worker = slow_provider(processes=2)  # imported once, before the sibling's fork

    refs = _run(_one_snapshot(worker, provider, volumes))
    assert refs[0].tags["snapctl-run"] == "r1"
    assert worker._process.wait(10) == 0
    assert "sdk: a notice at import" in capfd.readouterr().err.splitlines()


def test_what_the_child_logs_is_said_once_by_the_parents_handlers_and_kept_for_the_json_document(
        slow_provider, capfd):
    # Logged in the child, a plugin's warning reached stderr (in a new interpreter without its
    # `warning:`), never the parent's handlers: `-o json`'s `warnings` did not have it.
    root = logging.getLogger()
    before = list(root.handlers)
    logged_warnings._logged.clear()
    logged_warnings.say_logged_warnings()
    try:
        provider, volumes, worker = slow_provider(warn="slow: token file is readable by others")
        _run(_one_snapshot(worker, provider, volumes))
        assert worker._process.wait(10) == 0
        said = logged_warnings.logged_warnings()
    finally:
        root.handlers[:] = before
        logged_warnings._logged.clear()
    assert said == {"warnings": ["slow: token file is readable by others, as it warmed up",
                                 "slow: token file is readable by others, in the call of node n1"]}
    err = capfd.readouterr().err
    assert err.count("token file is readable by others") == 2, err
    assert "warning: slow: token file is readable by others, as it warmed up\n" in err
    assert ("error: slow: token file is readable by others, in the call of node n1\n"
            "Traceback (most recent call last):\n") in err
    assert "OSError: no route to the cloud" in err


def test_what_the_child_logs_on_a_logger_that_does_not_propagate_reaches_the_parents_logger_of_that_name(
        slow_provider, capfd):
    # Only what reached the child's root logger was sent: a plugin logger with propagate=False
    # said its records on the child's stderr (logging's last resort), never to the parent.
    apart, kept = logging.getLogger("snapctl_slow.apart"), []
    handler = logging.Handler()
    handler.emit = kept.append  # type: ignore[method-assign]
    apart.addHandler(handler)
    try:
        provider, volumes, worker = slow_provider(warn="slow: kept apart", warn_apart=True)
        _run(_one_snapshot(worker, provider, volumes))
        assert worker._process.wait(10) == 0
    finally:
        apart.removeHandler(handler)
    assert apart.propagate is False  # the plugin's own setting, here as in the child
    assert [(r.levelname, r.getMessage()) for r in kept] == [
        ("WARNING", "slow: kept apart, as it warmed up"), ("ERROR", "slow: kept apart, in the call of node n1")]
    assert "OSError: no route to the cloud" in kept[1].exc_text
    assert "kept apart" not in capfd.readouterr().err  # the parent's logger has only the handler above


def test_a_provider_that_runs_its_sdk_on_the_current_event_loop_gets_a_loop_of_its_own(slow_provider):
    provider, volumes, worker = slow_provider(current_loop=True)  # started from inside snapctl's running loop

    assert _run(_one_snapshot(worker, provider, volumes))[0].extra["warm"] is True


def _children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_provider_that_cannot_start_fails_ready_once_however_many_processes(slow_provider, tmp_path):
    slow_provider()
    worker = ProviderWorker({"type": "slow", "store": "s", "delay_s": "not a number"}, cluster="c1",
                            base_dir=tmp_path, threads=4, processes=3)
    with pytest.raises(BadInputError, match=r"^provider slow: .*delay_s"):
        _run(_started_then_ready(worker))
    assert worker._process.wait(60) == 0


@pytest.mark.parametrize(("calls", "creates", "capabilities", "processes"), [
    (PROVIDER_PROCESS_FROM, PROVIDER_PROCESS_FROM, Capabilities(), 1),
    (CALLS_PER_PROCESS + 1, 1000, Capabilities(), 2),
    (1000, 1000, Capabilities(), MAX_PROCESSES),
    (4000, 4000, Capabilities(), MAX_PROCESSES),
    # EC2's bucket (100 at once): 1000 creates would empty it, and each process would have its own.
    (1000, 1000, Capabilities(max_creates_per_s=5, create_burst=100), 1),
    (1000, 1000, Capabilities(max_creates_per_s=1e6, create_burst=10**6), MAX_PROCESSES),  # it never binds
])
def test_worker_processes_splits_the_calls_unless_a_token_bucket_could_bind(calls, creates, capabilities,
                                                                             processes):
    assert worker_processes(calls, creates, capabilities) == processes


def test_an_async_providers_create_calls_run_on_a_loop_in_the_child_after_its_async_warm_up(slow_provider, tmp_path):
    # auto's worker (50 calls and more) for a provider with an async client: its SDK's CPU stays in
    # the worker's processes, as the blocking calls' does, without a thread per call there.
    events = tmp_path / "events"
    provider, volumes, worker = slow_provider(async_calls=True, events_file=str(events))

    async def go():
        worker.start()
        await worker.ready(30)
        try:
            return await asyncio.gather(*(asyncio.wrap_future(worker.submit(provider.snapshot, volumes,
                                                                            snapshot_tags("c1", f"r{i}", "n1")))
                                          for i in range(3)))
        finally:
            worker.shutdown()

    refs = [ref for made in _run(go()) for ref in made]
    assert len(refs) == 3 and all(ref.extra["async"] is True for ref in refs)
    assert {ref.extra["pid"] for ref in refs} != {os.getpid()}  # made in the child
    deadline = time.monotonic() + 10
    while "aclose" not in events.read_text() and time.monotonic() < deadline:  # the child closes as it ends
        time.sleep(0.05)
    seen = events.read_text().splitlines()
    assert seen[0] == "warm_up_async" and seen[-1] == "aclose" and seen[1:-1] == ["snapshot_async n1"] * 3


def test_a_child_whose_async_warm_up_fails_fails_ready_with_that_error(slow_provider):
    provider, _, worker = slow_provider(async_calls=True, fail_warm_up_async="slow: the async client could not start")

    with pytest.raises(ProviderError, match="slow: the async client could not start") as failed:
        _run(_started_then_ready(worker))
    assert failed.value.hint == "check the async client's settings"
