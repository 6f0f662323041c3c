"""Who a process is, beyond its pid: what proves a recorded snapctl process gone from this host.

A pid alone proves little: a container given this host's name counts pids in a pid namespace of
its own, a reboot starts them over, and any pid is handed out again in time. A process is
therefore recorded as ``identity`` has it (its boot, its pid namespace and when it started), and
judged by ``runs``; the cluster lock, the drill and the restore records all carry one
(``owner_process``). Linux only: without ``/proc`` nothing is recorded, and nothing is proven.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def pid_here(owner: str) -> int | None:
    """The pid an owner (``user@host:pid``, as snapctl records who runs) names on this host; None
    when it names another host, or no pid."""
    host, _, pid = owner.rpartition("@")[2].rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def identity(pid: int) -> dict[str, Any] | None:
    """``{"pid", "boot_id", "pid_ns", "started"}`` of a process that exists (its start in clock
    ticks since boot), else None; a zombie is none: it runs nothing, and no one may have reaped it."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        boot_id = BOOT_ID.read_text().strip()
        pid_ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    fields = stat_line.rpartition(")")[2].split()  # the name before it may hold spaces and parentheses
    if fields[0] == "Z":
        return None
    return {"pid": pid, "boot_id": boot_id, "pid_ns": pid_ns, "started": int(fields[19])}


def runs(pid: int, recorded: object) -> bool | None:
    """Whether the process ``recorded`` (as ``identity`` had it) still runs as ``pid``: False when
    that pid runs nothing, or a process begun at another time (the pid handed out again); True
    when it runs one begun then, or one we may not look at. None when ``recorded`` is of another
    boot or another pid namespace (a container's), or no identity at all: the pid proves nothing."""
    ours = identity(os.getpid())
    if ours is None or not isinstance(recorded, dict):
        return None
    if (recorded.get("boot_id"), recorded.get("pid_ns")) != (ours["boot_id"], ours["pid_ns"]):
        return None
    now = identity(pid)
    if now is None:
        return not not_running(pid)
    return recorded.get("pid") == pid and recorded.get("started") == now["started"]


def of_an_earlier_boot(recorded: object, seen_at: datetime) -> bool:
    """``recorded`` names another boot than this one, and the process was last seen (``seen_at``, by
    its own clock) before this boot began: an earlier boot of this host, every process of which is
    gone. Seen since, it was another machine's, one given this host's name: that proves nothing.
    ``seen_at`` must be the last time it would have been seen had it lived: a record written once
    (a drill's) is no proof, as another machine's process seen before this boot may run on still."""
    booted = booted_at()
    if booted is None or not isinstance(recorded, dict) or not isinstance(recorded.get("boot_id"), str):
        return False
    try:
        ours = BOOT_ID.read_text().strip()
    except OSError:
        return False
    return recorded["boot_id"] != ours and seen_at < booted


def booted_at() -> datetime | None:
    """When this host booted (``btime`` in ``/proc/stat``, whole seconds, by the wall clock)."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return datetime.fromtimestamp(int(line.split()[1]), UTC)
    except (OSError, ValueError, IndexError):
        pass
    return None


def not_running(pid: int) -> bool:
    """No process has ``pid`` in our pid namespace, or a zombie does (it runs no more code; its
    parent may just not have reaped it). One we may not signal is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def run_owner() -> str:
    """This process as the cluster lock and the catalog's records name their holder: user@host:pid."""
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
