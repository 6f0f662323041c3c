"""Restored facts against the facts recorded at PREPARE: exact and growing engines, positions."""

from __future__ import annotations

from pathlib import Path

from node_agent.models import TableFacts, VerifyFacts
from snapctl.evidence import compare_facts, compare_positions, missing_files


def facts(exact: bool = True, position: dict | None = None, **tables: tuple[int, str | None]) -> VerifyFacts:
    return VerifyFacts(tables={t: TableFacts(rows=r, checksum=c) for t, (r, c) in tables.items()},
                       position=position or {}, exact=exact)


def test_an_exact_engine_must_reproduce_rows_and_checksums():
    recorded = facts(events=(10, "sha256:aaaaaaaaaaaaaaaa"), users=(3, "sha256:bbbb"))
    assert compare_facts(recorded, facts(events=(10, "sha256:aaaaaaaaaaaaaaaa"), users=(3, "sha256:bbbb"))) == []
    assert compare_facts(recorded, facts(events=(11, "sha256:aaaaaaaaaaaaaaaa"), users=(3, "sha256:bbbb"))) == [
        "table events: 11 rows, expected 10"]
    assert compare_facts(recorded, facts(events=(10, "sha256:cccccccccccccccc"), users=(3, "sha256:bbbb"))) == [
        "table events: checksum sha256:cccccccccccc, expected sha256:aaaaaaaaaaaa"]
    assert compare_facts(recorded, facts(events=(10, "sha256:aaaaaaaaaaaaaaaa"))) == [
        "table users missing (expected 3 rows)"]


def test_a_growing_engine_may_hold_more_rows_never_fewer_and_checksums_are_not_compared():
    recorded = facts(exact=False, items=(100, "x"))
    assert compare_facts(recorded, facts(exact=False, items=(140, "y"))) == []
    assert compare_facts(recorded, facts(exact=False, items=(99, "x"))) == ["table items: 99 rows, expected at least 100"]


def test_vclocks_compare_component_by_component_whatever_the_key_type():
    # The manifest went through JSON (string keys); the restored engine answers with int keys.
    recorded = {"vclock": {"1": 700, "2": 15}, "instance_uuid": "aaa"}
    assert compare_positions(recorded, {"vclock": {1: 710, 2: 15}, "instance_uuid": "aaa"}) == []
    [problem] = compare_positions(recorded, {"vclock": {1: 710, 2: 14}, "instance_uuid": "aaa"})
    assert problem == "vclock behind the one recorded at prepare (2: 14 < 15)"
    [problem] = compare_positions(recorded, {"vclock": {1: 710, 2: 15}, "instance_uuid": "bbb"})
    assert "instance_uuid bbb, expected aaa" in problem


def test_monotonic_positions_may_only_move_on_and_unreported_ones_are_skipped():
    recorded = {"revision": 40, "raft_index": 900, "member_id": "abc"}
    assert compare_positions(recorded, {"revision": 40}) == []
    assert compare_positions(recorded, {"revision": 39}) == ["revision 39, expected at least 40"]
    # A restored etcd is a new cluster: its raft index and member id start over, and are not compared.
    assert compare_positions(recorded, {"revision": 41, "raft_index": 3, "member_id": "def"}) == []


def test_a_raft_region_that_vanished_or_fell_behind_is_named():
    recorded = {"region 7": {"applied_index": 50, "term": 3}, "region 8": {"applied_index": 9}}
    assert compare_positions(recorded, {"region 7": {"applied_index": 55, "term": 4},
                                        "region 8": {"applied_index": 9}}) == []
    assert compare_positions(recorded, {"region 7": {"applied_index": 49}}) == [
        "region 7 applied_index 49, expected at least 50", "region 8 missing after restore"]


def test_files_recorded_at_prepare_must_be_in_the_restored_volume(tmp_path: Path):
    volume, restored = tmp_path / "live" / "data", tmp_path / "restored" / "data"
    (restored / "sub").mkdir(parents=True)
    (restored / "sub" / "00000000000000000042.snap").write_text("x")
    roots = {"data": volume}
    recorded = [str(volume / "sub" / "00000000000000000042.snap"), str(volume / "00000000000000000042.vylog"),
                str(tmp_path / "elsewhere" / "not-on-a-volume.db")]
    [problem] = missing_files(recorded, roots, {"data": str(restored)})
    assert "00000000000000000042.vylog recorded at prepare is missing" in problem
