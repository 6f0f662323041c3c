"""Why a Tarantool instance on this node does not answer, from what the node itself shows.

A hot standby (``box.cfg.hot_standby``) opens ``box.cfg.listen`` only once it has taken the WAL
lock from its primary: until then a connection is refused, exactly as if nothing ran there. A
starting instance, too, takes the WAL lock before it listens (2.6.0 listens some tens of
milliseconds later, then refuses every request with error 116 until it has loaded its data,
which the adapter says from the error). The node
tells them apart without touching them: the instance that owns the data holds an
exclusive ``flock`` on its ``wal_dir`` (listed in ``/proc/locks``, readable by anyone), Tarantool
writes its state in its process title (``tarantool init.lua <loading>``, ``<hot_standby>``), which
``/proc/PID/cmdline`` shows, and a standby's working directory is ``box.cfg.work_dir``, where it
chdirs. Linux only: elsewhere, or when ``/proc`` says nothing, the refused connection is reported
as it is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from snapctl.errors import EngineError

PROC = Path("/proc")
_TITLE_STATUS = re.compile(r" <([a-z_]+)>")  # "tarantool init.lua <running>", then custom_proc_title if set


@dataclass(frozen=True)
class LocalProcess:
    pid: int
    title: str

    @property
    def status(self) -> str | None:
        """The box.info.status Tarantool puts in its title, e.g. ``loading``, ``hot_standby``."""
        match = _TITLE_STATUS.search(self.title)
        return match.group(1) if match else None


def wal_lock_holder(data_paths: list[Path]) -> tuple[LocalProcess, Path] | None:
    """The process holding the exclusive lock on one of ``data_paths`` or a directory right under
    one (``wal_dir`` is ``work_dir`` by default, else often a subdirectory of it), and that directory."""
    candidates: dict[tuple[int, int, int], Path] = {}
    for root in data_paths:
        for d in [root, *_subdirs(root)]:
            try:
                st = d.stat()
            except OSError:
                continue
            candidates.setdefault((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino), d)
    try:
        locks = (PROC / "locks").read_text()
    except OSError:
        return None
    for line in locks.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 15295 fe:00:2542274 0 EOF"; a blocked waiter's line has "->".
        fields = line.split()
        if len(fields) < 6 or "->" in fields or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key in candidates:
            title = _title(pid)
            if title is not None:
                return LocalProcess(pid, title), candidates[key]
    return None


def hot_standbys(data_paths: list[Path]) -> list[LocalProcess]:
    """Tarantool processes in hot standby whose working directory is one of ``data_paths``. A
    process of another user keeps its working directory to itself: it is not found."""
    roots = {p.resolve() for p in data_paths}
    found = []
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        title = _title(int(entry.name))
        if title is None or LocalProcess(0, title).status != "hot_standby":
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd in roots:
            found.append(LocalProcess(int(entry.name), title))
    return found


def _title(pid: int) -> str | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    # A title longer than the original argv leaves NULs and padding behind: keep the text.
    return " ".join(part for part in raw.decode(errors="replace").split("\0") if part).strip() or None


def _subdirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []


def explain_refused(where: str, data_paths: list[Path], loading_hint: str) -> EngineError | None:
    """What a refused connection to ``where`` means, when this node shows it; None when it does not."""
    holder = wal_lock_holder(data_paths)
    if holder is None or holder[0].status is None:  # no tarantool owns the data here: refused is all there is
        return None
    primary, wal_dir = holder
    if primary.status == "loading":
        # Its first moments: it takes the lock before it listens.
        return EngineError(f"{where} is still loading its data: tarantool pid {primary.pid} holds the WAL lock of "
                           f"{wal_dir} and does not listen yet", hint=loading_hint)
    standby = next(iter(hot_standbys(data_paths)), None)
    if standby is not None:
        return EngineError(
            f"{where} is a hot standby (tarantool pid {standby.pid}, box.cfg.hot_standby): it waits for the WAL lock "
            f"of {wal_dir}, held by its primary (pid {primary.pid}), and answers no request until the primary stops; "
            f"a backup cannot pin a checkpoint through it, and a disk snapshot of {wal_dir} holds the primary's files",
            hint="back up through the primary: point this engine at the address the primary listens on; give the "
                 "standby the same box.cfg.listen, so that it takes that address over on failover")
    return EngineError(
        f"{where} refuses connections, yet tarantool pid {primary.pid} ({primary.title}) holds the WAL lock of "
        f"{wal_dir}: that instance listens elsewhere, or the one configured here is a hot standby waiting for it",
        hint="point this engine at the address that instance listens on (its box.cfg.listen)")
