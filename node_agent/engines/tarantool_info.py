"""Tarantool's ``box.info`` (as the adapter's Lua returns it) translated into snapctl's models:
the replica set as raft state, the position a snapshot was taken at, and the row counts. Pure
functions of the decoded answer, apart from the connection (``tarantool.py``)."""

from __future__ import annotations

from typing import Any

from node_agent.models import RaftGroup, ReplicationProgress, TableFacts


def raft_group(info: dict[str, Any]) -> RaftGroup:
    """The replica set as this instance sees it. With ``box.info.election`` (2.6.1+) role, term and
    leader come from raft; without it (2.6.0, or election_mode=off) the writable instance is the leader."""
    me = info.get("uuid") or ""
    by_id = {r.get("id"): r for r in info.get("replication") or []}
    vclock = vclock_of(info.get("vclock"))
    election = info.get("election") or None
    role, term, leader = ("follower" if info.get("ro") else "leader"), None, (None if info.get("ro") else me)
    # With election_mode=off (the default from 2.6.1 on) box.info.election is still there, saying
    # "follower" with no leader on every instance, the writable master too: raft is not in charge.
    raft_on = info.get("election_mode") != "off"
    if isinstance(election, dict) and election.get("state") and raft_on:
        role = election["state"] if election["state"] in ("leader", "follower", "candidate") else "unknown"
        term = election.get("term")
        leader_entry = by_id.get(election.get("leader"))
        leader = leader_entry.get("uuid") if leader_entry else None
    peers, progress, addresses = [], [], {}
    for entry in sorted(by_id.values(), key=lambda r: r.get("id") or 0):
        uuid = entry.get("uuid")
        if not uuid or uuid == me:
            continue
        peers.append(uuid)
        up, down = entry.get("upstream") or {}, entry.get("downstream") or {}
        if up.get("peer"):
            addresses[uuid] = str(up["peer"]).rsplit("@", 1)[-1]  # drop the user: addresses only
        progress.append(_progress(uuid, up, down, vclock))
    extra: dict[str, Any] = {"vclock": vclock, "status": info.get("status"), "ro": info.get("ro"),
                             "instance_id": info.get("id"), "peer_addresses": addresses,
                             "election": election if isinstance(election, dict) else None,
                             "election_mode": info.get("election_mode")}
    return RaftGroup(
        group=info.get("group") or "tarantool", member=me, role=role, term=term, leader=leader,
        applied_index=info.get("signature"), last_log_index=info.get("signature"),
        last_snapshot_index=info.get("checkpoint_signature"),
        snapshot_status="SAVING" if info.get("checkpoint_in_progress") else "IDLE",
        peers=peers, replication=progress, extra=extra,
    )


def _progress(uuid: str, up: dict[str, Any], down: dict[str, Any], vclock: dict[int, int]) -> ReplicationProgress:
    state = up.get("status") or down.get("status")
    failing = [(side, d) for side, d in (("upstream", up), ("downstream", down)) if d.get("message")]
    errors = [_error_text(side, d) for side, d in failing]
    # upstream: this instance receiving from the peer; downstream: the peer receiving from it.
    direction = {("upstream",): "from_peer", ("upstream", "downstream"): "both"}.get(
        tuple(side for side, _ in failing), "to_peer")
    lag_entries = None
    if "vclock" in down:
        confirmed = vclock_of(down["vclock"])
        # What this instance has that the peer has not acknowledged yet (component 0 is never replicated).
        lag_entries = sum(max(lsn - confirmed.get(i, 0), 0) for i, lsn in vclock.items() if i != 0)
    if down.get("status") and up.get("status") and down["status"] != up["status"]:
        state = f"{up['status']}/{down['status']}"
    # upstream.lag is the age of the last row received when it was received: once the link is down
    # it stays at its last value (a stopped peer showed 0.00006 s), so it means something only live.
    lag_seconds = up.get("lag") if up.get("status") in ("follow", "sync") else None
    return ReplicationProgress(
        peer=uuid, state=state, lag_entries=lag_entries, lag_seconds=lag_seconds,
        consecutive_errors=len(errors), error="; ".join(errors) or None, error_direction=direction,
    )


def _error_text(side: str, d: dict[str, Any]) -> str:
    text = f"{side} {d.get('status', '?')}: {d['message']}"
    if d.get("system_message"):
        text += f" ({d['system_message'].lower()})"
    if side == "upstream" and d.get("status") == "stopped":  # an applier stopped on an error never retries
        text += (" (hint: fix its cause on the receiving instance, then box.cfg{replication = box.cfg.replication} "
                 "there restarts it)")
    elif side == "upstream" and d.get("status") == "loading":  # the peer answered error 116; the applier retries
        text += " (hint: the peer is still loading its data: wait for its recovery to finish, and check its log)"
    return text


def vclock_of(raw: Any) -> dict[int, int]:
    """Tarantool sends a vclock as a map or, when dense, as an array starting at id 1."""
    if isinstance(raw, dict):
        return {int(k): int(v) for k, v in raw.items() if v is not None}
    if isinstance(raw, list):
        return {i: int(v) for i, v in enumerate(raw, start=1) if v is not None}
    return {}


def table_facts(raw: Any) -> dict[str, TableFacts]:
    return {str(k): TableFacts(rows=int(v)) for k, v in raw.items()} if isinstance(raw, dict) else {}


def position_of(info: dict[str, Any]) -> dict[str, Any]:
    return {"vclock": vclock_of(info.get("vclock")), "lsn": info.get("lsn"), "signature": info.get("signature"),
            "checkpoint_vclock": vclock_of(info.get("checkpoint_vclock")),
            "checkpoint_signature": info.get("checkpoint_signature"), "instance_uuid": info.get("uuid")}
