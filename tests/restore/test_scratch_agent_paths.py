"""A scratch agent's restore-prepare through `snapctl restore` and `snapctl drill`:
``restore.agent_path`` names where its restored disks are mounted, which the agent takes only
under its engine's data paths or the ``restore_root`` of its config, resolved on its own host.
snapctl asks it (a check-only restore-prepare) before restoring anything. Real agent processes on
loopback (one of them behind a proxy that answers the check as an older agent does), the local
provider and the GCP/Azure fakes, the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from snapctl.config import load_inventory
from snapctl.drill import run_drill
from snapctl.errors import AgentError, BadInputError, ExitCode
from snapctl.restore import restore_run
from snapctl.restore_plan import plan_restore
from tests.conftest import free_port
from tests.restore.clouds import _backup, azure_node, gcp_node, restored_disks
from tests.restore.conftest import ROWS, scratch_agent

TOKEN = "scratch-agent-token"


def _outside(sqlite_cluster, tmp_path: Path, url: str) -> Path:
    """n1 restored through the scratch agent at ``url``, its agent_path outside the agent's data paths."""
    token_file = tmp_path / "agent-token"
    mounted = tmp_path / "mnt"
    sqlite_cluster.edit(auth={"token_file": str(token_file)},
                        node_n1={"restore": {"path": str(mounted / "n1"), "agent": url,
                                             "agent_path": str(mounted / "n1" / "data")}},
                        node_n2={"restore": {"path": str(tmp_path / "n2-restored")}})
    return mounted


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_an_agent_path_under_the_scratch_agents_restore_root_is_restore_prepared(sqlite_cluster, tmp_path,
                                                                                 token_file):
    # The scratch agent's engine block names where it would serve a database; the restored disks
    # are mounted elsewhere, which restore.agent_path names and restore_root allows.
    run_id = sqlite_cluster.backup()
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db", restore_root=tmp_path / "mnt") as url:
        mounted = _outside(sqlite_cluster, tmp_path, url)
        assert httpx.get(url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}
                         ).json()["restore_root"] == str(mounted)
        n1 = restore_run(sqlite_cluster.inventory, run_id).nodes[0]
    assert n1.prepared == url and (mounted / "n1" / "data" / "app.db").is_file()


def test_an_agent_path_outside_the_scratch_agents_paths_is_refused_before_anything_is_restored(
        sqlite_cluster, tmp_path, token_file):
    # The agent's 400 came only at restore-prepare, after every volume had been restored (cloud
    # disks made): a nightly drill found out late, and setups that worked before now failed there.
    run_id = sqlite_cluster.backup()
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db") as url:
        mounted = _outside(sqlite_cluster, tmp_path, url)
        with pytest.raises(BadInputError) as refused:
            restore_run(sqlite_cluster.inventory, run_id)
        assert refused.value.message == (
            f"node n1: scratch agent {url} would refuse restore.agent_path {mounted / 'n1' / 'data'} once the "
            "volumes were restored: restore-prepare refused: its path must be absolute and lie under the engine's "
            f"data paths or the agent's restore_root ({tmp_path / 'image'})")
        assert refused.value.hint.startswith("set restore_root: DIR in the scratch agent's config")
        assert not (mounted / "n1").exists() and not (tmp_path / "n2-restored").exists()

        drill = subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", run_id, "-i",
                                str(sqlite_cluster.inventory_path), "--junit", str(tmp_path / "drill.xml")],
                               capture_output=True, text=True, timeout=120, check=False)
    assert drill.returncode == 2, drill.stderr
    errors = [line for line in drill.stderr.splitlines() if "error:" in line]
    assert errors == [f"snapctl: error: {refused.value.message}"], drill.stderr
    assert "  hint: set restore_root: DIR in the scratch agent's config" in drill.stderr.splitlines()[-1]
    assert not (mounted / "n1").exists() and not any((tmp_path / "scratch").glob("*/n*/data"))


@pytest.mark.parametrize("link", ["restore_root", "agent_path"])
def test_a_restore_root_or_agent_path_through_a_symlink_is_left_to_the_agent_which_takes_it(
        sqlite_cluster, tmp_path, token_file, link):
    # The agent resolves both sides on its host (restore_root /mnt/restored -> /data/restored); a
    # comparison of the paths as written here refused what the agent takes.
    real = tmp_path / "mnt"
    real.mkdir()
    (tmp_path / "mnt-link").symlink_to(real)
    root, through = (tmp_path / "mnt-link", real) if link == "restore_root" else (real, tmp_path / "mnt-link")
    run_id = sqlite_cluster.backup()
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db", restore_root=root) as url:
        sqlite_cluster.edit(auth={"token_file": str(token_file)},
                            node_n1={"restore": {"path": str(real / "n1"), "agent": url,
                                                 "agent_path": str(through / "n1" / "data")}},
                            node_n2={"restore": {"path": str(tmp_path / "n2-restored")}})
        n1 = restore_run(sqlite_cluster.inventory, run_id).nodes[0]
    assert n1.prepared == url and (real / "n1" / "data" / "app.db").is_file()


@pytest.mark.parametrize("cloud", [gcp_node, azure_node], ids=["gcp", "azure"])
@pytest.mark.parametrize("attach", [False, True], ids=["unattached", "attached"])
def test_a_cloud_restore_asks_the_scratch_agent_only_when_it_will_call_it(tmp_path, token_file, cloud, attach):
    # Without --attach the new disks are attached nowhere and the scratch agent is never called: its
    # agent_path is no reason to refuse. With --attach it is called, so it is asked before any disk is made.
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db") as url, \
            cloud(tmp_path, {"instance": "scratch", "agent": url, "agent_path": str(tmp_path / "mnt" / "data")},
                  {"token_file": str(token_file)}) as (fake, inventory):
        run_id = _backup(inventory)
        if not attach:
            [node] = restore_run(load_inventory(inventory), run_id).nodes
            assert node.note == "the restored volumes are attached nowhere: restore-prepare them on their machine"
            assert len(restored_disks(fake)) == 1
            return
        with pytest.raises(BadInputError, match=f"^node db1: scratch agent {url} would refuse restore.agent_path "):
            restore_run(load_inventory(inventory), run_id, attach=True)
        assert restored_disks(fake) == []


@contextmanager
def older_agent(url: str, checks: list[str]) -> Iterator[str]:
    """The agent at ``url`` as one of before check_only: a proxy that answers a restore-prepare
    carrying it as such an agent does (422, the unknown field; nothing done), appending its body
    to ``checks``, and passes everything else as it is."""

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, content: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def _pass(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/v1/restore-prepare" and "check_only" in json.loads(body or b"{}"):
                checks.append(body.decode())
                self._answer(422, json.dumps({"error": "unknown field 'check_only'", "hint": None,
                                              "holder": None}).encode())
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
            answer = httpx.request(self.command, url + self.path, headers=headers, content=body, timeout=30)
            self._answer(answer.status_code, answer.content, answer.headers.get("content-type", "application/json"))

        do_GET = do_POST = _pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_older_scratch_agent_is_not_checked_up_front_and_its_restore_prepare_still_refuses(
        sqlite_cluster, tmp_path, token_file):
    run_id = sqlite_cluster.backup()
    checks: list[str] = []
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db") as real, \
            older_agent(real, checks) as url:
        mounted = _outside(sqlite_cluster, tmp_path, url)
        # Its dry run goes ahead as the restore does, and says the agent could not be asked; so does a drill.
        warnings = plan_restore(sqlite_cluster.inventory, run_id).warnings
        drilled = run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
        with pytest.raises(AgentError) as refused:
            restore_run(sqlite_cluster.inventory, run_id)
    unasked = (f"node n1: scratch agent {url} is older than restore-prepare's check_only, so it was not asked before "
               "restoring: whether it serves a live database or takes restore.agent_path is found only once the "
               "volumes are restored (upgrade it)")
    assert warnings == [unasked] and unasked in drilled.warnings
    assert drilled.nodes[0].verdict == "error" and "restore-prepare refused: its path" in drilled.nodes[0].error
    assert [json.loads(c) for c in checks] == [{"path": str(mounted / "n1" / "data"), "check_only": True}] * 3
    refused = refused.value
    assert refused.node == "n1" and refused.status == 400
    assert refused.reason.startswith("restore-prepare refused: its path must be absolute and lie under the "
                                     f"engine's data paths or the agent's restore_root ({tmp_path / 'image'})")
    assert "restore_root in the scratch agent's config" in refused.hint


@contextmanager
def _named_as_scratch_agent(case: str, cluster, tmp_path: Path, token_file: Path) -> Iterator[str]:
    """What n1's restore.agent names: nothing listening; n1's own live agent, named by mistake; a
    scratch agent that takes another token."""
    if case == "unreachable":
        yield f"http://127.0.0.1:{free_port()}"
    elif case == "live agent":
        with scratch_agent(tmp_path, token_file, cluster.database("n1"), name="n1", restore_target=False) as url:
            yield url
    else:
        other = tmp_path / "other-token"
        other.write_text("another-agent-token\n")
        other.chmod(0o600)
        with scratch_agent(tmp_path, other, tmp_path / "image" / "app.db") as url:
            yield url


@pytest.mark.parametrize("case, said, hint", [
    ("unreachable", "did not answer, asked before restoring anything: cannot reach the agent at {url}: connection "
                    "refused", "check restore.agent of node n1; is snapctl-agent running there, and listening on "
                               "that address?"),
    ("live agent", "would refuse restore-prepare once the volumes were restored: node n1: restore-prepare refused: "
                   "this agent serves a live database", "check restore.agent of node n1; run it on a scratch agent "
                                                        "beside the restored disks, configured with restore_target: "
                                                        "true"),
    ("wrong token", "refused snapctl, asked before restoring anything: the agent at {url} refused us: ", "")],
    ids=["unreachable", "live agent", "wrong token"])
def test_a_scratch_agent_that_would_fail_the_restore_prepare_refuses_restore_dry_run_and_drill_before_any_copy(
        sqlite_cluster, tmp_path, token_file, case, said, hint):
    # Only a 400 about restore.agent_path stopped them: the restore copied n1's volumes (a cloud one
    # made and attached them) and only then failed on the agent, its dry run having said "would go
    # ahead"; the partial restore had to be removed by hand before a retry.
    run_id = sqlite_cluster.backup()
    mounted, n2_place = tmp_path / "mnt", tmp_path / "n2-restored"
    with _named_as_scratch_agent(case, sqlite_cluster, tmp_path, token_file) as url:
        sqlite_cluster.edit(auth={"token_file": str(token_file)},
                            node_n1={"restore": {"path": str(mounted / "n1"), "agent": url}},
                            node_n2={"restore": {"path": str(n2_place)}})
        done = {command: subprocess.run([sys.executable, "-m", "snapctl.cli", *command.split(), run_id, "-i",
                                         str(sqlite_cluster.inventory_path), "--junit", str(tmp_path / "drill.xml")]
                                        if command == "drill" else
                                        [sys.executable, "-m", "snapctl.cli", *command.split(), run_id, "-i",
                                         str(sqlite_cluster.inventory_path)],
                                        capture_output=True, text=True, timeout=120, check=False)
                for command in ("restore --dry-run", "restore", "drill")}

    for command, answer in done.items():
        assert answer.returncode == ExitCode.BAD_INPUT, (command, answer.stdout, answer.stderr)
        lines = [line for line in answer.stderr.splitlines() if line.startswith(("snapctl: error:", "  hint:"))]
        assert lines[0].startswith(f"snapctl: error: node n1: scratch agent {url} (restore.agent) "
                                   + said.format(url=url)), (command, answer.stderr)
        assert lines[1].startswith("  hint: " + hint), (command, answer.stderr)
        assert lines == [line for line in done["restore"].stderr.splitlines()
                         if line.startswith(("snapctl: error:", "  hint:"))], "the same refusal, word for word"
    assert not mounted.exists() and not n2_place.exists(), "nothing is restored"
    assert not any((tmp_path / "scratch").glob("*/n*/data")), "nothing is drilled"
    assert sqlite_cluster.rows("n1") == ROWS, "the live database is untouched"
