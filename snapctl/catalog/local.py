"""A BlobStore in a local directory: the embedded default catalog.

Atomicity comes from the filesystem: every write goes to a temp file in the same directory,
is fsynced and renamed over the key (then the directory is fsynced, so the rename survives a
crash). ``create`` links the temp file to the key, which fails if the key exists: exactly one
of several racing creators wins. ``replace`` compares and writes under an ``flock`` on the
directory's ``.lock`` file, taken by ``write`` and ``delete`` too, which serialises them across
threads and processes on this machine.
Internal files (temps, lock sidecars) start with a dot and are never listed. A writer killed
between its temp file and the rename (SIGKILL, a lost host) leaves the temp, a whole manifest at
worst: ``find_temps`` lists those old enough to be no live writer's, for `snapctl gc`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from snapctl.errors import BadInputError, CatalogError, os_reason
from snapctl.fsmodes import fsync_dir, make_dirs, open_private

# A live writer's temp file lives for as long as one write takes: milliseconds, seconds on a slow
# share. Ten minutes is far past any write, and short enough that a weekly gc finds every one.
TEMP_AGE_S = 600.0
_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")  # as _write_temp names them


@dataclass
class CatalogTemp:
    """A temp file a killed catalog write left (``.<key's name>.tmp-<hex>``)."""

    path: str
    bytes: int
    age_s: float


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def read(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CatalogError(f"cannot read {path}: {os_reason(exc)}") from exc

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._locked(path):
            self._write_locked(path, data)

    def _write_locked(self, path: Path, data: bytes) -> None:
        try:
            temp = self._write_temp(path, data)
            try:
                os.rename(temp, path)
            except BaseException:
                _unlink_quietly(temp)
                raise
            fsync_dir(path.parent)
        except OSError as exc:
            raise _refused(f"cannot write {path}", path, exc) from exc

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            temp = self._write_temp(path, data)
            try:
                # link(2) never replaces an existing name: the atomic create-if-absent.
                os.link(temp, path)
            except FileExistsError:
                return False
            finally:
                _unlink_quietly(temp)
            fsync_dir(path.parent)
            return True
        except OSError as exc:
            raise _refused(f"cannot create {path}", path, exc) from exc

    def replace(self, key: str, data: bytes, expected: bytes) -> bool:
        path = self._path(key)
        with self._locked(path):
            if self.read(key) != expected:
                return False
            self._write_locked(path, data)
            return True

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._locked(path):
            try:
                path.unlink()
            except FileNotFoundError:
                return
            except OSError as exc:
                raise CatalogError(f"cannot delete {path}: {os_reason(exc)}") from exc
            fsync_dir(path.parent)

    def list(self, prefix: str) -> list[str]:
        keys = []
        # Walk only below the prefix's directory: other clusters' runs are none of our business.
        head = prefix.rpartition("/")[0]
        top = self._path(head) if head else self.root
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def age_s(self, key: str) -> float | None:
        # The kernel stamps the mtime as it writes (the temp file, renamed over the key), on this
        # host's clock: a writer whose own clock is off (a faked or skewed process, a container) cannot move it.
        written = self.written_at(key)
        return None if written is None else time.time() - written.timestamp()

    def written_at(self, key: str) -> datetime | None:
        path = self._path(key)
        try:
            return datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CatalogError(f"cannot read {path}: {os_reason(exc)}") from exc

    def find_temps(self, directory: str, older_than_s: float = TEMP_AGE_S) -> list[CatalogTemp]:
        """The temp files below ``directory`` (a cluster's) last written more than ``older_than_s``
        ago: what writers killed between write and rename left, never a live writer's."""
        found = []
        now = time.time()
        for dirpath, dirnames, filenames in os.walk(self._path(directory)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not _TEMP_NAME.match(name):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # gone meanwhile: renamed by its writer, or removed by another gc
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
                    found.append(CatalogTemp(path, st.st_size, now - st.st_mtime))
        return found

    def remove_temp(self, temp: CatalogTemp, older_than_s: float = TEMP_AGE_S) -> bool:
        """A temp ``find_temps`` found, removed under its directory's lock (no write or replace is
        then under way there) if it is still one and still that old; one gone meanwhile is fine.
        False: kept, for it was written since it was found."""
        path = Path(temp.path)
        if not _TEMP_NAME.match(path.name) or not path.parent.is_relative_to(self.root):
            raise BadInputError(f"{path} is no temp file of the catalog at {self.root}")
        with self._locked(path):
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime <= older_than_s:
                    return False  # a live writer's after all
                path.unlink()
            except FileNotFoundError:
                return True
            except OSError as exc:
                raise _refused(f"cannot remove {path}", path, exc, act="removing") from exc
            fsync_dir(path.parent)
            return True

    def check_writable(self, directory: str) -> bool:
        """The directory, or the nearest one above it that exists (below which a write makes the
        rest), must be a directory this process may write in: its mode and owner, a read-only
        mount and an immutable directory (chattr +i) all refuse, even root."""
        path = self._path(directory)
        for existing in (path, *path.parents):
            try:
                st = os.stat(existing)
            except (FileNotFoundError, NotADirectoryError):
                continue  # made by the first write, if the directory above allows it
            except OSError as exc:
                raise CatalogError(f"cannot reach {existing}: {os_reason(exc)}",
                                   hint=_permission_hint(exc, existing / "x")) from exc
            break
        else:
            return True
        if not stat.S_ISDIR(st.st_mode):
            raise CatalogError(f"cannot write the catalog in {path}: {existing} is not a directory",
                               hint="set catalog.path in the inventory to a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CatalogError(f"cannot write the catalog in {existing}: this process may not write there",
                               hint=_fix_hint(existing))
        lock = existing / ".lock"
        if existing == path and os.path.exists(lock) and not os.access(lock, os.R_OK | os.W_OK):
            # Every write opens it first: a writable directory is no use while its lock file refuses.
            refusal = _lock_file_refused(f"cannot write the catalog in {path}", lock, "permission denied")
            if refusal is not None:
                raise refusal
        return True

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            raise BadInputError(f"invalid catalog key {key!r}", hint="keys are relative paths without '.' or '..' parts")
        return self.root.joinpath(*parts)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        make_dirs(path.parent)
        temp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        os.close(fd)
        return temp

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        # One lock per directory, not per key: catalog writes are rare, and per-key sidecars would
        # be left behind by every deleted key (unlinking a lock file others may wait on is unsafe).
        lock_path = path.parent / ".lock"
        try:
            make_dirs(path.parent)
            # 0600: anyone who could open it could stall every catalog write (and every backup).
            lock_fd = open_private(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        except OSError as exc:
            # The lock file is the first thing any write makes: what refuses it refuses the write.
            # One that exists refuses by its own owner and mode (a `sudo snapctl` left it root's,
            # 0600), not by the directory's: naming the directory sent operators to the wrong fix.
            refusal = (_lock_file_refused(f"cannot lock {path} for writing", lock_path, os_reason(exc))
                       if exc.errno in (errno.EACCES, errno.EPERM) else None)
            raise (refusal or _refused(f"cannot lock {path} for writing", path, exc)) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock_fd)  # closing drops the flock


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


_REFUSALS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _refused(doing: str, path: Path, exc: OSError, act: str = "creating") -> CatalogError:
    """``doing`` (what failed on ``path``) failed with ``exc``. Refused by the directory (its mode or
    owner, a read-only mount, chattr +i), the error says which directory is not writable and what
    could not be made there; "cannot lock" alone sent operators to look for another snapctl."""
    # A rename or link (two names) failed after its temp file was made there: no sign of a directory
    # it may not write in (link(2) is refused where the file system has no hard links).
    if exc.errno not in _REFUSALS or exc.filename2:
        return CatalogError(f"{doing}: {os_reason(exc)}")
    made = Path(os.fsdecode(exc.filename)) if exc.filename else path
    what = "a temp file there" if _TEMP_NAME.match(made.name) else made
    return CatalogError(f"{doing}: the catalog directory {made.parent} is not writable by this process "
                        f"({os_reason(exc)} {act} {what})", hint=_fix_hint(made.parent))


def _lock_file_refused(doing: str, lock: Path, reason: str) -> CatalogError | None:
    """The directory's lock file ``lock`` exists and refuses this process (``reason``): named, with
    its owner and mode and the fix. None when there is none (the directory refused its creation)."""
    try:
        st = os.stat(lock)
    except OSError:
        return None
    me = _user_name(os.geteuid())
    if st.st_uid != os.geteuid():
        hint = (f"another user's snapctl made it (one `sudo snapctl` does): give it to the user snapctl runs as "
                f"(as root: chown {me} {lock}), or remove it while no snapctl uses this catalog")
    else:
        hint = f"make it readable and writable again (chmod 600 {lock}) and check that it is not immutable (lsattr)"
    return CatalogError(f"{doing}: the catalog's lock file {lock} (owned by {_user_name(st.st_uid)}, mode "
                        f"{stat.S_IMODE(st.st_mode):04o}) refuses this process, running as {me}: {reason}", hint=hint)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _fix_hint(directory: Path) -> str:
    return (f"check the owner and mode of {directory}, that its file system is mounted read-write and that it is "
            "not immutable (lsattr -d), or set catalog.path in the inventory")


def _permission_hint(exc: OSError, path: Path) -> str | None:
    if exc.errno in _REFUSALS:
        return f"check that {path.parent} is writable by this user, or set catalog.path in the inventory"
    return None
