"""A scratch agent's restore-prepare through `snapctl restore`: ``restore.agent_path`` names where
its restored disks are mounted, which the agent takes only under its engine's data paths or the
``restore_root`` of its config. A real agent process on loopback, the local provider."""

from __future__ import annotations

import pytest

from snapctl.errors import AgentError
from snapctl.restore import restore_run
from tests.restore.conftest import scratch_agent


@pytest.mark.parametrize("restore_root", [True, False], ids=["under-restore_root", "outside"])
def test_a_scratch_agents_agent_path_must_lie_under_its_restore_root(sqlite_cluster, tmp_path, restore_root):
    # The scratch agent's engine block names where it would serve a database; the restored disks
    # are mounted elsewhere, which restore.agent_path names and restore_root allows.
    run_id = sqlite_cluster.backup()
    token_file = tmp_path / "agent-token"
    token_file.write_text("scratch-agent-token\n")
    mounted = tmp_path / "mnt"
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db",
                       restore_root=mounted if restore_root else None) as url:
        sqlite_cluster.edit(auth={"token_file": str(token_file)},
                            node_n1={"restore": {"path": str(mounted / "n1"), "agent": url,
                                                 "agent_path": str(mounted / "n1" / "data")}},
                            node_n2={"restore": {"path": str(tmp_path / "n2-restored")}})
        if restore_root:
            n1 = restore_run(sqlite_cluster.inventory, run_id).nodes[0]
            assert n1.prepared == url and (mounted / "n1" / "data" / "app.db").is_file()
            return
        with pytest.raises(AgentError) as refused:
            restore_run(sqlite_cluster.inventory, run_id)
        refused = refused.value
        assert refused.node == "n1" and refused.status == 400
        assert refused.reason.startswith("restore-prepare refused: its path must be absolute and lie under the "
                                         f"engine's data paths or the agent's restore_root ({tmp_path / 'image'})")
        assert "restore_root in the scratch agent's config" in refused.hint
