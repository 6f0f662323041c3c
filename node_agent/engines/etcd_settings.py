"""The etcd engine's settings: the engine block of an agent config with ``type: etcd``
(docs/engines/etcd.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from node_agent.engines.base import EngineSettings
from snapctl.yaml_errors import in_words

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


class EtcdRestoreSettings(BaseModel):
    """How this member rejoins a cluster restored from the saved snapshot (``etcdctl snapshot restore``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    initial_cluster: str  # name1=http://host1:2380,name2=...
    initial_advertise_peer_urls: str
    initial_cluster_token: str = "etcd-cluster"


class EtcdSettings(EngineSettings):
    type: Literal["etcd"] = "etcd"
    # No user:password@: httpx would send it as basic auth (etcd ignores that) and log it with every
    # request at debug, and status shows the endpoint. etcd's own auth is user: and password_file:.
    endpoint: str = Field(default=DEFAULT_ENDPOINT, pattern=in_words(
        r"^https?://[^/\s@]+/?$", "an etcd client URL, http(s)://host:port, with no user:password@ (etcd's auth "
        "takes user: with password_file: or password_env:)", repeated=False))
    # The member's client URL is a unix socket (--listen-client-urls unix://NAME:PORT makes the file NAME:PORT
    # in etcd's working directory): reachable only by who may enter that directory. Its path, relative to
    # the inventory/config; plain HTTP, and other members are not probed through it.
    socket: str | None = None
    backup_dir: str  # where prepare saves <run_id>.db: must lie on a snapshotted volume
    data_dir: str | None = None  # the member's --data-dir, when it should be snapshotted too
    user: str | None = None  # etcd auth; the password comes from password_env or password_file
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)  # every request, and each read of the snapshot stream
    snapshot_timeout_s: float = Field(default=600.0, gt=0)  # the whole snapshot download
    keep_snapshots: int = Field(default=2, ge=1)  # saved snapshot files kept in backup_dir
    probe_peers: bool = True  # ask every other member for its status: per-follower progress in the raft model
    snapshot_tool: str | None = None  # etcdutl or etcdctl used to check/restore snapshots; default: found on PATH
    restore: EtcdRestoreSettings | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> EtcdSettings:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.user:
            raise ValueError("a password needs a user")
        if self.socket is not None:
            if not self.socket.strip():
                # Read as "no socket", it would reach whatever listens on the default endpoint.
                raise ValueError("socket is empty: give the socket's path, or leave socket out to use endpoint")
            # Given, not just different: the default endpoint written out with a socket is as ambiguous.
            if "endpoint" in self.model_fields_set:
                raise ValueError(f"give socket or endpoint, not both: socket {self.socket!r} with {self.endpoint}; "
                                 "remove endpoint or socket")
            tls = [key for key in ("ca_file", "cert_file", "key_file") if getattr(self, key)]
            if tls:
                raise ValueError(f"a socket is plain HTTP: {', '.join(tls)} would not be used")
        return self
