"""etcd's saved snapshot files: made readable by the agent's user alone, and handled with etcd's
own tools, ``etcdutl`` (3.5+) or ``etcdctl`` (3.4), which check a file (``snapshot status``) and
rebuild a data dir from one (``snapshot restore``); and the gRPC gateway's JSON read into facts."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from node_agent.models import TableFacts, VerifyFacts
from snapctl.errors import EngineError, os_reason

if TYPE_CHECKING:
    from node_agent.engines.etcd_settings import EtcdRestoreSettings

log = logging.getLogger("snapctl.agent.etcd")


def snapshot_tool(configured: str | None) -> str | None:
    """etcdutl (3.5+) or etcdctl (3.4, ``snapshot status/restore`` there), or None when neither exists."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise EngineError(f"etcd snapshot_tool {configured!r} not found", hint="give a path to etcdutl or etcdctl")
        return found
    return shutil.which("etcdutl") or shutil.which("etcdctl")


def _run_tool(tool: str, args: list[str], *, timeout_s: float, what: str) -> str:
    try:
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "ETCDCTL_API": "3"}, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{what}: {Path(tool).name} did not finish within {timeout_s:g}s") from exc
    except OSError as exc:
        raise EngineError(f"{what}: cannot run {tool}: {os_reason(exc)}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise EngineError(f"{what}: {Path(tool).name} failed: {last}")
    return done.stdout


def check_snapshot_file(tool: str, path: Path, *, timeout_s: float) -> dict[str, Any]:
    """``snapshot status``: the file opens as a backend, with its revision and hash."""
    # "--" before every path: one beginning with "-" must be a file to the tool, never a flag.
    out = _run_tool(tool, ["snapshot", "status", "-w", "json", "--", str(path)], timeout_s=timeout_s,
                    what=f"checking etcd snapshot {path}")
    try:
        status = json.loads(out)
    except ValueError as exc:
        raise EngineError(f"checking etcd snapshot {path}: unreadable output from {Path(tool).name}") from exc
    return {"revision": status.get("revision"), "hash": status.get("hash"), "total_keys": status.get("totalKey"),
            "total_size": status.get("totalSize"), "checked_with": Path(tool).name}


def restore_snapshot(tool: str, snapshot: Path, data_dir: Path, restore: EtcdRestoreSettings, *,
                     timeout_s: float) -> None:
    """Rebuild ``data_dir`` from ``snapshot`` as a member of a new cluster; the old dir is kept aside."""
    if data_dir.exists() and any(data_dir.iterdir()):
        aside = data_dir.with_name(f"{data_dir.name}.before-restore-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        data_dir.rename(aside)
        log.info("moved %s aside to %s", data_dir, aside)
    elif data_dir.exists():
        data_dir.rmdir()  # the tool refuses an existing dir, even an empty one
    _run_tool(tool, ["snapshot", "restore", f"--data-dir={data_dir}", f"--name={restore.name}",
                     f"--initial-cluster={restore.initial_cluster}",
                     f"--initial-cluster-token={restore.initial_cluster_token}",
                     f"--initial-advertise-peer-urls={restore.initial_advertise_peer_urls}", "--", str(snapshot)],
              timeout_s=timeout_s, what=f"restoring etcd snapshot {snapshot}")


def create_private(path: Path) -> BinaryIO:
    """A new file only the agent's user can read: a saved snapshot is the whole keyspace, secrets
    and all, and etcd keeps its own data dir 0700."""
    path.unlink(missing_ok=True)  # a leftover would keep its old mode through O_CREAT
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact, whatever the umask took away
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def remove_partials(backup_dir: Path) -> None:
    """Remove the ``*.db.part`` files of downloads that never finished. An agent killed mid-download
    (SIGKILL, the OOM killer) leaves one, up to the whole backend, that every later disk snapshot
    of backup_dir would copy. Called before a download, under the agent's engine lock: no download
    of this agent is under way, and no other agent serves this backup_dir (node_agent.exclusive)."""
    for partial in backup_dir.glob("*.db.part"):
        try:
            partial.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # the download goes on: this leftover only costs room, as before
            log.warning("cannot remove %s, left by a snapshot download that never finished: %s",
                        partial, os_reason(exc))
            continue
        log.info("removed %s, left by a snapshot download that never finished", partial)


# ---- the gRPC gateway's JSON, read into snapctl's facts --------------------------------


def key_facts(keys: dict[str, Any]) -> VerifyFacts:
    """Live keys and the store revision: what a restore from a later point must at least hold."""
    return VerifyFacts(tables={"keys": TableFacts(rows=gateway_int(keys.get("count")))},
                       position={"revision": gateway_int(keys.get("header", {}).get("revision"))}, exact=False)


def status_position(status: dict[str, Any]) -> dict[str, Any]:
    header = status.get("header", {})
    return {"raft_term": gateway_int(status.get("raftTerm")), "raft_index": gateway_int(status.get("raftIndex")),
            "applied_index": gateway_int(status.get("raftAppliedIndex")),
            "member_id": member_hex(header.get("member_id")), "cluster_id": member_hex(header.get("cluster_id"))}


def member_name(status: dict[str, Any], members: list[dict[str, Any]]) -> str | None:
    me = gateway_int(status.get("header", {}).get("member_id"))
    return next((m.get("name") for m in members if gateway_int(m.get("ID")) == me), None)


ALL_KEYS = {"key": base64.b64encode(b"\0").decode(), "range_end": base64.b64encode(b"\0").decode(), "count_only": True}


def all_keys(status: dict[str, Any]) -> dict[str, Any]:
    """The range over every key, for the member whose ``status`` this is. A learner refuses a
    linearizable range ("rpc not supported for learner"): it counts its own copy."""
    return {**ALL_KEYS, "serializable": True} if status.get("isLearner") else ALL_KEYS


def learner_refusal(endpoint: str, status: dict[str, Any]) -> EngineError:
    """A learner of an etcd (3.4) that serves its clients no member list and no snapshot."""
    member = member_hex(status.get("header", {}).get("member_id"))
    return EngineError(f"etcd at {endpoint} is a learner member ({member}), and this etcd ({status.get('version')}) "
                       "serves a learner's clients neither the member list nor a snapshot: a backup of this node "
                       "would fail", hint=f"promote it once it has caught up (etcdctl member promote {member}), or "
                                      "point this node's engine at a voting member")


def not_started(member: dict[str, Any]) -> str:
    """A member added (etcdctl member add) whose etcd has not joined yet: it publishes no client URL."""
    if member.get("isLearner"):
        return "learner added but not started (no client url yet)"
    return ("member added but not started (no client url yet): it counts toward the quorum, so the cluster "
            "tolerates one failed member fewer until it joins (hint: start it with --initial-cluster-state existing, "
            "or etcdctl member remove it)")


def gateway_int(value: Any) -> int:
    """The gateway sends uint64/int64 as decimal strings and leaves zeros out."""
    return int(value) if value not in (None, "") else 0


def member_hex(value: Any) -> str:
    """Member and cluster ids as etcdctl prints them."""
    return format(gateway_int(value), "x")


# An alarm is the cluster's, not the reporting member's: every member's status lists every alarm,
# as "memberID:<decimal id> alarm:<type> " (etcd's AlarmMember.String()).
_ALARM = re.compile(r"memberID:(?P<id>\d+)\s+alarm:(?P<alarm>[A-Z_]+)")
_ALARM_MEANING = {
    "NOSPACE": ("its backend reached --quota-backend-bytes: the cluster refuses every write",
                "etcdctl compact <revision>, etcdctl defrag on every member, then etcdctl alarm disarm; "
                "or restart the members with a larger --quota-backend-bytes"),
    "CORRUPT": ("its data differs from the other members': the cluster refuses requests",
                "replace that member (etcdctl member remove, then add it back with an empty data dir), then "
                "etcdctl alarm disarm"),
}


def is_alarm(error: str) -> bool:
    return _ALARM.search(error) is not None


def describe_errors(errors: list[str], names: dict[str, str | None]) -> str | None:
    """The status' ``errors`` as one line: alarms said with what they mean and what clears them;
    "no leader" left out (the raft group says it). ``names``: member hex id -> name."""
    said: list[str] = []
    for error in errors:
        alarm = _ALARM.search(error)
        if alarm is None:
            if "no leader" not in error:
                said.append(error.strip())
            continue
        member = member_hex(alarm["id"])
        who = f"{names[member]} ({member})" if names.get(member) else member
        meaning, hint = _ALARM_MEANING.get(alarm["alarm"], ("", "see etcd's alarm documentation, then etcdctl alarm "
                                                                "disarm"))
        said.append(f"alarm {alarm['alarm']} raised for member {who}" + (f": {meaning}" if meaning else "")
                    + f" (hint: {hint})")
    return "; ".join(dict.fromkeys(said)) or None


LEADER_CHANGED = "etcdserver: leader changed"


def retry_while_electing(call: Callable[[], Any], within_s: float) -> Any:
    """``call()``, repeated while etcd aborts it with "leader changed": a linearizable read whose
    leader was replaced under it (killed, or stepped down), safe to repeat once a new one is elected,
    an election timeout or so later. Past ``within_s`` the last refusal is raised, with a hint."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except EngineError as exc:
            if LEADER_CHANGED not in exc.message:
                raise
            if time.monotonic() >= deadline:
                raise EngineError(f"{exc.message} (still, after {within_s:g}s of retries)",
                                  hint="the cluster keeps changing leader: check its members (snapctl status) "
                                       "and run the backup again") from exc
        time.sleep(0.1)


def http_reason(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or (str(cause) if cause else "") or type(exc).__name__
    return text.lower()
