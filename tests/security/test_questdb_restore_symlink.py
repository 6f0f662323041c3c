"""restore-prepare of restored QuestDB files writes nothing through a symbolic link that came with
the restored data (a planted conf/server.conf.snapctl-tmp, conf/server.conf, conf/ or _restore):
it refuses, naming the link, and the file the link points at keeps its content and mode. The same
engine code runs in a scratch agent and in snapctl's own process (`snapctl restore`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.engines.questdb import QuestDBEngine, QuestDBSettings
from snapctl.errors import EngineError

SOURCE_CONF = "# line the source's owner chose\n"


def _restored(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "restored"
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "server.conf").write_text(SOURCE_CONF)
    victim = tmp_path / "outside.txt"
    victim.write_text("not the engine's\n")
    victim.chmod(0o600)
    return root, victim


def _prepare(tmp_path: Path, root: Path) -> None:
    # No server answers: the version is unknown, so restore-prepare writes both the marker and the id.
    engine = QuestDBEngine(QuestDBSettings(type="questdb", root=str(root), url="http://127.0.0.1:1"), base_dir=tmp_path)
    try:
        engine.restore_prepare(root)
    finally:
        engine.close()


def _untouched(victim: Path) -> None:
    assert victim.read_text() == "not the engine's\n"
    assert victim.stat().st_mode & 0o777 == 0o600


def test_a_planted_temp_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    root, victim = _restored(tmp_path)
    (root / "conf" / "server.conf.snapctl-tmp").symlink_to(victim)
    _prepare(tmp_path, root)
    _untouched(victim)
    conf = (root / "conf" / "server.conf").read_text()
    assert conf.startswith(SOURCE_CONF) and "cairo.snapshot.instance.id=" in conf
    assert not (root / "conf" / "server.conf.snapctl-tmp").exists()


@pytest.mark.parametrize("link", ["conf/server.conf", "_restore"])
def test_a_symlinked_file_is_refused_and_not_followed(tmp_path: Path, link: str) -> None:
    root, victim = _restored(tmp_path)
    (root / link).unlink(missing_ok=True)
    (root / link).symlink_to(victim)
    with pytest.raises(EngineError, match=f"{root / link} is a symbolic link") as raised:
        _prepare(tmp_path, root)
    assert "restored files" in (raised.value.hint or "")
    _untouched(victim)
    # What server.conf pointed at is not copied into the restored root either.
    assert "not the engine's" not in "".join(p.read_text() for p in (root / "conf").iterdir() if p.is_file()
                                              and not p.is_symlink())


def test_a_dangling_restore_marker_link_creates_nothing_where_it_points(tmp_path: Path) -> None:
    root, _ = _restored(tmp_path)
    (root / "_restore").symlink_to(tmp_path / "created-by-the-link")
    with pytest.raises(EngineError, match="is a symbolic link"):
        _prepare(tmp_path, root)
    assert not (tmp_path / "created-by-the-link").exists()


def test_a_symlinked_conf_directory_is_refused(tmp_path: Path) -> None:
    root, _ = _restored(tmp_path)
    elsewhere = tmp_path / "host-conf"
    (root / "conf").rename(elsewhere)
    (root / "conf").symlink_to(elsewhere)
    with pytest.raises(EngineError, match=f"{root / 'conf'} is a symbolic link"):
        _prepare(tmp_path, root)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["server.conf"]
    assert (elsewhere / "server.conf").read_text() == SOURCE_CONF


def test_a_fifo_under_the_marker_name_is_refused_without_blocking(tmp_path: Path) -> None:
    root, _ = _restored(tmp_path)
    os.mkfifo(root / "_restore")
    with pytest.raises(EngineError, match="_restore"):
        _prepare(tmp_path, root)


def test_a_leftover_temp_file_is_replaced_and_the_conf_keeps_its_mode(tmp_path: Path) -> None:
    root, _ = _restored(tmp_path)
    (root / "conf" / "server.conf").chmod(0o640)
    (root / "conf" / "server.conf.snapctl-tmp").write_text("half of an earlier rewrite")
    _prepare(tmp_path, root)
    conf = root / "conf" / "server.conf"
    assert conf.stat().st_mode & 0o777 == 0o640
    assert "half of an earlier rewrite" not in conf.read_text()
    assert (root / "_restore").is_file()


def test_tarantool_restore_prepare_does_not_follow_a_restored_directory_link(tmp_path: Path) -> None:
    # The audit's other writer on restored data: it deletes *.inprogress leftovers under the tree.
    # A linked directory that came with the data is not entered, and a link is removed, not its target.
    from node_agent.engines.tarantool import TarantoolEngine, TarantoolSettings

    root, outside = tmp_path / "restored", tmp_path / "host-dir"
    root.mkdir()
    outside.mkdir()
    (root / "00000000000000000000.snap").write_bytes(b"SNAP\n")
    (outside / "00000000000000000042.vylog.inprogress").write_bytes(b"another instance's work")
    (root / "linked").symlink_to(outside)
    (root / "00000000000000000043.xlog.inprogress").symlink_to(outside / "00000000000000000042.vylog.inprogress")
    TarantoolEngine(TarantoolSettings(type="tarantool", port=9, work_dir=str(root)), base_dir=tmp_path).restore_prepare(root)
    assert (outside / "00000000000000000042.vylog.inprogress").read_bytes() == b"another instance's work"
    assert not (root / "00000000000000000043.xlog.inprogress").is_symlink()
