"""The DingoDB adapter against the store fake: RPC eras, snapshot completion, holds, raft status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node_agent.engines.dingodb import DingoDBEngine, DingoDBSettings, region_id_of
from snapctl.errors import BadInputError, EngineBusy, EngineError
from tests.fakes.dingodb import SERVICES, FakeDingoStore
from tests.fakes.engine_http import Response


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    started: list[tuple[FakeDingoStore, DingoDBEngine]] = []

    def factory(*, store_options: dict | None = None, **settings) -> tuple[FakeDingoStore, DingoDBEngine]:
        store = FakeDingoStore(**(store_options or {})).__enter__()
        options = {"timeout_s": 2, "snapshot_wait_s": 5, "poll_interval_s": 0.01, "data_path": str(tmp_path),
                   **settings}
        engine = DingoDBEngine(DingoDBSettings(server=store.server.address, raft=store.raft.address, **options),
                               base_dir=tmp_path)
        started.append((store, engine))
        return store, engine

    yield factory
    for store, engine in started:
        engine.close()
        store.__exit__()


@pytest.mark.parametrize("era", ["debug", "region_control", "store"])
def test_auto_finds_the_snapshot_rpc_of_every_era(make, era: str) -> None:
    store, engine = make(store_options={"era": era})
    jobs = engine.trigger(None)
    assert [(j.target, j.status) for j in jobs] == [("region 1001", "succeeded"), ("region 1002", "succeeded")]
    assert {s.last_snapshot_index for s in store.regions.values()} == {100}
    assert {service for service, _ in store.rpc_calls} == {SERVICES[era]}
    assert engine.status().details["rpc_era"] == era
    body = store.rpc_calls[0][1]
    assert body["region_id"] == 1001 and (("request_info" in body) == (era == "debug"))


def test_a_configured_era_is_not_probed(make) -> None:
    store, engine = make(store_options={"era": "debug"}, rpc_era="store")
    with pytest.raises(EngineError, match=r"HTTP 404 \(brpc error 1002\): \[E1002\]Fail to find method on "
                                           r"`/dingodb.pb.store.StoreService/Snapshot'") as caught:
        engine.trigger("1001")
    assert "rpc_era" in (caught.value.hint or "")
    assert store.rpc_calls == []


def test_the_snapshot_counts_when_last_snapshot_index_reaches_the_applied_index(make) -> None:
    store, engine = make(store_options={"snapshot_polls": 3})
    store.write(20)
    [job] = engine.trigger("1001")
    assert job.status == "succeeded" and job.extra["wanted_index"] == 120 and job.extra["snapshot_index"] == 120
    again = engine.trigger("1001")[0]
    assert again.status == "succeeded" and "already" in (again.detail or "")
    assert len(store.rpc_calls) == 1, "nothing new since the last snapshot: no RPC"


def test_a_snapshot_that_never_lands_fails_after_the_wait(make) -> None:
    store, engine = make(snapshot_wait_s=0.3)
    store.lose_snapshots = True
    [job] = engine.trigger("1002")
    assert job.status == "failed"
    assert "below the applied index 100" in (job.detail or "")


def test_dingodb_errors_come_as_http_200_with_error(make) -> None:
    store, engine = make()
    store.errors[1001] = ("EREGION_NOT_FOUND", "Not found region 1001")
    first, second = engine.trigger(None)
    assert first.status == "failed" and "EREGION_NOT_FOUND Not found region 1001" in (first.detail or "")
    assert second.status == "succeeded"


def test_prepare_snapshots_every_region_then_holds(make) -> None:
    store, engine = make()
    state = engine.prepare("r1")
    assert set(state.facts.position) == {"region 1001", "region 1002"}
    assert state.facts.position["region 1001"]["last_snapshot_index"] == 100
    assert state.facts.exact is False
    assert [g.role for g in state.raft] == ["leader", "follower"]
    assert state.version == "dingo-store 0.9.0"
    with pytest.raises(EngineBusy, match="held by run r1"):
        engine.trigger(None)
    with pytest.raises(EngineBusy, match="held by run r1"):
        engine.prepare("r2")
    engine.complete("r2")  # another run's complete does not end r1's hold
    assert engine.status().held
    engine.complete("r1")
    assert engine.trigger("1001")[0].status == "succeeded"


def test_prepare_fails_naming_the_region_that_did_not_snapshot(make) -> None:
    store, engine = make()
    store.errors[1002] = ("ERAFT_NOTLEADER", "Not leader")
    with pytest.raises(EngineError, match="region 1002: .*ERAFT_NOTLEADER"):
        engine.prepare("r1")
    assert not engine.status().held


def test_a_prepare_that_fails_after_its_snapshots_holds_nothing(make) -> None:
    # The hold was marked before /version was read: a /version that failed left the store held by
    # a run whose prepare had failed, every trigger refused busy, another run's prepare too.
    store, engine = make()
    answer = store.server.handle
    store.server.handle = lambda request: Response(drop=True) if request.path == "/version" else answer(request)
    with pytest.raises(EngineError, match="is unreachable"):
        engine.prepare("r1")
    assert not engine.status().held and engine.status().details["run_id"] is None
    store.server.handle = answer
    assert [job.status for job in engine.trigger(None)] == ["succeeded", "succeeded"]
    assert engine.prepare("r2").version == "dingo-store 0.9.0"


def test_configured_regions_only(make) -> None:
    store, engine = make(store_options={"region_ids": (1001, 1002, 1003)}, regions=[1003])
    assert [j.target for j in engine.trigger(None)] == ["region 1003"]
    assert set(engine.verify().position) == {"region 1003"}
    _, wrong = make(regions=[9])
    with pytest.raises(EngineError, match="has no region 9"):
        wrong.trigger(None)


def test_trigger_by_group_name_and_unknown_group(make) -> None:
    store, engine = make()
    group = store.regions[1002].group
    assert [j.target for j in engine.trigger(group)] == ["region 1002"]
    # Unknown targets are the caller's bad input (the agent's 400, `snapctl trigger` exit 2), not
    # the engine's failure (502); a configured region the store lacks still is (above).
    with pytest.raises(BadInputError, match="no raft group 'nope'") as caught:
        engine.trigger("nope")
    assert caught.value.hint == "regions here: 1001, 1002"
    with pytest.raises(BadInputError, match="has no region 9999") as caught:
        engine.trigger("9999")
    assert caught.value.hint == "regions here: 1001, 1002"


@pytest.mark.parametrize(("header", "parts"), [("brackets", 4), ("bare", 3)])
def test_status_parses_raft_groups_in_both_page_styles(make, header: str, parts: int) -> None:
    store, engine = make(store_options={"header": header, "peer_parts": parts})
    store.regions[1001].extra_lines.append("future_field: 7")
    status = engine.status()
    assert status.reachable and status.version == "dingo-store 0.9.0"
    leader, follower = status.raft
    assert leader.role == "leader" and len(leader.replication) == 2
    assert follower.role == "follower" and follower.leader
    assert len(leader.member.split(":")) == parts
    assert leader.extra["future_field"] == "7"
    assert status.details["regions"] == [1001, 1002]


def test_raft_stat_is_asked_for_console_text(make) -> None:
    store, engine = make()
    with httpx.Client() as browser:
        assert browser.get(f"{store.raft.url}/raft_stat").text.startswith("<!DOCTYPE html>")
    seen = len(store.raft.requests)
    assert engine.status().raft
    ours = [r for r in store.raft.requests[seen:] if r.path.startswith("/raft_stat")]
    assert ours and all(r.query.get("console") == "1" for r in ours)


def test_a_brpc_framework_error_fails_the_snapshot_with_its_code_and_brpcs_unset_version_is_none(make) -> None:
    # The fake's framework answers first, as brpc gives them (a request it cannot parse: 400, EREQUEST).
    store, engine = make(store_options={"version": "unknown"})
    with httpx.Client() as client:
        bad = client.post(f"{store.server.url}/{SERVICES['debug']}/Snapshot", content=b"not json")
        assert bad.status_code == 400 and bad.headers["x-bd-error-code"] == "1003"
    # Then the adapter: brpc's "unknown" (no version set) is no version, and a framework refusal
    # of the Snapshot RPC (not a 404 the era probe steps past) fails the region, its code named.
    assert engine.status().version is None
    answer = store.server.handle
    store.server.handle = lambda request: (
        Response.text("[E1003]bad request", 400, {"x-bd-error-code": "1003"}) if request.path.endswith("/Snapshot")
        else answer(request))
    with pytest.raises(EngineError, match=r"Snapshot on .* failed with HTTP 400 \(brpc error 1003\): \[E1003\]bad"):
        engine.prepare("r1")
    assert not engine.status().held


def test_an_unreachable_store_is_reported_not_raised(make) -> None:
    store, engine = make(timeout_s=1)
    with store.hang():
        status = engine.status()
        assert not status.reachable and "did not answer" in (status.error or "")
        with pytest.raises(EngineError):
            engine.prepare("r1")
    assert not engine.status().held


def test_region_ids_from_group_names() -> None:
    assert region_id_of("1007") == 1007
    assert region_id_of("2_XYZ_part_0_1007") == 1007
    assert region_id_of("Counter") is None


def test_restore_prepare_needs_the_data_path(make, tmp_path: Path) -> None:
    _, engine = make()
    engine.restore_prepare(None)
    with pytest.raises(EngineError, match="does not exist"):
        engine.restore_prepare(tmp_path / "missing")
    assert engine.data_paths() == [tmp_path]


def test_a_garbled_raft_stat_page_is_reported_with_its_line(make) -> None:
    store, engine = make()
    store.regions[1001].extra_lines.append("last_snapshot_index: soon")
    status = engine.status()
    assert status.reachable and status.raft == []
    assert "raft_stat line" in (status.error or "") and "last_snapshot_index" in (status.error or "")
    with pytest.raises(EngineError, match="raft_stat line"):
        engine.prepare("r1")


def test_a_trigger_dropped_because_the_region_was_saving_its_own_timer_snapshot_is_sent_again(make) -> None:
    store, engine = make(snapshot_wait_s=3)
    # DingoDB's snapshot timer began a snapshot of region 1001 at index 80; 20 more entries were
    # applied since. braft drops a Snapshot request while one is saving (its EBUSY reaches only the
    # store's log), so the RPC is answered OK and the timer's snapshot lands short of our index.
    region = store.regions[1001]
    region.applied, region.saving_target, region.polls_left = 100, 80, 4
    [job] = engine.trigger("1001")
    assert job.status == "succeeded", job.detail
    assert job.extra["snapshot_index"] == 100 and region.last_snapshot_index == 100
    assert len(store.rpc_calls) >= 2, "the dropped request was sent again once the store was idle"


def test_a_trigger_dropped_while_another_region_of_the_store_was_saving_is_sent_again(make) -> None:
    store, engine = make(snapshot_wait_s=3)
    other = store.regions[1002]
    other.saving_target, other.polls_left = other.applied, 4  # the store's one snapshot at a time
    [job] = engine.trigger("1001")
    assert job.status == "succeeded", job.detail
    assert store.regions[1001].last_snapshot_index == 100 and job.extra["requests"] >= 2


def test_a_raft_port_without_raft_stat_is_said_to_be_the_wrong_port_not_a_garbled_page(make, tmp_path) -> None:
    store, _ = make()
    # The two ports swapped in the engine block: the server port's brpc has no /raft_stat (404).
    engine = DingoDBEngine(DingoDBSettings(server=store.raft.address, raft=store.server.address, timeout_s=2,
                                           data_path=str(tmp_path)), base_dir=tmp_path)
    try:
        status = engine.status()
        said = (f"dingodb at {store.server.url} answered /raft_stat with HTTP 404 (brpc error 1002): "
                "[E1002]Fail to find method on `/raft_stat'")
        assert not status.reachable, "a backup would fail here"
        assert status.error == f"{said} (hint: raft must be the store's raft port (the one serving /raft_stat), " \
                               "not its server port)"
        with pytest.raises(EngineError) as raised:
            engine.prepare("r1")
        assert raised.value.message == said and not engine.status().held
    finally:
        engine.close()
