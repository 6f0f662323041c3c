"""One agent per database: an agent started on a database that another agent on this host
serves refuses to start (exit 2).

Two agents on one database undo each other: one's complete releases the other's Tarantool pin
(through ``release_left_hold``), one's prune deletes the etcd snapshot the other holds, one
reports a SQLite database free while the other holds it.

The claim is an abstract unix socket named after the database: the device and inode of the first
data path, or, for the adapter's ``db_path`` when it has one (a SQLite file: two databases in one
directory each get their agent), those of its directory and the file's name; the resolved path
where it does not exist on this host. Nothing is written anywhere, and the kernel frees the name with
the process however it dies, SIGKILL too. A flock on the data directory would be as cheap, and
is wrong: Tarantool flocks its wal_dir (work_dir by default) itself, and would refuse to start
while an agent held it ("failed to lock WAL directory"). An abstract name is seen by every
process in one network namespace: agents in containers with networks of their own do not see
each other. That is why the agent also flocks a file in its state_dir (hold_record.py), which
is the kernel's across namespaces. A name held by another user's process is no agent of ours
(any user can bind any abstract name): warned about, not obeyed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from node_agent.engines.base import Engine
from snapctl.errors import BadInputError, os_reason

log = logging.getLogger("snapctl.agent")

# Held for the life of the process: closing a claim's socket would give the database away.
_claims: dict[bytes, socket.socket] = {}


def claim_database(engine: Engine, config_source: str | Path) -> None:
    """Claim ``engine``'s database for this process; raise (exit 2) when another agent has it."""
    path = _database_path(engine)
    if path is None or not sys.platform.startswith("linux"):  # abstract unix sockets are Linux's
        return
    is_file = getattr(engine, "db_path", None) is not None
    path = path.resolve()
    name = _abstract_name(path, is_file)
    if name in _claims:
        return
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:  # a sandbox without abstract sockets: serve, as before the claim
            log.warning("cannot claim the %s database at %s for this agent (%s): a second agent on it would "
                        "not be refused", engine.name, path, os_reason(exc))
            return
        pid, uid = _holder(name)
        if uid is None or uid != os.geteuid():
            # Not refused: any local user could otherwise keep the agent from ever starting. An
            # agent of ours listens on the name (and answers as our user); the state_dir's lock
            # still keeps a second agent of this node off the database.
            who = f"uid {uid} (pid {pid})" if uid is not None else "a process that does not listen on it"
            log.warning("the claim on the %s database at %s is held by %s, not by a snapctl-agent of this "
                        "user: serving without it", engine.name, path, who)
            return
        who = f"another snapctl-agent (pid {pid})" if pid else "another snapctl-agent"
        raise BadInputError(
            f"{who} already serves the {engine.name} database at {path}: two agents on one database "
            "release each other's holds",
            hint=f"stop the other agent, or point engine: in {config_source} at another database",
        ) from None
    sock.listen(16)
    # Accepted and closed at once, so a refused agent can read the holder's pid (SO_PEERCRED)
    # however often it is restarted: unaccepted connections would fill the backlog.
    threading.Thread(target=_answer, args=(sock,), name="database-claim", daemon=True).start()
    _claims[name] = sock
    log.debug("claimed the %s database at %s for this agent", engine.name, path)


def _database_path(engine: Engine) -> Path | None:
    db_path = getattr(engine, "db_path", None)
    if db_path is not None:
        return Path(db_path)
    paths = engine.data_paths()
    return Path(paths[0]) if paths else None


def _abstract_name(path: Path, is_file: bool) -> bytes:
    # The device and inode, not the path: one path in two mount namespaces (containers) can be two
    # databases. For a file, its directory's: a database file replaced by a rename (a restore)
    # is still the same database. A path not on this host keeps its name.
    try:
        st = (path.parent if is_file else path).stat()
        identity = f"{st.st_dev}:{st.st_ino}" + (f"/{path.name}" if is_file else "")
    except OSError:
        identity = str(path)
    return b"\0snapctl-agent/" + hashlib.sha256(identity.encode()).hexdigest()[:32].encode()


def _holder(name: bytes) -> tuple[int | None, int | None]:
    """The pid (None if in another pid namespace) and uid of the process listening on ``name``."""
    for attempt in range(2):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(name)
            pid, uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                   struct.calcsize("3i")))
            return (pid or None), uid  # pid 0: the holder's pid namespace is not ours
        except OSError:
            if attempt == 0:
                time.sleep(0.2)  # an agent between its bind and its listen
        finally:
            probe.close()
    return None, None  # named, not listening: not an agent (or gone meanwhile)


def _answer(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.close()
