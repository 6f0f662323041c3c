"""LocalBlobStore: atomic writes, create-if-absent and compare-and-swap under races."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from snapctl.catalog import BlobStore, LocalBlobStore
from snapctl.errors import BadInputError, CatalogError


def _race(n: int, action) -> list:
    """Run ``action(i)`` in n threads released at the same instant; return their results."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_implements_the_blobstore_protocol(store: LocalBlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_read_write_delete_roundtrip(store: LocalBlobStore) -> None:
    assert store.read("c/x.json") is None
    store.write("c/x.json", b"one")
    store.write("c/x.json", b"two")
    assert store.read("c/x.json") == b"two"
    store.delete("c/x.json")
    assert store.read("c/x.json") is None
    store.delete("c/x.json")  # missing is fine


def test_write_leaves_no_temp_files_and_lists_only_keys(store: LocalBlobStore) -> None:
    store.write("c/manifests/b.json", b"b")
    store.write("c/manifests/a.json", b"a")
    store.write("c/index.json", b"[]")
    store.replace("c/index.json", b"[1]", expected=b"[]")
    assert store.list("c/") == ["c/index.json", "c/manifests/a.json", "c/manifests/b.json"]
    assert store.list("c/manifests/") == ["c/manifests/a.json", "c/manifests/b.json"]
    leftovers = [p.name for p in (store.root / "c" / "manifests").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_failed_write_keeps_the_old_blob(store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write("c/x.json", b"old")

    def broken_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(CatalogError, match="cannot write"):
        store.write("c/x.json", b"new")
    monkeypatch.undo()
    assert store.read("c/x.json") == b"old"
    assert [p.name for p in (store.root / "c").iterdir() if ".tmp-" in p.name] == []


def test_readers_never_see_a_torn_blob(store: LocalBlobStore) -> None:
    blobs = [b"a" * 2_000_000, b"b" * 2_000_000]
    store.write("c/big", blobs[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            store.write("c/big", blobs[i % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = {store.read("c/big") for _ in range(200)}
    finally:
        stop.set()
        thread.join()
    assert seen <= set(blobs)


def test_create_race_has_exactly_one_winner(store: LocalBlobStore) -> None:
    results = _race(16, lambda i: store.create("c/lock.json", f"owner-{i}".encode()))
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.read("c/lock.json") == f"owner-{winner}".encode()


def test_replace_race_has_exactly_one_winner(store: LocalBlobStore) -> None:
    store.write("c/lock.json", b"stale")
    results = _race(16, lambda i: store.replace("c/lock.json", f"taker-{i}".encode(), expected=b"stale"))
    assert results.count(True) == 1
    assert store.read("c/lock.json") == f"taker-{results.index(True)}".encode()


def test_replace_compares_content(store: LocalBlobStore) -> None:
    assert store.replace("c/k", b"new", expected=b"old") is False  # missing key
    store.write("c/k", b"old")
    assert store.replace("c/k", b"new", expected=b"other") is False
    assert store.read("c/k") == b"old"
    assert store.replace("c/k", b"new", expected=b"old") is True
    assert store.read("c/k") == b"new"


@pytest.mark.parametrize("key", ["../x", "c/../../x", "/etc/passwd", "", "c//x", "c/./x", "c/.lock"])
def test_rejects_keys_outside_the_root(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(BadInputError, match="invalid catalog key"):
        store.write(key, b"x")


def _unwritable(directory: Path) -> list[str]:
    """Make ``directory`` refuse this process's writes; the command that undoes it. Root writes past
    any mode bits, not into an immutable directory."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False).returncode != 0:
            pytest.skip("root writes anywhere, and this file system has no immutable directories")
        return ["chattr", "-i", str(directory)]
    directory.chmod(0o555)
    return ["chmod", "755", str(directory)]


def test_an_unwritable_catalog_directory_is_named_with_the_os_reason_and_the_fix(tmp_path: Path) -> None:
    # The directory's lock file is the first thing a write makes: "cannot lock X: permission denied"
    # read as another snapctl holding the catalog, and named no directory to fix.
    from snapctl.catalog import Catalog

    root = tmp_path / "ro"
    (root / "c").mkdir(parents=True)
    fix = ("check the owner and mode of {}, that its file system is mounted read-write and that it is not immutable "
           "(lsattr -d), or set catalog.path in the inventory")
    undo = _unwritable(root / "c")
    try:
        with pytest.raises(CatalogError) as lock:
            LocalBlobStore(root).write("c/x.json", b"x")
        with pytest.raises(CatalogError) as create:  # the run lock: its create makes a temp file first
            Catalog(LocalBlobStore(root), "c").acquire_lock("ops@host:1", "r1", ttl_s=60)
    finally:
        subprocess.run(undo, check=True)
    undo = _unwritable(root)
    try:
        with pytest.raises(CatalogError) as below:  # the cluster's directory is made first
            LocalBlobStore(root).write("d/x.json", b"x")
    finally:
        subprocess.run(undo, check=True)

    reason = "operation not permitted" if os.geteuid() == 0 else "permission denied"  # chattr +i, or the mode
    assert lock.value.message == (f"cannot lock {root}/c/x.json for writing: the catalog directory {root}/c is not "
                                  f"writable by this process ({reason} creating {root}/c/.lock)")
    assert create.value.message == (f"cannot create {root}/c/lock.json: the catalog directory {root}/c is not "
                                    f"writable by this process ({reason} creating a temp file there)")
    assert lock.value.hint == create.value.hint == fix.format(root / "c")
    assert below.value.message == (f"cannot lock {root}/d/x.json for writing: the catalog directory {root} is not "
                                   f"writable by this process ({reason} creating {root}/d)")
    assert below.value.hint == fix.format(root)


NOBODY = 65534


def _as_nobody(action: Callable[[], None]) -> dict[str, str]:
    """The ``CatalogError`` (message, hint) ``action`` raises run as ``nobody``, in a fork of this
    process: it has snapctl imported already, where another user may not read this venv to start
    one of its own."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        said: dict[str, str | None] = {"message": "no error"}
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
        except CatalogError as exc:
            said = {"message": exc.message, "hint": exc.hint}
        except BaseException as exc:  # noqa: BLE001 - reported to the test, whatever it is
            said = {"message": f"{type(exc).__name__}: {exc}"}
        finally:
            os.write(write, json.dumps(said).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_a_lock_file_that_refuses_this_user_is_named_with_its_owner_mode_and_fix(owner: str) -> None:
    # One `sudo snapctl` leaves the directory's .lock root's and 0600, in a directory anyone may
    # write: the error said the directory was not writable, and sent the operator to fix its mode.
    if os.geteuid() != 0:
        pytest.skip("a lock file of another user, and a process of another user, take root to make")
    top = Path(tempfile.mkdtemp(prefix="cat-"))  # not under tmp_path: pytest's directories are 0700
    try:
        directory = top / "c"
        LocalBlobStore(top).write("c/seed.json", b"{}")  # makes .lock, root's and 0600, as sudo leaves it
        lock = directory / ".lock"
        if owner == "nobody":  # nobody's own, its mode lost (a chmod -R)
            os.chown(lock, NOBODY, NOBODY)
            lock.chmod(0o000)
        for each in (top, directory):
            each.chmod(0o777)
        written = _as_nobody(lambda: LocalBlobStore(top).write("c/x.json", b"x"))
        judged = _as_nobody(lambda: LocalBlobStore(top).check_writable("c"))  # status, backup and restore dry runs
    finally:
        shutil.rmtree(top)

    mode = "0600" if owner == "root" else "0000"
    assert written["message"] == (f"cannot lock {directory}/x.json for writing: the catalog's lock file {lock} "
                                  f"(owned by {owner}, mode {mode}) refuses this process, running as nobody: "
                                  "permission denied")
    assert judged["message"] == (f"cannot write the catalog in {directory}: the catalog's lock file {lock} "
                                 f"(owned by {owner}, mode {mode}) refuses this process, running as nobody: "
                                 "permission denied")
    fix = (f"another user's snapctl made it (one `sudo snapctl` does): give it to the user snapctl runs as (as "
           f"root: chown nobody {lock}), or remove it while no snapctl uses this catalog" if owner == "root" else
           f"make it readable and writable again (chmod 600 {lock}) and check that it is not immutable (lsattr)")
    assert written["hint"] == judged["hint"] == fix


def test_list_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert LocalBlobStore(tmp_path / "nowhere").list("") == []


def test_check_writable_says_what_a_write_would_fail_on_without_writing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "catalog")
    assert store.check_writable("c/manifests") is True  # judged: nothing there yet, the first write makes it
    assert not (tmp_path / "catalog").exists()
    (tmp_path / "catalog").write_text("a file")
    with pytest.raises(CatalogError, match=f"in {tmp_path}/catalog/c/manifests: {tmp_path}/catalog is not a directory"):
        store.check_writable("c/manifests")
    (tmp_path / "catalog").unlink()
    store.write("c/manifests/r1.json", b"{}")
    assert store.check_writable("c/manifests") is True
    read_only = tmp_path / "catalog" / "c" / "manifests"
    undo = _unwritable(read_only)
    try:
        with pytest.raises(CatalogError, match="this process may not write there") as info:
            store.check_writable("c/manifests")
        assert "lsattr -d" in info.value.hint
        store.check_writable("c")  # the directory above is writable
    finally:
        subprocess.run(undo, check=True)
