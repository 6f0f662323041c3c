"""braft's ``/raft_stat`` text page (``?console=1``) parsed into ``RaftGroup`` models.

The page is ``NodeImpl::describe`` per node: a group line (``[group]`` in console mode, a bare
name when copied from the HTML view), then ``key: value`` lines written by several braft classes
with different line endings, then one ``replicator_*`` line per follower on a leader. Every field
is kept in ``RaftGroup.extra`` (typed where the format is known), unknown ``key: value`` lines
under their key, a state it does not know as role "unknown", and any other line in
``extra["unknown_lines"]``, so a newer braft never loses data. A page that is not this format
fails with ``RaftStatError`` naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from node_agent.models import RaftGroup, RaftRole, ReplicationProgress
from snapctl.errors import EngineError

_LINE_BREAK = re.compile(r"\r?\n|\r")
_HEADER = re.compile(r"^\[(?P<group>[^\]]+)\]$")
_KEY_VALUE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:[ \t]+(?P<value>.*)|[ \t]*)$")
_BARE_NAME = re.compile(r"^[^\s:<>\[\]]+$")
_PEER_ID = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(?P<port>\d+):(?P<idx>\d+)(?::(?P<role>\d+))?$")
_NO_LEADER = {"0.0.0.0:0:0", "0.0.0.0:0:0:0", ""}
# braft writes the *_meta lines without their own line ending: whatever follows is glued on.
_GLUED = re.compile(r"(?=replicator_\d+@)|(?=\bpeer_id: )")
_META_KEYS = ("snapshot_meta", "downloading_snapshot_meta")

_TIMER = re.compile(
    r"^timeout\((?P<timeout>\d+)ms\)\s+(?P<state>STOPPED|INVOKING|DESTROYED|SCHEDULING\(in (?P<in>-?\d+)ms\))$"
)
_STORAGE = re.compile(r"^\[(?P<first>\d+),\s*(?P<last>\d+)\]$")
_LOG_ID = re.compile(r"^\(index=(?P<index>\d+),\s*term=(?P<term>\d+)\)$")
_CHANGING = re.compile(r"^(?P<changing>YES|NO)\s+stage:\s+(?P<stage>\S+)$")
_APPLYING = re.compile(r"log_index=(?P<index>\d+)")

_REPLICATOR = re.compile(r"^replicator_(?P<id>\d+)@(?P<peer>\S+):\s+(?P<rest>.*)$")
_REP_NEXT = re.compile(r"\bnext_index=(?P<v>\d+)")
_REP_FLYING = re.compile(r"\bflying_append_entries_size=(?P<v>\d+)")
_REP_STATE = re.compile(
    r"\b(?P<state>idle|blocking|appending \[(?P<a>\d+), (?P<b>\d+)\]|installing snapshot \{(?P<si>\d+), (?P<st>\d+)\})"
)
_REP_COUNTER = re.compile(r"\b(?P<k>consecutive_error_times|hc|ac|ic)=(?P<v>\d+)")

_INT_KEYS = frozenset({
    "readonly", "term", "conf_index", "last_msg_to_now", "disk_index", "known_applied_index",
    "last_committed_index", "pending_index", "pending_queue_size", "last_snapshot_index", "last_snapshot_term",
})
_TIMER_KEYS = frozenset({"election_timer", "vote_timer", "stepdown_timer", "snapshot_timer", "fetch_log_timer"})
_PEER_LIST_KEYS = frozenset({"peers", "new_peers", "old_peers", "master_peers"})
_STATES: dict[str, RaftRole] = {
    "LEADER": "leader", "TRANSFERRING": "transferring", "CANDIDATE": "candidate", "FOLLOWER": "follower",
    "ERROR": "error", "UNINITIALIZED": "unknown", "SHUTTING": "unknown", "SHUTDOWN": "unknown",
}
_WITNESS_ROLE = "1"


class RaftStatError(EngineError):
    """A raft_stat page that does not parse; ``line_no`` is 1-based."""

    def __init__(self, line_no: int, line: str, problem: str, *, hint: str | None = None) -> None:
        shown = line if len(line) <= 120 else line[:117] + "..."
        super().__init__(f"raft_stat line {line_no}: {problem}: {shown!r}", hint=hint)
        self.line_no = line_no


@dataclass
class _Block:
    group: str
    header_line: int
    fields: dict[str, Any] = field(default_factory=dict)
    replicators: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def parse_raft_stat(text: str) -> list[RaftGroup]:
    """Every node described on the page, in page order. An empty page (unknown group) is ``[]``."""
    lines = _split_lines(text)
    blocks: list[_Block] = []
    current: _Block | None = None
    for index, (line_no, line) in enumerate(lines):
        if not line:
            continue
        header = _HEADER.match(line)
        if header:
            current = _Block(group=header.group("group").strip(), header_line=line_no)
            blocks.append(current)
            continue
        replicator = _REPLICATOR.match(line)
        key_value = None if replicator else _KEY_VALUE.match(line)
        if current is None and not key_value and _looks_like_group_name(line, lines, index):
            current = _Block(group=line, header_line=line_no)
            blocks.append(current)
            continue
        if current is None:
            if line.lstrip().startswith("<"):
                raise RaftStatError(line_no, line, "got an html page, not the console text",
                                    hint="request /raft_stat?console=1")
            raise RaftStatError(line_no, line, "expected a group line ([group] or a bare group name)")
        if replicator:
            current.replicators.append(_parse_replicator(line_no, line, replicator))
            continue
        if key_value:
            key, value = key_value.group("key"), (key_value.group("value") or "").strip()
            if key == "peer_id" and "peer_id" in current.fields:
                # Several nodes of one group in one process share one [group] header.
                current = _Block(group=current.group, header_line=line_no)
                blocks.append(current)
            if key in current.fields:
                raise RaftStatError(line_no, line, f"field {key!r} appears twice for one node")
            _store_field(current, key, value, line_no, line)
            continue
        if _looks_like_group_name(line, lines, index):
            current = _Block(group=line, header_line=line_no)
            blocks.append(current)
            continue
        current.unknown.append(line)
    return [_to_group(block, lines) for block in blocks]


def _split_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for line_no, raw in enumerate(_LINE_BREAK.split(text), start=1):
        line = raw.strip()
        if line.startswith(_META_KEYS):
            out.extend((line_no, part.strip()) for part in _GLUED.split(line) if part.strip())
        else:
            out.append((line_no, line))
    return out


def _looks_like_group_name(line: str, lines: list[tuple[int, str]], index: int) -> bool:
    if not _BARE_NAME.match(line):
        return False
    for _, following in lines[index + 1:]:
        if following:
            return following.startswith("peer_id:")
    return False


def _store_field(block: _Block, key: str, value: str, line_no: int, line: str) -> None:
    def fail(problem: str) -> RaftStatError:
        return RaftStatError(line_no, line, problem)

    parsed: Any = value
    if key in _INT_KEYS:
        try:
            parsed = int(value)
        except ValueError:
            raise fail(f"{key} is not an integer") from None
    elif key in _TIMER_KEYS:
        match = _TIMER.match(value)
        if not match:
            raise fail(f"{key} is not 'timeout(Nms) STOPPED|SCHEDULING(in Nms)|INVOKING'")
        state = match.group("state").split("(")[0]
        parsed = {"timeout_ms": int(match.group("timeout")), "state": state}
        if match.group("in") is not None:
            parsed["in_ms"] = int(match.group("in"))
    elif key == "storage":
        match = _STORAGE.match(value)
        if not match:
            raise fail("storage is not '[first, last]'")
        parsed = {"first": int(match.group("first")), "last": int(match.group("last"))}
    elif key == "last_log_id":
        match = _LOG_ID.match(value)
        if not match:
            raise fail("last_log_id is not '(index=N,term=M)'")
        parsed = {"index": int(match.group("index")), "term": int(match.group("term"))}
    elif key == "changing_conf":
        match = _CHANGING.match(value)
        if not match:
            raise fail("changing_conf is not 'YES|NO stage: STAGE'")
        parsed = match.group("changing")
        block.fields["stage"] = match.group("stage")
    elif key in _PEER_LIST_KEYS:
        parsed = value.split()
        for peer in parsed:
            if not _PEER_ID.match(peer):
                raise fail(f"{peer!r} in {key} is not a peer id (ip:port:index[:role])")
    elif key == "peer_id":
        if not _PEER_ID.match(value):
            raise fail("peer_id is not ip:port:index[:role]")
    elif key == "leader":
        if value not in _NO_LEADER and not _PEER_ID.match(value):
            raise fail("leader is not a peer id (ip:port:index[:role])")
    # A state or snapshot status this parser does not know (braft prints UNKNOWN for a value out
    # of its own table; a newer braft may add one) is kept as written: the node's role is then
    # "unknown", which status and the preflight report, and the page's other groups still count.
    elif key in _META_KEYS:
        parsed = _parse_snapshot_meta(value)
    block.fields[key] = parsed


def _parse_snapshot_meta(value: str) -> dict[str, Any]:
    """``SnapshotMeta::ShortDebugString``: ``last_included_index: 9 last_included_term: 2 peers: "..."``."""
    meta: dict[str, Any] = {"text": value}
    for name in ("last_included_index", "last_included_term"):
        match = re.search(rf"\b{name}:\s*(\d+)", value)
        if match:
            meta[name] = int(match.group(1))
    for name in ("peers", "old_peers"):
        found = re.findall(rf'(?<![a-z_]){name}:\s*"([^"]*)"', value)
        if found:
            meta[name] = found
    return meta


def _parse_replicator(line_no: int, line: str, match: re.Match[str]) -> dict[str, Any]:
    peer, rest = match.group("peer"), match.group("rest")
    if not _PEER_ID.match(peer):
        raise RaftStatError(line_no, line, "replicator peer is not a peer id (ip:port:index[:role])")
    next_index = _REP_NEXT.search(rest)
    if not next_index:
        raise RaftStatError(line_no, line, "replicator line lacks next_index=N")
    state = _REP_STATE.search(rest)
    flying = _REP_FLYING.search(rest)
    counters = {m.group("k"): int(m.group("v")) for m in _REP_COUNTER.finditer(rest)}
    entry: dict[str, Any] = {
        "id": match.group("id"),
        "peer": peer,
        "next_index": int(next_index.group("v")),
        "flying_append_entries_size": int(flying.group("v")) if flying else None,
        "state": state.group("state").split(" [")[0].split(" {")[0] if state else None,
        "consecutive_error_times": counters.pop("consecutive_error_times", 0),
        **counters,
    }
    if state and state.group("a") is not None:
        entry["appending"] = [int(state.group("a")), int(state.group("b"))]
    if state and state.group("si") is not None:
        entry["installing_snapshot"] = {"index": int(state.group("si")), "term": int(state.group("st"))}
    return entry


def _to_group(block: _Block, lines: list[tuple[int, str]]) -> RaftGroup:
    fields = block.fields
    if "peer_id" not in fields:
        header = next(text for no, text in lines if no == block.header_line)
        raise RaftStatError(block.header_line, header, f"group {block.group!r} has no peer_id line")
    member: str = fields["peer_id"]
    state = fields.get("state")
    role: RaftRole = _STATES.get(state, "unknown") if state else "unknown"
    if role == "follower" and (_PEER_ID.match(member).group("role") == _WITNESS_ROLE):  # type: ignore[union-attr]
        role = "witness"
    leader: str | None = None
    if role in ("leader", "transferring"):
        leader = member
    elif fields.get("leader") not in _NO_LEADER and fields.get("leader") is not None:
        leader = fields["leader"]
    last_log = fields.get("last_log_id") or {}
    applied = fields.get("known_applied_index")
    extra: dict[str, Any] = dict(fields)
    if block.replicators:
        extra["replicators"] = block.replicators
    if block.unknown:
        extra["unknown_lines"] = block.unknown
    machine = fields.get("state_machine")
    if isinstance(machine, str) and (applying := _APPLYING.search(machine)):
        extra["applying_index"] = int(applying.group("index"))
    return RaftGroup(
        group=block.group,
        member=member,
        role=role,
        term=fields.get("term"),
        leader=leader,
        commit_index=fields.get("last_committed_index"),
        applied_index=applied,
        last_log_index=last_log.get("index"),
        last_log_term=last_log.get("term"),
        last_snapshot_index=fields.get("last_snapshot_index"),
        last_snapshot_term=fields.get("last_snapshot_term"),
        snapshot_status=fields.get("snapshot_status"),
        peers=fields.get("peers", []),
        conf_changing=fields.get("changing_conf") == "YES" or bool(fields.get("new_peers")),
        replication=[_progress(rep, last_log.get("index")) for rep in block.replicators],
        extra=extra,
    )


def _progress(rep: dict[str, Any], last_log_index: int | None) -> ReplicationProgress:
    next_index: int = rep["next_index"]
    match_index: int | None = None
    if rep["state"] == "idle":
        match_index = next_index - 1
    elif rep["state"] == "appending":
        match_index = rep["appending"][0] - 1
    lag: int | None = None
    if last_log_index is not None:
        acknowledged = match_index if match_index is not None else next_index - 1
        lag = max(0, last_log_index - acknowledged)
        # A blocking replicator's next_index is no acknowledged position: braft sets a new peer's
        # to the leader's last index + 1 before it has a single entry. The peer has at most what
        # next_index says, so a lag above zero is a floor worth showing (a dead peer's, say), and
        # zero is unknown, not in sync; the indexes of the peer's own page can tell.
        if rep["state"] == "blocking" and lag == 0:
            lag = None
    errors = rep["consecutive_error_times"]
    return ReplicationProgress(
        peer=rep["peer"],
        state=rep["state"],
        next_index=next_index,
        match_index=match_index,
        lag_entries=lag,
        consecutive_errors=errors,
        error=f"{errors} consecutive errors" if errors else None,
    )
