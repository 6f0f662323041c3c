"""etcd's own tools, run by the agent on saved snapshots: every path reaches them as a path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node_agent.engines.etcd_settings import EtcdRestoreSettings
from node_agent.engines.etcd_tools import check_snapshot_file, restore_snapshot
from snapctl.errors import EngineError

ETCDCTL = shutil.which("etcdutl") or shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(ETCDCTL is None, reason="needs etcdutl or etcdctl (Debian etcd-client)")
RESTORE = EtcdRestoreSettings(name="m1", initial_cluster="m1=http://127.0.0.1:2380",
                              initial_advertise_peer_urls="http://127.0.0.1:2380")


def _tool_said(step: str, name: str, directory: Path) -> str:
    (directory / name).write_bytes(b"not a bbolt backend")
    with pytest.raises(EngineError) as failed:
        if step == "check":
            check_snapshot_file(ETCDCTL, Path(name), timeout_s=30)
        else:
            restore_snapshot(ETCDCTL, Path(name), directory / f"member-{name}", RESTORE, timeout_s=30)
    return failed.value.message.replace(name, "NAME")


@pytest.mark.parametrize("step", ["check", "restore"])
def test_a_snapshot_path_beginning_with_a_dash_is_a_file_to_the_tool_not_a_flag(tmp_path, monkeypatch, step) -> None:
    # Without "--" before it, etcdctl took "-w.db" for its -w flag and never looked at the file:
    # a path must reach the tool as a path whatever its first character, and fail as any other would.
    monkeypatch.chdir(tmp_path)
    assert _tool_said(step, "-w.db", tmp_path) == _tool_said(step, "w.db", tmp_path)
