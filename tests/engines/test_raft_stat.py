"""The braft /raft_stat parser against real pages: a seed document's sample and pages from a braft cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.engines.raft_stat import RaftStatError, parse_raft_stat

# Copies of the real pages, kept in the tree so that these tests run on any checkout: where each
# came from is in the README beside them.
PAGES = Path(__file__).parent / "fixtures" / "raft_stat"


def seed_sample() -> str:
    return page("seed_000_dingodb_store.txt")


def page(name: str) -> str:
    return (PAGES / name).read_bytes().decode()  # keep the page's own mixed line endings


def test_seed_sample_field_for_field() -> None:
    [group] = parse_raft_stat(seed_sample())
    assert group.group == "2_XYZ_part_0_1007"
    assert group.member == "192.168.1.201:20103:0"
    assert group.role == "leader" and group.leader == group.member
    assert group.term == 2
    assert group.peers == ["192.168.1.201:20101:0", "192.168.1.201:20102:0", "192.168.1.201:20103:0"]
    assert not group.conf_changing
    assert (group.commit_index, group.applied_index) == (5216081, 5216081)
    assert (group.last_log_index, group.last_log_term) == (5216082, 2)
    assert (group.last_snapshot_index, group.last_snapshot_term, group.snapshot_status) == (4115622, 2, "IDLE")
    extra = group.extra
    assert extra["state"] == "LEADER" and extra["readonly"] == 0 and extra["conf_index"] == 4115622
    assert extra["changing_conf"] == "NO" and extra["stage"] == "STAGE_NONE"
    assert extra["election_timer"] == {"timeout_ms": 1000, "state": "STOPPED"}
    assert extra["vote_timer"] == {"timeout_ms": 2000, "state": "STOPPED"}
    assert extra["stepdown_timer"] == {"timeout_ms": 1000, "state": "SCHEDULING", "in_ms": 484}
    assert extra["snapshot_timer"] == {"timeout_ms": 600000, "state": "SCHEDULING", "in_ms": 282096}
    assert extra["storage"] == {"first": 2036336, "last": 5216082}
    assert extra["disk_index"] == 5216082 and extra["known_applied_index"] == 5216081
    assert extra["last_log_id"] == {"index": 5216082, "term": 2}
    assert extra["state_machine"] == "Idle"
    assert extra["pending_index"] == 5216082 and extra["pending_queue_size"] == 1
    first, second = extra["replicators"]
    assert first == {"id": "14353780703353", "peer": "192.168.1.201:20101:0", "next_index": 5216083,
                     "flying_append_entries_size": 1, "state": "appending", "appending": [5216082, 5216082],
                     "consecutive_error_times": 0, "hc": 15168, "ac": 5215677, "ic": 0}
    assert second["peer"] == "192.168.1.201:20102:0" and second["ac"] == 5215659
    progress = group.replication[0]
    assert (progress.peer, progress.state, progress.next_index) == ("192.168.1.201:20101:0", "appending", 5216083)
    assert (progress.match_index, progress.lag_entries, progress.consecutive_errors) == (5216081, 1, 0)


def test_follower_page_with_four_part_peer_ids() -> None:
    [group] = parse_raft_stat(page("01_fresh_before_load_node0_FOLLOWER.txt"))
    assert group.group == "Counter" and group.member == "127.0.0.1:8100:0:0"
    assert group.role == "follower" and group.leader == "127.0.0.1:8102:0:0"
    assert group.extra["last_msg_to_now"] == 76
    assert group.extra["election_timer"] == {"timeout_ms": 2000, "state": "SCHEDULING", "in_ms": 2791}
    assert group.replication == [] and "pending_index" not in group.extra


def test_leader_pages_replicators_idle_appending_blocking() -> None:
    [idle] = parse_raft_stat(page("01_fresh_before_load_node2_LEADER.txt"))
    assert [r.state for r in idle.replication] == ["idle", "idle"]
    assert all(r.lag_entries == 0 for r in idle.replication)
    [loaded] = parse_raft_stat(page("02_under_load_node2_LEADER.txt"))
    assert loaded.extra["pending_queue_size"] == 3 and loaded.last_log_index == 4479
    assert [(r.state, r.match_index, r.lag_entries) for r in loaded.replication] == [("appending", 4476, 3)] * 2
    [killed] = parse_raft_stat(page("05_follower_killed_leader_node2_LEADER.txt"))
    dead = killed.replication[1]
    assert (dead.state, dead.consecutive_errors, dead.next_index) == ("blocking", 49, 40306)
    # Blocking: no acknowledged position, but the peer has at most what next_index says, so its
    # lag is at least the distance to the leader's last index.
    assert (dead.match_index, dead.lag_entries) == (None, 9770)
    assert dead.error == "49 consecutive errors"


def test_conf_change_in_progress() -> None:
    [group] = parse_raft_stat(page("07_add_dead_peer_catching_up_node2_LEADER.txt"))
    assert group.conf_changing
    assert group.extra["stage"] == "STAGE_CATCHING_UP"
    assert group.extra["new_peers"][-1] == "127.0.0.1:8103:0:0" and len(group.extra["old_peers"]) == 3
    assert len(group.replication) == 3
    # The peer just added has nothing yet, but braft set its next_index to the leader's last index
    # + 1: read as acknowledged, it lagged 0 entries. Blocking, a floor of 0 says nothing: unknown.
    # The dead follower's floor still shows.
    assert [(r.peer, r.state, r.next_index, r.match_index, r.lag_entries) for r in group.replication] == [
        ("127.0.0.1:8100:0:0", "idle", 50076, 50075, 0),
        ("127.0.0.1:8101:0:0", "blocking", 40306, None, 9770),
        ("127.0.0.1:8103:0:0", "blocking", 50076, None, None)]


def test_several_groups_on_one_page_in_both_header_styles() -> None:
    leader = page("01_fresh_before_load_node2_LEADER.txt").replace("[Counter]", "[region_1001]")
    follower = page("01_fresh_before_load_node0_FOLLOWER.txt").replace("[Counter]", "[region_1002]")
    groups = parse_raft_stat(leader + follower + seed_sample())
    assert [(g.group, g.role) for g in groups] == [
        ("region_1001", "leader"), ("region_1002", "follower"), ("2_XYZ_part_0_1007", "leader")]


def test_nodes_of_one_group_in_one_process_share_a_header() -> None:
    text = ("[g]\r\npeer_id: 10.0.0.1:8100:0\r\nstate: FOLLOWER\r\nleader: 10.0.0.1:8101:0\r\n\r\n"
            "peer_id: 10.0.0.1:8101:0\r\nstate: LEADER\r\n\r\n")
    groups = parse_raft_stat(text)
    assert [(g.group, g.member, g.role) for g in groups] == [
        ("g", "10.0.0.1:8100:0", "follower"), ("g", "10.0.0.1:8101:0", "leader")]


def test_candidate_without_leader_and_witness_role() -> None:
    text = ("[g]\npeer_id: 10.0.0.1:8100:0:0\nstate: CANDIDATE\nterm: 7\nleader: 0.0.0.0:0:0\n"
            "[w]\npeer_id: 10.0.0.2:8100:0:1\nstate: FOLLOWER\nleader: 10.0.0.1:8100:0:0\n")
    candidate, witness = parse_raft_stat(text)
    assert candidate.role == "candidate" and candidate.leader is None and candidate.term == 7
    assert witness.role == "witness" and witness.leader == "10.0.0.1:8100:0:0"


def test_loading_and_downloading_snapshot_meta_without_line_ending() -> None:
    loading = ("[g]\r\npeer_id: 10.0.0.1:8100:0:0\r\nstate: LEADER\r\nstorage: [51, 50]\n"
               "last_snapshot_index: 40\r\nlast_snapshot_term: 2\r\nsnapshot_status: LOADING\r\n"
               "snapshot_from: remote://10.0.0.2:8100/-1\r\n"
               'snapshot_meta: last_included_index: 50 last_included_term: 2 peers: "10.0.0.1:8100:0:0"'
               "replicator_1@10.0.0.2:8100:0:0: next_index=51  flying_append_entries_size=0 "
               "installing snapshot {50, 2} hc=1 ac=0 ic=1\r\n\r\n")
    downloading = ("[h]\r\npeer_id: 10.0.0.3:8100:0:0\r\nstate: FOLLOWER\r\nleader: 10.0.0.1:8100:0:0\r\n"
                   "snapshot_status: DOWNLOADING\r\ndownloading_snapshot_from: remote://10.0.0.1:8100/7\r\n"
                   "downloading_snapshot_meta: last_included_index: 90 last_included_term: 3")
    first, second = parse_raft_stat(loading + downloading)
    assert first.snapshot_status == "LOADING"
    assert first.extra["storage"] == {"first": 51, "last": 50}  # log replaced by a snapshot
    assert first.extra["snapshot_from"] == "remote://10.0.0.2:8100/-1"
    meta = first.extra["snapshot_meta"]
    assert (meta["last_included_index"], meta["last_included_term"], meta["peers"]) == (50, 2, ["10.0.0.1:8100:0:0"])
    assert first.replication[0].state == "installing snapshot"
    assert first.extra["replicators"][0]["installing_snapshot"] == {"index": 50, "term": 2}
    assert second.snapshot_status == "DOWNLOADING"
    assert second.extra["downloading_snapshot_meta"]["last_included_index"] == 90


def test_saving_snapshot_and_applying_state_machine() -> None:
    text = ("[g]\npeer_id: 10.0.0.1:8100:0\nstate: LEADER\nstate_machine: Applying log_index=77\n"
            "snapshot_status: SAVING\n")
    [group] = parse_raft_stat(text)
    assert group.snapshot_status == "SAVING" and group.extra["applying_index"] == 77


def test_unknown_fields_and_lines_are_kept() -> None:
    text = "[g]\npeer_id: 10.0.0.1:8100:0\nstate: LEADER\nwitness_count: 3\nsomething odd here\n"
    [group] = parse_raft_stat(text)
    assert group.extra["witness_count"] == "3"
    assert group.extra["unknown_lines"] == ["something odd here"]


def test_an_empty_page_is_no_groups() -> None:
    assert parse_raft_stat("") == []
    assert parse_raft_stat("\r\n\n") == []


@pytest.mark.parametrize(
    ("text", "line_no", "problem"),
    [
        ("[g]\npeer_id: 10.0.0.1:8100:0\nterm: two\n", 3, "term is not an integer"),
        ("peer_id: 10.0.0.1:8100:0\n", 1, "expected a group line"),
        ("[g]\npeer_id: 10.0.0.1:8100\n", 2, "peer_id is not ip:port:index"),
        ("[g]\npeer_id: 10.0.0.1:8100:0\nstorage: [1, \n", 3, "storage is not"),
        ("[g]\npeer_id: 10.0.0.1:8100:0\nlast_log_id: index=1\n", 3, "last_log_id is not"),
        ("[g]\npeer_id: 10.0.0.1:8100:0\nvote_timer: soon\n", 3, "vote_timer is not"),
        ("[g]\npeer_id: 10.0.0.1:8100:0\nterm: 1\nterm: 2\n", 4, "appears twice"),
        ("[g]\nstate: LEADER\n", 1, "has no peer_id"),
        ("[g]\npeer_id: 10.0.0.1:8100:0\nreplicator_9@10.0.0.2:8100:0: idle\n", 3, "lacks next_index"),
        ("<!DOCTYPE html><html><body>raft</body></html>", 1, "html page"),
    ],
)
def test_a_garbled_page_is_rejected_naming_the_line(text: str, line_no: int, problem: str) -> None:
    with pytest.raises(RaftStatError) as caught:
        parse_raft_stat(text)
    assert caught.value.line_no == line_no
    assert f"raft_stat line {line_no}:" in str(caught.value)
    assert problem in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]:_ \r\n0123456789abcLEADRpeer_idstate.@=()")), max_size=200))
def test_any_text_parses_or_fails_with_a_raft_stat_error(text: str) -> None:
    try:
        parse_raft_stat(text)
    except RaftStatError:
        pass


def test_a_state_or_snapshot_status_it_does_not_know_is_kept_and_the_other_groups_still_read() -> None:
    # braft prints UNKNOWN for a state out of its own table, and a newer one may add states: one
    # group's odd value failed the whole page, every other group of the store with it.
    groups = parse_raft_stat("[odd]\npeer_id: 10.0.0.1:8100:0\nstate: UNKNOWN\nsnapshot_status: PAUSED\n"
                             "[fine]\npeer_id: 10.0.0.1:8100:0\nstate: FOLLOWER\nsnapshot_status: IDLE\n")
    odd, fine = groups
    assert (odd.group, odd.role, odd.snapshot_status, odd.extra["state"]) == ("odd", "unknown", "PAUSED", "UNKNOWN")
    assert (fine.group, fine.role, fine.snapshot_status) == ("fine", "follower", "IDLE")
