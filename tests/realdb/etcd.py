"""A real etcd cluster on loopback for tests.

``EtcdCluster(root, size=3)``: members on free client/peer ports with short heartbeat and
election timeouts, so a lost leader is replaced within about a second. ``size=1`` gives a
single-member cluster. Use it as a context manager: every process is killed on exit.
"""

from __future__ import annotations

import base64
import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LOOPBACK, free_port
from tests.realdb.procs import ServerProcess, require_binary, wait_until

START_TIMEOUT_S = 30.0
KEY_PREFIX = "snapctl-test/"


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: ServerProcess

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def etcd_argv(binary: str, member: EtcdMember, initial_cluster: str, token: str, state: str = "new") -> list[str]:
    return [
        binary, "--name", member.name, "--data-dir", str(member.data_dir),
        "--listen-client-urls", member.endpoint, "--advertise-client-urls", member.endpoint,
        "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
        "--initial-cluster-token", token,
        # Fast failover for tests; production keeps the defaults (100 ms / 1000 ms).
        "--heartbeat-interval", "50", "--election-timeout", "500",
    ]


@dataclass
class EtcdCluster:
    root: Path
    size: int = 3
    members: list[EtcdMember] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        binary = require_binary("etcd")
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = f"snapctl-test-{uuid.uuid4().hex[:8]}"
        for index in range(1, self.size + 1):
            name = f"etcd{index}"
            proc = ServerProcess([], cwd=self.root, log_path=self.root / f"{name}.log")
            self.members.append(EtcdMember(name, free_port(), free_port(), self.root / name, proc))
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.process.argv = etcd_argv(binary, member, self.initial_cluster, self.token)

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for member in self.members:
            member.process.start()
        for member in self.members:
            self.wait_ready(member)

    def close(self) -> None:
        for member in self.members:
            member.process.kill()

    def kill(self, index: int) -> EtcdMember:
        member = self.members[index]
        member.process.kill()
        return member

    def restart(self, index: int) -> EtcdMember:
        member = self.members[index]
        member.process.kill()
        member.process.start()
        self.wait_ready(member)
        return member

    def add_member(self, *, learner: bool = True, start: bool = True) -> EtcdMember:
        """A new member added, by default as a raft learner (it votes in nothing), and started (unless
        ``start`` is False) until it sees the leader."""
        name = f"etcd{len(self.members) + 1}"
        proc = ServerProcess([], cwd=self.root, log_path=self.root / f"{name}.log")
        member = EtcdMember(name, free_port(), free_port(), self.root / name, proc)
        # etcd refuses a member change until its members have been connected for a few seconds.
        added: list[dict[str, Any]] = []

        def add() -> bool:
            try:
                added[:] = [self.post("/v3/cluster/member/add", {"peerURLs": [member.peer_url], "isLearner": learner})]
            except httpx.HTTPStatusError:
                return False
            return True

        wait_until(add, timeout_s=15, what=f"etcd to accept {name} as a member")
        self.members.append(member)
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        proc.argv = etcd_argv(require_binary("etcd"), member, cluster, self.token, state="existing")
        if start:
            proc.start()
            self.wait_ready(member)
        return member

    def wait_ready(self, member: EtcdMember, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the member answers and sees a leader."""

        def ready() -> bool:
            status = self.post("/v3/maintenance/status", {}, member=member)
            return int(status.get("leader", 0)) != 0 and not status.get("errors")

        wait_until(ready, timeout_s=timeout_s, what=f"etcd {member.name}", processes=[member.process])

    def wait_leader(self, exclude: EtcdMember | None = None, timeout_s: float = 15.0) -> EtcdMember:
        """Until a running member (not ``exclude``) is leader; returns it."""
        found: list[EtcdMember] = []

        def elected() -> bool:
            for member in self.running():
                if member is exclude:
                    continue
                status = self.post("/v3/maintenance/status", {}, member=member)
                if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    found[:] = [member]
                    return True
            return False

        wait_until(elected, timeout_s=timeout_s, what="etcd leader election")
        return found[0]

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.process.alive()]

    # ---- clients -----------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any], member: EtcdMember | int | None = None) -> dict[str, Any]:
        member = self._pick(member)
        response = httpx.post(member.endpoint + path, json=body, timeout=5.0)
        response.raise_for_status()
        return response.json()

    def put(self, key: str, value: str, member: EtcdMember | int | None = None) -> int:
        """Returns the revision of the write."""
        answer = self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)}, member=member)
        return int(answer["header"]["revision"])

    def write(self, n: int) -> None:
        """Put ``n`` new keys through any running member, many per transaction (one raft entry each)."""
        member = self.running()[0]
        ids = [next(self._ids) for _ in range(n)]
        for start in range(0, n, 100):  # etcd's default --max-txn-ops is 128
            puts = [{"request_put": {"key": b64(f"{KEY_PREFIX}{i:08d}"), "value": b64(f"value {i}")}}
                    for i in ids[start:start + 100]]
            self.post("/v3/kv/txn", {"success": puts}, member=member)

    def key_count(self, member: EtcdMember | int | None = None) -> int:
        answer = self.post("/v3/kv/range", {"key": b64(b"\0"), "range_end": b64(b"\0"), "count_only": True}, member)
        return int(answer.get("count", 0))

    def member_id(self, member: EtcdMember | int | None = None) -> str:
        """The member id as etcdctl prints it (hex)."""
        status = self.post("/v3/maintenance/status", {}, member=member)
        return format(int(status["header"]["member_id"]), "x")

    def engine_settings(self, member: EtcdMember | int | None = None, **overrides: Any) -> dict[str, Any]:
        """The ``engine:`` block an agent beside this member would carry."""
        member = self._pick(member)
        settings: dict[str, Any] = {
            "type": "etcd", "endpoint": member.endpoint, "data_dir": str(member.data_dir),
            "backup_dir": str(self.root / f"{member.name}-backup"), "timeout_s": 5.0, "snapshot_timeout_s": 30.0,
        }
        settings.update(overrides)
        return settings

    def _pick(self, member: EtcdMember | int | None) -> EtcdMember:
        if member is None:
            return self.running()[0]
        return self.members[member] if isinstance(member, int) else member
