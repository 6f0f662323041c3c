"""The agent's hold record: one small file saying which run's hold the engine is being given, or
holds, written before the engine's prepare call and removed once that hold has ended.

An agent killed outright (SIGKILL, the OOM killer, a crash) cannot release what it held, and the
agent started after it knows nothing of that run from memory: the record is how it finds the
hold to release it (docs/agent.md, "An engine left held"). One file per agent, named after its
node and its engine (type and resolved database paths), so agents sharing a host and a state
directory never read each other's; beside it, ``hold-NODE-HASH.lock``, flocked for the agent's
life, so that no second agent of that node and database loads the record while the first lives.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from snapctl.errors import BadInputError, EngineError, os_reason
from snapctl.fsmodes import fsync_dir
from snapctl.state_home import app_state_dir
from snapctl.timestamps import parse_utc, utc_text

log = logging.getLogger("snapctl.agent")

APP_DIR = "snapctl-agent"


@dataclass(frozen=True)
class HoldRecord:
    run_id: str
    engine: str  # the engine type, as in the agent's config
    began_at: datetime  # wall clock just before the engine's prepare call: nothing of the run's is older
    lease_expires_at: datetime  # as its prepare set it (renewals are not written: the record is for a dead agent)
    facts: dict[str, Any] = field(default_factory=dict)  # what the engine needs to find its hold again

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "engine": self.engine, "began_at": utc_text(self.began_at),
                "lease_expires_at": utc_text(self.lease_expires_at), "facts": self.facts}

    @classmethod
    def from_json(cls, text: str) -> HoldRecord:
        data = json.loads(text)
        return cls(str(data["run_id"]), str(data["engine"]), parse_utc(str(data["began_at"])),
                   parse_utc(str(data["lease_expires_at"])), dict(data.get("facts") or {}))


class HoldRecords:
    """The one record file of one agent. Writes are atomic (a temp file, fsync, rename): a record
    read after a kill is the old one or the new one, never half of either."""

    def __init__(self, directory: Path, node: str, engine_type: str, data_paths: list[Path], *,
                 embedded: bool = False) -> None:
        # Resolved: a record named after a symlink's path was orphaned once the link changed.
        self.directory, self.node = directory, node
        # An embedded agent's (snapctl/embedded_records.py): the process it outlives is a snapctl.
        self.embedded = embedded
        self.paths = [str(Path(p).resolve()) for p in data_paths]
        identity = "\0".join([engine_type, *self.paths])
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        self.path = directory / f"hold-{node}-{digest}.json"
        self.lock_path = self.path.with_suffix(".lock")
        self._lock_fd: int | None = None

    def lock(self, config_source: str | Path) -> None:
        """Take the record for this process (exit 2 if another agent has it), before it is loaded.

        The database claim (node_agent/exclusive.py) is an abstract socket, seen in one network
        namespace only: a second agent in another loaded the first's live record and released its
        hold. A flock is the kernel's, across namespaces, and dies with the process, SIGKILL too."""
        try:
            fd = _open_lock(self.lock_path)
        except OSError as exc:
            raise BadInputError(f"cannot open the agent's lock file {self.lock_path}: {os_reason(exc)}",
                                hint=f"the state_dir set in {config_source} must be the agent's own (chmod 700)",
                                ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BadInputError(f"cannot lock {self.lock_path}: {os_reason(exc)}") from exc
            raise HoldRecordTaken(
                f"another snapctl-agent of node {self.node} on this database already runs with state_dir "
                f"{self.directory} (it holds {self.lock_path.name}): two agents on one database release each "
                "other's holds",
                hint=f"stop the other agent (perhaps in another container or network namespace: "
                     f"fuser -v {self.lock_path}), or point engine: in {config_source} at another database",
            ) from None
        self._lock_fd = fd  # never closed by an agent: closing it would hand the record to a second agent
        self._refuse_a_record_not_its_own()

    def unlock(self) -> None:
        """Let go of the record once its service has closed (an embedded agent: snapctl's process
        lives on, and a later service of this node in it must be able to take the record)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _refuse_a_record_not_its_own(self) -> None:
        """Exit 2 on a record the agent's user did not write: in its own state_dir, one left from
        before the directory was its own, or put there by root. It may be planted, naming another
        client's hold for the agent to release."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BadInputError(f"cannot look at the hold record {self.path}: {os_reason(exc)}",
                                hint="the agent's state_dir must be its user's own (chmod 700)") from exc
        by_hand = "release any hold it names by hand (docs/agent.md, \"An engine left held\")"
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"the hold record {self.path} is not a regular file: it may be planted, and the "
                                "hold it names is not released", hint=f"remove it, and {by_hand}")
        if st.st_uid != os.geteuid():
            raise BadInputError(
                f"the hold record {self.path} is owned by uid {st.st_uid}, not the agent's user (uid "
                f"{os.geteuid()}): another user may have planted it, and the hold it names is not released",
                hint=f"if this agent wrote it while running as another user, chown {os.geteuid()} {self.path}; "
                     f"else remove it, and {by_hand}")

    def warn_of_others(self) -> None:
        """One warning for each other record in the state_dir naming this node or this database:
        an agent renamed, or its paths changed, orphans the record of a run it held. Left alone:
        it may be another live agent's."""
        try:
            others = sorted(p for p in self.directory.glob("hold-*.json") if p != self.path)
        except OSError:
            return
        for other in others:
            named = ""
            if other.name.startswith(f"hold-{self.node}-"):
                named = f"node {self.node}"
            else:
                try:
                    paths = json.loads(other.read_text()).get("paths") or []
                except (OSError, ValueError, AttributeError):
                    continue
                shared = [p for p in self.paths if p in paths]
                if shared:
                    named = f"the database at {shared[0]}"
            if named:
                log.warning("another hold record %s names %s, and this agent's record is %s: left alone; if it "
                            "is an earlier name of this agent's, release the hold it names by hand and remove it "
                            "(docs/agent.md, \"An engine left held\")", other, named, self.path.name)

    def write(self, record: HoldRecord, *, durable: bool = True) -> None:
        """``durable=False``: no fsync, for a record rewritten while the engine is held (each fsync
        there lengthens the freeze); the rename alone is atomic against a killed process, and the
        record it refines was written durably."""
        tmp = self.path.with_suffix(".json.tmp")
        # The node and the paths: so that a later agent under another name can tell it is its own.
        text = json.dumps({**record.to_dict(), "node": self.node, "paths": self.paths}, indent=1)
        try:
            # Unlinked, then created anew and never followed: a temp file planted (a symlink to
            # another file) in a state_dir others could write was written through, then renamed.
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with open(fd, "w") as handle:
                handle.write(text + "\n")
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            if durable:
                fsync_dir(self.directory)  # the rename itself, else lost with the power
        except OSError as exc:
            raise EngineError(f"cannot write the hold record {self.path}: {os_reason(exc)}",
                              hint="the agent's state_dir must stay writable by its user (docs/agent.md)") from exc

    def load(self) -> HoldRecord | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the hold record %s: %s; a hold it names is not released", self.path, os_reason(exc))
            return None
        try:
            return HoldRecord.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            # Edited by hand, or cut short by a power loss: not guessed at. Moved aside, bytes kept,
            # or the next prepare's record would overwrite the only word of a hold it may name.
            aside = self._move_aside()
            log.error("the hold record %s cannot be read (%s): %s; a hold it names is not released "
                      "(docs/agent.md, 'an engine left held')", self.path, exc if text.strip() else "empty",
                      f"moved to {aside}" if aside else "left in place")
            return None

    def unreadable(self) -> list[Path]:
        """Records moved aside as unreadable, at this start or an earlier one, until deleted by hand."""
        return sorted(self.path.parent.glob(f"{self.path.name}.unreadable*"))

    def _move_aside(self) -> Path | None:
        for n in range(100):  # an earlier one is evidence too: never renamed over
            aside = self.path.with_name(f"{self.path.name}.unreadable" + (f".{n}" if n else ""))
            if not aside.exists():
                try:
                    os.rename(self.path, aside)
                except OSError as exc:
                    log.error("cannot move the unreadable hold record %s aside: %s", self.path, os_reason(exc))
                    return None
                return aside
        return None

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
            # Else a power loss can bring back the record of a hold that had ended, for the next
            # start to act on.
            fsync_dir(self.directory)
        except OSError as exc:
            # Harmless at the next start: what the record names is released only if it is that run's.
            log.warning("cannot remove the hold record %s: %s", self.path, os_reason(exc))


def _open_lock(path: Path) -> int:
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # A flock needs no write access: on a state_dir gone read-only, the lock file a killed agent
        # left is still taken before its record is loaded, so that the hold it names is released.
        try:
            return os.open(path, os.O_RDONLY | flags)
        except OSError:
            raise exc from None


class HoldRecordTaken(BadInputError):
    """Another live process (an agent, or a snapctl with the node embedded) has the record."""


class UnwritableStateDir(BadInputError):
    """The agent's own state_dir, which no other user can write, that cannot be written now (a
    read-only mount, its mode): the agent still releases what a hold record in it names before it
    stops (main), as no later record can be kept."""


def engine_record_paths(engine: Any) -> list[Path]:
    """The paths that name ``engine``'s hold record: SQLite's database file, so two in one
    directory differ; else the engine's data paths."""
    db_path = getattr(engine, "db_path", None)
    return [db_path] if db_path else engine.data_paths()


def default_state_dir(env: Mapping[str, str]) -> Path:
    """The agent's state_dir when its config names none: snapctl's own rule (snapctl/state_home.py),
    under ``snapctl-agent``. A rule of its own drifted: it put ``$STATE_DIRECTORY`` over the
    operator's ``$XDG_STATE_HOME``, and took a relative ``$STATE_DIRECTORY`` from the cwd."""
    return app_state_dir(APP_DIR, env)


def ready_state_dir(directory: Path, setting: str, *, fix: str | None = None) -> Path:
    """``directory`` created (0700) if missing, and checked writable: at start, not at the first prepare.
    ``fix``: the hint where no ``state_dir`` setting names it (an embedded agent's directory).

    Whose it is comes before whether it can be written: a record in a directory another user owns
    or can write may be planted, and is never acted on, so only the agent's own directory that
    cannot be written now (a read-only mount, its mode) is an ``UnwritableStateDir``."""
    writable_hint = fix or f"set state_dir in {setting} to a directory the agent's user can write"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create the agent's state_dir {directory}: {os_reason(exc)}",
                            hint=writable_hint,
                            ) from exc
    try:
        st = directory.stat()  # needs only its parent searchable, not the directory itself
    except OSError as exc:
        raise BadInputError(f"cannot look at the agent's state_dir {directory}: {os_reason(exc)}",
                            hint=writable_hint,
                            ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"the agent's state_dir {directory} is not a directory its user can write",
                            hint=writable_hint)
    # Whoever else can write there can plant a record (released at the next start) or a symlink
    # for the agent to write through, or hold the lock file and keep the agent from starting.
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        owner = "not owned by the agent's user" if st.st_uid != os.geteuid() else "writable by others"
        raise BadInputError(
            f"the agent's state_dir {directory} is {owner} (uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}): "
            "another user could plant or remove the agent's hold record there",
            hint=f"chown {os.geteuid()} {directory} && chmod 700 {directory}" + (
                f", or {fix}" if fix else f", or set state_dir in {setting} to a directory of the agent's own"))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UnwritableStateDir(f"the agent's state_dir {directory} is not a directory its user can write",
                                 hint=writable_hint)
    return directory
