"""A DingoDB store: its brpc service port (Snapshot RPC over HTTP+JSON) and its raft port (/raft_stat).

What it models, from reference/engines.md:
- the Snapshot RPC of one era (``debug`` now, ``region_control`` and ``store`` before); any other
  path is brpc's framework 404 with ``x-bd-error-code`` 1002 (ENOMETHOD, ``Fail to find method on
  `<path>'``); DingoDB's own errors are HTTP 200 with ``error``; a body that is not JSON is a
  framework 400;
- the RPC returns once the snapshot is *queued*: ``last_snapshot_index`` in raft_stat reaches the
  applied index of the trigger a few raft_stat reads later (``snapshot_polls``);
- one snapshot at a time per store: a trigger while another region saves is accepted and dropped,
  as braft drops it (its EBUSY only reaches the log);
- raft_stat in braft's text format with mixed line endings, ``[group]`` headers (current braft) or
  bare group lines (the seed), 4-part or 3-part peer ids, HTML unless ``?console=1`` or curl.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from tests.fakes.engine_http import FakeServer, Request, Response

Era = Literal["debug", "region_control", "store"]
SERVICES: dict[Era, str] = {
    "debug": "dingodb.pb.debug.DebugService",
    "region_control": "dingodb.pb.region_control.RegionControlService",
    "store": "dingodb.pb.store.StoreService",
}
ENOMETHOD, EREQUEST = 1002, 1003


@dataclass
class Region:
    region_id: int
    group: str
    leader: bool = True
    term: int = 2
    applied: int = 100
    last_snapshot_index: int = 0
    last_snapshot_term: int = 0
    saving_target: int | None = None
    polls_left: int = 0
    extra_lines: list[str] = field(default_factory=list)  # injected into the page (unknown lines)


class FakeDingoStore:
    """Both ports of one store; ``with FakeDingoStore() as store:`` starts and stops them."""

    def __init__(self, *, era: Era = "debug", region_ids: tuple[int, ...] = (1001, 1002),
                 header: Literal["brackets", "bare"] = "brackets", peer_parts: int = 4,
                 snapshot_polls: int = 2, version: str = "dingo-store 0.9.0") -> None:
        self.lock = threading.RLock()
        self.era: Era = era
        self.header = header
        self.peer_parts = peer_parts
        self.snapshot_polls = snapshot_polls
        self.version = version
        self.lose_snapshots = False  # accept the RPC, never take the snapshot
        self.errors: dict[int, tuple[str, str]] = {}  # region -> (errcode, errmsg) answered as HTTP 200
        self.rpc_calls: list[tuple[str, dict]] = []
        self.regions: dict[int, Region] = {
            rid: Region(rid, f"{i + 1}_T{i + 1}_part_0_{rid}", leader=(i % 2 == 0)) for i, rid in enumerate(region_ids)
        }
        self.server = _ServicePort(self)
        self.raft = _RaftPort(self)

    def __enter__(self) -> FakeDingoStore:
        self.server.start()
        self.raft.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.raft.stop()

    @contextlib.contextmanager
    def hang(self) -> Iterator[None]:
        """Both ports accept connections and never answer."""
        with self.server.hang(), self.raft.hang():
            yield

    def write(self, n: int) -> None:
        """n writes to every region: raft applies them, so every applied index moves."""
        with self.lock:
            for region in self.regions.values():
                region.applied += n

    def peer(self, port: int, index: int = 0) -> str:
        return f"127.0.0.1:{port}:{index}" + (":0" if self.peer_parts == 4 else "")

    # --- raft_stat ----------------------------------------------------------------------------
    def advance_snapshots(self) -> None:
        for region in self.regions.values():
            if region.saving_target is None:
                continue
            region.polls_left -= 1
            if region.polls_left <= 0:
                region.last_snapshot_index, region.last_snapshot_term = region.saving_target, region.term
                region.saving_target = None

    def render(self, region: Region) -> str:
        crlf, lf = "\r\n", "\n"
        me = self.peer(self.raft.port)
        peers = [self.peer(self.raft.port), self.peer(self.raft.port + 1), self.peer(self.raft.port + 2)]
        group = f"[{region.group}]" if self.header == "brackets" else region.group
        lines = [group + crlf, f"peer_id: {me}{crlf}", f"state: {'LEADER' if region.leader else 'FOLLOWER'}{crlf}",
                 f"readonly: 0{crlf}", f"term: {region.term}{crlf}", f"conf_index: 1{crlf}",
                 f"peers: {' '.join(peers)}{crlf}"]
        if region.leader:
            lines.append(f"changing_conf: NO    stage: STAGE_NONE{crlf}")
        else:
            lines += [f"leader: {peers[1]}{crlf}", f"last_msg_to_now: 42{crlf}"]
        lines += [f"election_timer: timeout(1000ms) {'STOPPED' if region.leader else 'SCHEDULING(in 812ms)'}{crlf}",
                  f"vote_timer: timeout(2000ms) STOPPED{crlf}",
                  f"stepdown_timer: timeout(1000ms) {'SCHEDULING(in 484ms)' if region.leader else 'STOPPED'}{crlf}",
                  f"snapshot_timer: timeout(600000ms) SCHEDULING(in 282096ms){crlf}",
                  f"storage: [1, {region.applied}]{lf}", f"disk_index: {region.applied}{lf}",
                  f"known_applied_index: {region.applied}{lf}",
                  f"last_log_id: (index={region.applied},term={region.term}){lf}",
                  f"state_machine: {'Saving snapshot' if region.saving_target else 'Idle'}{lf}",
                  f"last_committed_index: {region.applied}{crlf}",
                  f"last_snapshot_index: {region.last_snapshot_index}{crlf}",
                  f"last_snapshot_term: {region.last_snapshot_term}{crlf}",
                  f"snapshot_status: {'SAVING' if region.saving_target else 'IDLE'}{crlf}"]
        lines += [line + crlf for line in region.extra_lines]
        if region.leader:
            for rid, peer in ((1120986464257, peers[1]), (1133871366145, peers[2])):
                lines.append(f"replicator_{rid}@{peer}: next_index={region.applied + 1}  "
                             f"flying_append_entries_size=0 idle hc=8 ac={region.applied} ic=0{crlf}")
        return "".join(lines) + crlf

    # --- the Snapshot RPC ------------------------------------------------------------------------
    def snapshot(self, region_id: int) -> dict:
        if region_id in self.errors:
            code, message = self.errors[region_id]
            return {"error": {"errcode": code, "errmsg": message}}
        region = self.regions.get(region_id)
        if region is None:
            return {"error": {"errcode": "EREGION_NOT_FOUND", "errmsg": f"Not found region {region_id}"}}
        busy = any(r.saving_target is not None for r in self.regions.values())
        if not (busy or self.lose_snapshots) and region.applied > region.last_snapshot_index:
            region.saving_target, region.polls_left = region.applied, self.snapshot_polls
        return {}


class _ServicePort(FakeServer):
    def __init__(self, store: FakeDingoStore) -> None:
        super().__init__()
        self.store = store

    def handle(self, request: Request) -> Response:
        store = self.store
        if request.method == "GET" and request.path == "/version":
            return Response.text(store.version)
        parts = request.path.strip("/").split("/")
        service, method = parts if len(parts) == 2 else ("", "")
        full = SERVICES[store.era]
        if request.method != "POST" or service not in (full, full.rsplit(".", 1)[1]) or method != "Snapshot":
            return _no_method(request.path)
        try:
            body = json.loads(request.body or b"{}")
            region_id = int(body["region_id"])
        except (ValueError, KeyError, TypeError):
            return _brpc_failure(400, EREQUEST, f"Fail to parse http body as {full.rsplit('.', 1)[0]}.SnapshotRequest")
        with store.lock:
            store.rpc_calls.append((service, body))
            answer = store.snapshot(region_id)
        if store.era == "debug":
            answer = {"response_info": dict(body.get("request_info") or {}), **answer}
        return Response.json(answer)


class _RaftPort(FakeServer):
    def __init__(self, store: FakeDingoStore) -> None:
        super().__init__()
        self.store = store

    def handle(self, request: Request) -> Response:
        if request.path == "/version":
            return Response.text(self.store.version)
        if not request.path.startswith("/raft_stat"):
            return _no_method(request.path)
        agent = request.headers.get("user-agent", "")
        if request.query.get("console") != "1" and agent and not agent.startswith("curl"):
            return Response(200, b"<!DOCTYPE html><html><head></head><body><h1>raft_stat</h1></body></html>",
                            {"Content-Type": "text/html"})
        wanted = request.path[len("/raft_stat"):].strip("/")
        with self.store.lock:
            self.store.advance_snapshots()
            regions = [r for r in self.store.regions.values() if not wanted or r.group == wanted]
            page = "".join(self.store.render(r) for r in regions)
        return Response.text(page)


def _brpc_failure(status: int, code: int, text: str) -> Response:
    return Response.text(f"[E{code}]{text}", status, {"x-bd-error-code": str(code)})


def _no_method(path: str) -> Response:
    # brpc over HTTP resolves the whole path to a method: an unknown service, an unknown method of a
    # known one, or a builtin page the server does not have (/raft_stat without braft) all fail alike.
    return _brpc_failure(404, ENOMETHOD, f"Fail to find method on `{path}'")
