"""etcd: save a snapshot of the member's backend into the node's backup area at prepare.

etcd has no way to pause writers, and a disk snapshot of its data dir is only crash-consistent.
So prepare streams ``/v3/maintenance/snapshot`` (a consistent copy of the backend at one
revision, with a sha256 trailer) into ``backup_dir/<run_id>.db``, checks it, and lists it as
the file the disk snapshot must contain. A restore uses that file (``etcdctl snapshot
restore``), not the copied data dir. Writers go on meanwhile: ``facts.exact=False``.

Everything goes through the gRPC gateway's JSON on the client port: int64 values arrive as
strings, keys and values as base64, and zero-valued fields are left out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from node_agent.engines.base import PasswordFile
from node_agent.engines.etcd_settings import EtcdSettings
from node_agent.engines.etcd_tools import (
    ALL_KEYS,
    check_snapshot_file,
    create_private,
    describe_errors,
    http_reason,
    is_alarm,
    key_facts,
    learner_refusal,
    member_name,
    not_started,
    remove_partials,
    restore_snapshot,
    retry_while_electing,
    snapshot_tool,
    status_position,
)
from node_agent.engines.etcd_tools import all_keys as _all_keys
from node_agent.engines.etcd_tools import gateway_int as _int
from node_agent.engines.etcd_tools import member_hex as _hex
from node_agent.models import (
    EngineState,
    EngineStatus,
    JobResult,
    RaftGroup,
    ReplicationProgress,
    VerifyFacts,
)
from snapctl.errors import BadInputError, EngineBusy, EngineError, os_reason
from snapctl.fsmodes import make_dirs

log = logging.getLogger("snapctl.agent.etcd")
# A member answers its status in milliseconds. A stopped one must not hold this member's own status
# for timeout_s: snapctl status waits policy.agent_timeout_s for every agent, and called them all
# unreachable when one peer of theirs was stopped.
PEER_PROBE_TIMEOUT_S = 2.0  # room for a TLS handshake to a remote member; far below agent_timeout_s (10 s)

SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.db$")
NO_USER_HINT = "set user: and password_file: or password_env: in the engine block, for a user with etcd's root role"
ROOT_ROLE_HINT = "grant it etcd's root role (etcdctl user grant-role {user} root): etcd serves snapshots to root only"


class EtcdEngine:
    """One etcd member on this node, reached through its client URL."""

    name = "etcd"
    settings_model = EtcdSettings

    def __init__(self, settings: EtcdSettings, *, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = Path(base_dir)
        # What errors and status name the member by; requests go to _url (through the socket, if any:
        # its URL's host is then only the Host header).
        self._socket = self._absolute(settings.socket) if settings.socket else None
        self._connect_socket = self._socket  # another name of it: see reach_socket_through
        self.endpoint = f"unix:{self._socket}" if self._socket else settings.endpoint.rstrip("/")
        self._url = "http://localhost" if self._socket else self.endpoint
        self.backup_dir = self._resolve(settings.backup_dir)
        self._client: httpx.Client | None = None
        self._token: str | None = None
        self._root_role_seen = False  # the configured user's root role, once status has seen it
        self._held_run: str | None = None
        self._state: EngineState | None = None
        self._password_file = (PasswordFile("etcd", self._resolve(settings.password_file), log)
                               if settings.password_file else None)

    def reach_socket_through(self, path: str) -> None:
        """Connect to the socket by ``path``, another name of the same file (the drill's
        /proc/self/fd/N/NAME when the real path is longer than AF_UNIX takes); errors and status
        go on naming the real path, as that name means nothing outside this process."""
        self._connect_socket = Path(path)
        self.close()  # a client made already would go on through the old name

    # ---- the hold: a saved snapshot -----------------------------------------------------

    def prepare(self, run_id: str) -> EngineState:
        if self._held_run == run_id and self._state is not None:
            return self._state
        if self._held_run is not None:
            raise EngineBusy(f"etcd at {self.endpoint} is held by run {self._held_run}", hint="complete that run first")
        status, members = self._status_and_members()
        if status.get("isLearner") and not members:
            raise learner_refusal(self.endpoint, status)
        if not _int(status.get("leader")):
            # The range below would wait for a leader until timeout_s and blame the member itself.
            said = "; ".join(str(e) for e in status.get("errors") or []) or "no leader"
            raise EngineError(f"etcd at {self.endpoint} answers but its cluster has no leader ({said})",
                              hint="a majority of members is down or cut off, or an election is under way: "
                                   "check the other members (snapctl status)")
        keys = retry_while_electing(lambda: self._post("/v3/kv/range", _all_keys(status)), self.settings.timeout_s)
        target = self.backup_dir / f"{run_id}.db"
        saved = self._save_snapshot(target)
        self._prune(keep=target)
        facts = key_facts(keys)
        facts.position.update(status_position(status), snapshot_revision=saved.get("revision"))
        self._state = EngineState(
            engine=self.name, version=status.get("version"), prepared_at=datetime.now(timezone.utc),
            facts=facts, files=[str(target)], raft=[self._raft_group(status, members)],
            details={"snapshot": saved, "member": member_name(status, members)},
        )
        self._held_run = run_id
        return self._state

    def complete(self, run_id: str) -> None:
        # Nothing is held on the server; the saved file stays: it is the backup.
        if self._held_run == run_id:
            self._held_run, self._state = None, None

    def _save_snapshot(self, target: Path) -> dict[str, Any]:
        """Stream the backend into ``target`` (via a temp file) and check it; returns what was checked."""
        try:
            return self._save_snapshot_once(target)
        except _TokenExpired:
            # The stream is the one call that does not go through _post: renew here. etcd drops a
            # token unused for --auth-token-ttl (300 s), and a trigger is often the first call in hours.
            self._headers(renew=True)
            return self._save_snapshot_once(target)

    def _save_snapshot_once(self, target: Path) -> dict[str, Any]:
        # Before the download: a configured tool that is not there fails the prepare having saved
        # nothing, not after streaming the whole backend into a file no check will read.
        tool = snapshot_tool(self.settings.snapshot_tool)
        partial = target.with_name(target.name + ".part")
        started = time.monotonic()
        deadline = started + self.settings.snapshot_timeout_s
        digest, size, trailer = hashlib.sha256(), 0, b""
        try:
            make_dirs(self.backup_dir, 0o700)
            remove_partials(self.backup_dir)
            with create_private(partial) as out, self._stream("/v3/maintenance/snapshot") as response:
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        raise EngineError(f"etcd snapshot from {self.endpoint} took longer than "
                                          f"{self.settings.snapshot_timeout_s:g}s", hint="raise snapshot_timeout_s")
                    chunk = self._snapshot_chunk(line)
                    out.write(chunk)
                    # The last 32 bytes are the sha256 of everything before them: hash with a lag of 32.
                    trailer += chunk
                    digest.update(trailer[:-32])
                    trailer = trailer[-32:]
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size <= 32 or digest.digest() != trailer:
                raise EngineError(f"etcd snapshot from {self.endpoint} is damaged ({size} bytes, sha256 mismatch)",
                                  hint="retry; check the member's disk and its etcd log")
            os.replace(partial, target)
        except httpx.TimeoutException as exc:
            raise EngineError(f"etcd at {self.endpoint}: the snapshot stream stalled for {self.settings.timeout_s:g}s",
                              hint="is the member overloaded or stuck? raise timeout_s if it is just slow") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"etcd at {self.endpoint}: snapshot failed: {http_reason(exc)}",
                              hint="is etcd running there?") from exc
        except OSError as exc:
            raise EngineError(f"cannot write etcd snapshot {partial}: {os_reason(exc)}",
                              hint="backup_dir must be writable by the agent, with room for the whole backend") from exc
        finally:
            # The error above is the operator's: a backup_dir that is a file would fail this too.
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)  # gone already when the snapshot made it into place
        checked: dict[str, Any] = {"file": str(target), "bytes": size, "sha256": trailer.hex(),
                                   "duration_s": round(time.monotonic() - started, 3)}
        if tool is not None:
            try:
                # The tool reads and hashes the whole backend (up to etcd's 8 GiB quota): no short call.
                checked.update(check_snapshot_file(tool, target, timeout_s=self.settings.snapshot_timeout_s))
            except EngineError:
                target.unlink(missing_ok=True)  # a file the tool cannot read is no backup
                raise
        return checked

    def _prune(self, keep: Path) -> None:
        # The held run's file is what its disk snapshot must contain, however many were saved since.
        spared = {keep} | ({self.backup_dir / f"{self._held_run}.db"} if self._held_run else set())
        saved = sorted((p for p in self.backup_dir.iterdir() if SNAPSHOT_NAME.match(p.name) and p not in spared),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in saved[self.settings.keep_snapshots - 1:]:
            old.unlink(missing_ok=True)
            log.info("removed old etcd snapshot %s", old)

    # ---- the rest of the contract -------------------------------------------------------

    def trigger(self, target: str | None) -> list[JobResult]:
        """etcd cuts its raft snapshots by itself (every --snapshot-count entries); the operator's
        snapshot is a saved backend copy, and ``defragment`` compacts the backend file."""
        name = target or "snapshot"
        if name not in ("snapshot", "defragment"):
            raise BadInputError(f"etcd: unknown trigger target {target!r}",
                                hint="use 'snapshot' (default) or 'defragment'")
        if self._held_run is not None:
            # The held run's disk snapshot is being taken of backup_dir (and maybe the data dir):
            # a new file there, the pruning after it, or a rewritten backend would change what it copies.
            return [JobResult(target=name, status="failed",
                              detail=f"held by run {self._held_run}: {name} after complete")]
        started = time.monotonic()
        if name == "snapshot":
            target_file = self.backup_dir / datetime.now(timezone.utc).strftime("manual-%Y%m%dT%H%M%S%fZ.db")
            try:
                saved = self._save_snapshot(target_file)
            except EngineError as exc:
                return [JobResult(target="snapshot", status="failed", detail=exc.message,
                                  duration_s=time.monotonic() - started)]
            self._prune(keep=target_file)
            return [JobResult(target="snapshot", status="succeeded", detail=f"saved {saved['file']}",
                              duration_s=time.monotonic() - started, extra=saved)]
        self._post("/v3/maintenance/defragment", {}, timeout_s=self.settings.snapshot_timeout_s)
        return [JobResult(target="defragment", status="succeeded", detail="backend defragmented",
                          duration_s=time.monotonic() - started)]

    def status(self) -> EngineStatus:
        held = dict(held=self._held_run is not None, held_since=self._state.prepared_at if self._state else None)
        try:
            status, members = self._status_and_members()
        except EngineError as exc:
            return EngineStatus(engine=self.name, reachable=False, error=str(exc), **held)
        errors = [str(e) for e in status.get("errors") or []]
        details = {
            "member": member_name(status, members), "endpoint": self.endpoint,
            "revision": _int(status.get("header", {}).get("revision")), "db_size": _int(status.get("dbSize")),
            "db_size_in_use": _int(status.get("dbSizeInUse")), "errors": errors,
            "members": [{"id": _hex(m.get("ID")), "name": m.get("name"), "peer_urls": m.get("peerURLs", []),
                         "client_urls": m.get("clientURLs", []), "learner": bool(m.get("isLearner"))} for m in members],
        }
        if self._held_run:
            details["held_for_run"] = self._held_run
        raft = [self._raft_group(status, members)]
        if status.get("isLearner") and not members:  # it answers, but a backup would fail here
            return EngineStatus(engine=self.name, version=status.get("version"), reachable=False, raft=raft,
                                details=details, error=str(learner_refusal(self.endpoint, status)), **held)
        try:
            self._check_access(has_leader=bool(_int(status.get("leader"))))
        except EngineError as exc:
            # It answers, but refuses what prepare asks of it: a backup would fail here, so not ready.
            return EngineStatus(engine=self.name, version=status.get("version"), reachable=False, raft=raft,
                                details=details, error=str(exc), **held)
        names = {_hex(m.get("ID")): m.get("name") for m in members}
        return EngineStatus(engine=self.name, version=status.get("version"), reachable=True,
                            raft=raft, details=details, error=describe_errors(errors, names), **held)

    def verify(self) -> VerifyFacts:
        return key_facts(self._post("/v3/kv/range", _all_keys(self._post("/v3/maintenance/status", {}))))

    def restore_prepare(self, path: Path | None) -> None:
        """Check the newest saved snapshot; with ``restore:`` settings, rebuild the data dir from it."""
        saved = sorted((p for p in self.backup_dir.glob("*.db") if SNAPSHOT_NAME.match(p.name)),
                       key=lambda p: p.stat().st_mtime)
        if not saved:
            raise EngineError(f"etcd restore: no saved snapshot (*.db) in {self.backup_dir}",
                              hint="restore the volume that holds backup_dir")
        data_dir = Path(path) if path is not None else None
        if data_dir is None and self.settings.data_dir:
            data_dir = self._resolve(self.settings.data_dir)
        tool = snapshot_tool(self.settings.snapshot_tool)
        if self.settings.restore is None or data_dir is None:
            if tool is not None:
                check_snapshot_file(tool, saved[-1], timeout_s=self.settings.snapshot_timeout_s)
            return  # the crash-consistent data dir starts as it is; the saved snapshot stays for a rebuild
        if tool is None:
            raise EngineError("etcd restore needs etcdutl or etcdctl", hint="install etcd-client, or set snapshot_tool")
        restore_snapshot(tool, saved[-1], data_dir, self.settings.restore, timeout_s=self.settings.snapshot_timeout_s)

    def data_paths(self) -> list[Path]:
        paths = [self.backup_dir]
        if self.settings.data_dir:
            paths.append(self._resolve(self.settings.data_dir))
        return paths

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---- raft ---------------------------------------------------------------------------

    def _status_and_members(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        status = self._post("/v3/maintenance/status", {})
        try:
            members = self._post("/v3/cluster/member/list", {}).get("members", [])
        except EngineError:
            if not status.get("isLearner"):
                raise
            members = []  # etcd 3.4 serves a learner's clients Status and serializable ranges only
        return status, members

    def _check_access(self, *, has_leader: bool) -> None:
        """Raise when etcd would refuse prepare: status and the member list answer anyone, but with
        auth on, the range needs a user with read access to every key, and the snapshot the root role."""
        self._post("/v3/kv/range", {**ALL_KEYS, "serializable": True})
        if not self.settings.user or self._root_role_seen or not has_leader:
            return
        # etcd 3.4 answers auth reads through raft (a log entry each): ask once, not at every status.
        user = self.settings.user
        if "root" not in (self._post("/v3/auth/user/get", {"name": user}).get("roles") or []):
            raise EngineError(f"etcd user {user!r} at {self.endpoint} lacks the root role, which snapshots need",
                              hint=ROOT_ROLE_HINT.format(user=user))
        self._root_role_seen = True

    def _refusal(self, base: str, what: str, reason: str) -> EngineError | None:
        """etcd's auth refusing ``what``, as an error that says what to configure; None for other errors."""
        user = self.settings.user
        if "user name is empty" in reason and not user:
            return EngineError(f"etcd at {base} has auth enabled and no user is configured: {what} refused ({reason})",
                               hint=NO_USER_HINT)
        if "permission denied" in reason and user:
            self._root_role_seen = False  # taken away since: the next status asks again
            return EngineError(f"etcd at {base}: {what} refused for user {user!r} ({reason})",
                               hint=ROOT_ROLE_HINT.format(user=user))
        return None

    def _raft_group(self, status: dict[str, Any], members: list[dict[str, Any]]) -> RaftGroup:
        header = status.get("header", {})
        me, leader = _int(header.get("member_id")), _int(status.get("leader"))
        mine = next((m for m in members if _int(m.get("ID")) == me), {})
        role = "learner" if status.get("isLearner") or mine.get("isLearner") else (
            "leader" if leader and leader == me else "follower" if leader else "unknown")
        others = [m for m in members if _int(m.get("ID")) != me]
        # Through a socket every request reaches this member: a peer's answer would be its own.
        probe = self.settings.probe_peers and self._socket is None
        progress = self._probe(others, _int(status.get("raftIndex"))) if probe else []
        return RaftGroup(
            group=_hex(header.get("cluster_id")), member=_hex(me), role=role,
            term=_int(status.get("raftTerm")) or None, leader=_hex(leader) if leader else None,
            commit_index=_int(status.get("raftIndex")), applied_index=_int(status.get("raftAppliedIndex")),
            peers=[_hex(m.get("ID")) for m in others], replication=progress,
            extra={"name": mine.get("name"), "names": {_hex(m.get("ID")): m.get("name") for m in members},
                   "revision": _int(header.get("revision")), "errors": status.get("errors") or []},
        )

    def _probe(self, others: list[dict[str, Any]], commit_index: int) -> list[ReplicationProgress]:
        """Each other member's own status: its applied index against ours, or why it did not answer."""
        if not others:
            return []
        with ThreadPoolExecutor(max_workers=min(len(others), 8)) as pool:
            return list(pool.map(lambda m: self._probe_one(m, commit_index), others))

    def _probe_one(self, member: dict[str, Any], commit_index: int) -> ReplicationProgress:
        peer = _hex(member.get("ID"))
        urls = member.get("clientURLs") or []
        if not urls:
            return ReplicationProgress(peer=peer, state="not started", error=not_started(member))
        try:
            theirs = self._post("/v3/maintenance/status", {}, url=urls[0].rstrip("/"),
                                timeout_s=min(self.settings.timeout_s, PEER_PROBE_TIMEOUT_S))
        except EngineError as exc:
            return ReplicationProgress(peer=peer, state="unreachable", consecutive_errors=1, error=exc.message)
        applied, leader = _int(theirs.get("raftAppliedIndex")), _int(theirs.get("leader"))
        their_id = _int(theirs.get("header", {}).get("member_id"))
        state = "leader" if leader and leader == their_id else "follower" if leader else "no leader"
        # Alarms are the cluster's, listed by every member: not this peer's replication failing.
        errors = [str(e) for e in theirs.get("errors") or [] if not is_alarm(str(e))]
        return ReplicationProgress(peer=peer, state=state, match_index=applied,
                                   lag_entries=max(commit_index - applied, 0),
                                   consecutive_errors=len(errors), error="; ".join(errors) or None)

    # ---- HTTP ---------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            s = self.settings
            cert = None
            if s.cert_file and s.key_file:
                cert = (str(self._resolve(s.cert_file)), str(self._resolve(s.key_file)))
            transport = httpx.HTTPTransport(uds=str(self._connect_socket)) if self._connect_socket else None
            self._client = httpx.Client(timeout=httpx.Timeout(s.timeout_s), cert=cert, transport=transport,
                                        verify=str(self._resolve(s.ca_file)) if s.ca_file else True)
        return self._client

    def _headers(self, renew: bool = False) -> dict[str, str]:
        if not self.settings.user:
            return {}
        if self._token is None or renew:
            answer = self._request("/v3/auth/authenticate", {"name": self.settings.user, "password": self._password()},
                                   headers={}, what="authenticating")
            self._token = answer.get("token")
        return {"Authorization": self._token or ""}

    def _post(self, path: str, body: dict[str, Any], *, url: str | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
        try:
            return self._request(path, body, headers=self._headers(), url=url, timeout_s=timeout_s)
        except _TokenExpired:
            return self._request(path, body, headers=self._headers(renew=True), url=url, timeout_s=timeout_s)

    def _request(self, path: str, body: dict[str, Any], *, headers: dict[str, str], what: str | None = None,
                 url: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        base = url or self.endpoint
        what = what or path
        timeout = httpx.Timeout(timeout_s or self.settings.timeout_s)
        try:
            response = self._http().post((url or self._url) + path, json=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise EngineError(f"etcd at {base}: no answer to {what} within {timeout.read:g}s",
                              hint="is the member overloaded or stuck? raise timeout_s if it is just slow") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"etcd at {base}: {what} failed: {http_reason(exc)}", hint="is etcd running there?") from exc
        return self._answer(response, base, what)

    def _answer(self, response: httpx.Response, base: str, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400 or "error" in data:
            err = data.get("error")
            message = data.get("message") or (err.get("message") if isinstance(err, dict) else err)
            message = message or response.reason_phrase
            if "token" in str(message) and self.settings.user:
                raise _TokenExpired(str(message))
            if refused := self._refusal(base, what, str(message)):
                raise refused
            if "authentication failed" in str(message) or response.status_code in (401, 403):
                raise EngineError(f"etcd at {base}: {what}: {message}",
                                  hint="check user and password_env/password_file")
            raise EngineError(f"etcd at {base}: {what} failed: {message}")
        if not isinstance(data, dict):
            raise EngineError(f"etcd at {base}: {what}: unexpected answer")
        return data

    def _snapshot_chunk(self, line: str) -> bytes:
        if not line.strip():
            return b""
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise EngineError(f"etcd snapshot from {self.endpoint}: unreadable stream message") from exc
        if "error" in message:
            err = message["error"]
            reason = str(err.get("message") if isinstance(err, dict) else err)
            if "invalid auth token" in reason and self.settings.user:
                raise _TokenExpired(f"etcd snapshot from {self.endpoint} failed: {reason}")
            raise (self._refusal(self.endpoint, "/v3/maintenance/snapshot", reason)
                   or EngineError(f"etcd snapshot from {self.endpoint} failed: {reason}"))
        return base64.b64decode(message.get("result", {}).get("blob", ""))

    def _stream(self, path: str) -> Any:
        return self._http().stream("POST", self._url + path, json={}, headers=self._headers())

    # ---- small helpers ------------------------------------------------------------------

    def _resolve(self, path: str) -> Path:
        return self._absolute(path).resolve()

    def _absolute(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.base_dir / p

    def _password(self) -> str:
        s = self.settings
        if s.password_env:
            value = os.environ.get(s.password_env)
            if value is None:
                raise EngineError(f"etcd password variable {s.password_env} is not set",
                                  hint="export it in the agent's environment, or use password_file")
            return value
        if self._password_file is not None:
            return self._password_file.read()
        raise EngineError(f"etcd user {s.user!r} has no password source", hint="set password_env or password_file")


class _TokenExpired(EngineError):
    """etcd dropped our auth token (expiry, or the member restarted): authenticate again once."""
