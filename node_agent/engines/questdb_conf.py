"""QuestDB's server.conf, as restore-prepare rewrites it for servers before 8.0 (node_agent/engines/questdb.py)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

_INSTANCE_ID_KEY = "cairo.snapshot.instance.id"


def write_instance_id(conf: Path, instance_id: str) -> None:
    """Set ``cairo.snapshot.instance.id`` so a pre-8 server sees a new instance and runs recovery."""
    lines = conf.read_text().splitlines() if conf.exists() else []
    kept = [line for line in lines if not line.strip().startswith(_INSTANCE_ID_KEY)]
    kept.append(f"{_INSTANCE_ID_KEY}={instance_id}")
    conf.parent.mkdir(parents=True, exist_ok=True)
    tmp = conf.with_suffix(".conf.snapctl-tmp")
    # server.conf may hold QuestDB's passwords (pg.password, http.password): the copy that replaces
    # it keeps its mode and owner, not the agent's umask (0644 under 022 made it readable by all).
    try:
        before = conf.stat()
    except FileNotFoundError:
        before = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600 if before else 0o644)
    with open(fd, "w") as handle:
        if before is not None:
            os.fchmod(fd, stat.S_IMODE(before.st_mode))
            with contextlib.suppress(OSError):  # only root may give a file away; the agent's user owns it then
                os.fchown(fd, before.st_uid, before.st_gid)
        handle.write("\n".join(kept) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, conf)
