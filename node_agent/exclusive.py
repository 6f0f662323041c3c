"""One agent per database: an agent started on a database that another agent on this host
serves refuses to start (exit 2).

Two agents on one database undo each other: one's complete releases the other's Tarantool pin
(through ``release_left_hold``), one's prune deletes the etcd snapshot the other holds, one
reports a SQLite database free while the other holds it.

The claim is an abstract unix socket named after the database's resolved path: the first data
path, or the adapter's ``db_path`` when it has one (a SQLite file: two databases in one
directory each get their agent). Nothing is written anywhere, and the kernel frees the name with
the process however it dies, SIGKILL too. A flock on the data directory would be as cheap, and
is wrong: Tarantool flocks its wal_dir (work_dir by default) itself, and would refuse to start
while an agent held it ("failed to lock WAL directory"). An abstract name is seen by every
process in one network namespace: agents in containers with networks of their own do not see
each other.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import socket
import struct
import sys
import threading
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
    path = path.resolve()
    name = _abstract_name(path)
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
        pid = _holder_pid(name)
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


def _abstract_name(path: Path) -> bytes:
    # The resolved path, not the inode: a database file replaced by a rename (a restore) is still
    # the same database, and one that does not exist yet has a name too.
    return b"\0snapctl-agent/" + hashlib.sha256(str(path).encode()).hexdigest()[:32].encode()


def _holder_pid(name: bytes) -> int | None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(name)
        pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
    except OSError:
        return None  # named, not listening (not an agent), or gone meanwhile: the message names no pid
    finally:
        probe.close()
    return pid or None  # 0: the holder's pid namespace is not ours


def _answer(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.close()
