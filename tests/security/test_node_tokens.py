"""A token per node (`nodes[].token_file`): agents that do not share one token, so that a token
stolen from one host opens only that host's agent. Real agent processes on loopback, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from snapctl.agent_credentials import AgentTokens
from snapctl.config import load_inventory
from snapctl.errors import ExitCode
from tests.agent.conftest import agent_process, make_db
from tests.status.conftest import VALIDATOR

TOKENS = {"n1": "shared-token-of-the-cluster-1a", "n2": "n2-own-token-9f3c"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """Two agents, each started with its own token; an inventory that gives n1 the inventory's
    shared token and n2 its own token_file. Yields the inventory and the agents' URLs."""
    urls = {}
    with ExitStack() as stack:
        for node, token in TOKENS.items():
            data = tmp_path / node / "data"
            data.mkdir(parents=True)
            make_db(data / "app.db")
            (tmp_path / f"{node}.agent.token").write_text(token + "\n")
            config = tmp_path / f"{node}.agent.yaml"
            config.write_text(yaml.safe_dump({"node": node, "token_file": f"{node}.agent.token",
                                              "engine": {"type": "sqlite", "path": f"{node}/data/app.db"}}))
            urls[node] = stack.enter_context(agent_process(config)).url
        (tmp_path / "cluster.token").write_text(TOKENS["n1"] + "\n")
        (tmp_path / "n2.token").write_text(TOKENS["n2"] + "\n")
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "cluster": "tokens", "provider": {"type": "local", "store": "store"}, "catalog": {"path": "catalog"},
            "auth": {"token_file": "cluster.token"},
            "nodes": [{"name": "n1", "agent": urls["n1"], "volumes": [{"name": "data", "path": "n1/data"}]},
                      {"name": "n2", "agent": urls["n2"], "token_file": "n2.token",
                       "volumes": [{"name": "data", "path": "n2/data"}]}],
        }))
        yield inventory, urls


def snapctl(inventory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(inventory), "-o", "json"],
                          cwd=inventory.parent, capture_output=True, text=True, timeout=120, check=False)


def test_each_node_is_asked_with_its_own_token(cluster):
    inventory, urls = cluster
    backup = snapctl(inventory, "backup", "--no-prune")
    assert backup.returncode == ExitCode.OK, backup.stderr
    assert set(json.loads(backup.stdout)["data"]["nodes"]) == {"n1", "n2"}
    # Neither token opens the other agent: the cluster's shared token is no key to n2.
    refused = httpx.get(urls["n2"] + "/v1/status", headers={"Authorization": f"Bearer {TOKENS['n1']}"}, timeout=5)
    assert refused.status_code == 401


def test_a_wrong_node_token_names_that_node_and_its_file_and_never_the_token(cluster):
    inventory, _ = cluster
    (inventory.parent / "n2.token").write_text("a-stale-token-of-n2\n")
    status = snapctl(inventory, "status")
    assert status.returncode == ExitCode.CRITICAL, status.stderr
    document = json.loads(status.stdout)["data"]
    nodes = {node["node"]: node for node in document["nodes"]}
    assert nodes["n1"]["authorized"] and nodes["n1"]["error"] is None
    assert not nodes["n2"]["authorized"]
    assert f"the node's token_file ({inventory.parent / 'n2.token'}) must hold the token" in nodes["n2"]["error"]
    for secret in ("a-stale-token-of-n2", *TOKENS.values()):
        assert secret not in status.stdout + status.stderr


def test_an_unreadable_node_token_file_is_a_bad_inventory(cluster):
    inventory, _ = cluster
    (inventory.parent / "n2.token").unlink()
    status = snapctl(inventory, "status")
    assert status.returncode == ExitCode.BAD_INPUT, status.stderr
    error = json.loads(status.stdout)["error"]
    assert "cannot read the token_file of node n2" in error and "n2.token" in error


def test_a_token_file_is_read_to_its_first_line_and_the_hint_names_the_variable_once(cluster):
    inventory, _ = cluster
    # A note under the token: its line went into the Authorization header, and the agent
    # answered HTTP 400, shown as "agent unreachable".
    (inventory.parent / "n2.token").write_text(f"\n{TOKENS['n2']}\nrotated 2026-12-01, next due 2027-03\n")
    healthy = snapctl(inventory, "status")
    nodes = {node["node"]: node for node in json.loads(healthy.stdout)["data"]["nodes"]}
    assert nodes["n2"]["authorized"] and nodes["n2"]["error"] is None
    (inventory.parent / "cluster.token").write_text("wrong-token\n")
    refused = snapctl(inventory, "status")
    nodes = {node["node"]: node for node in json.loads(refused.stdout)["data"]["nodes"]}
    assert "(or $SNAPCTL_AGENT_TOKEN) to the token" in nodes["n1"]["error"]


def test_token_files_other_users_can_read_are_warned_about_and_still_used(cluster):
    inventory, _ = cluster
    shared, own = inventory.parent / "cluster.token", inventory.parent / "n2.token"
    shared.chmod(0o600)
    own.chmod(0o600)
    quiet = snapctl(inventory, "status")  # critical: no backup yet, which is not what is tested
    assert all(node["authorized"] for node in json.loads(quiet.stdout)["data"]["nodes"])
    assert quiet.stderr == ""
    # Whoever reads one can freeze the databases: warned, not refused, so that a cron job that
    # runs today keeps running after an upgrade, and says on every run what to fix.
    shared.chmod(0o644)
    own.chmod(0o660)
    warned = snapctl(inventory, "status")
    assert warned.returncode == quiet.returncode, warned.stderr
    assert all(node["authorized"] for node in json.loads(warned.stdout)["data"]["nodes"])
    said = [
        (f"{inventory}: auth.token_file {shared} is readable by its group and other users (mode 0644); "
         f"chmod 600 {shared} so that only snapctl's user can read it"),
        (f"{inventory}: the token_file of node n2 {own} is readable and writable by its group (mode 0660); "
         f"chmod 600 {own} so that only snapctl's user can read it"),
    ]
    # As every other warning: `warning: ` on stderr, and in the document (they were neither).
    assert warned.stderr.splitlines() == [f"warning: {line}" for line in said]
    assert json.loads(warned.stdout)["warnings"] == said
    assert "warnings" not in json.loads(quiet.stdout)
    for secret in TOKENS.values():
        assert secret not in warned.stdout + warned.stderr


def test_a_short_token_is_warned_about_once_by_its_length_never_shown(cluster, caplog, monkeypatch):
    inventory, _ = cluster
    own = inventory.parent / "n2.token"
    own.write_text("n2-guessable\n")  # 12 characters: a word someone chose, not a random token
    for token_file in (own, inventory.parent / "cluster.token"):
        token_file.chmod(0o600)  # no warning about who can read them: only the one tested
    warned = snapctl(inventory, "status")
    said = (f"{inventory}: the token_file of node n2 {own} holds a token shorter than 16 characters, which can be "
            "guessed; give the agents and snapctl a long random one, e.g. (umask 077 && openssl rand -hex 32 > FILE) "
            "(docs/security.md)")
    assert warned.stderr.splitlines() == [f"warning: {said}"]
    assert json.loads(warned.stdout)["warnings"] == [said]
    VALIDATOR.validate(json.loads(warned.stdout))  # docs/status.schema.json allows them
    assert "n2-guessable" not in warned.stdout + warned.stderr
    as_text = subprocess.run([sys.executable, "-m", "snapctl.cli", "status", "-i", str(inventory)],
                             cwd=inventory.parent, capture_output=True, text=True, timeout=120, check=False)
    assert as_text.stderr.splitlines()[0] == f"warning: {said}"
    assert "n2-guessable" not in as_text.stdout + as_text.stderr
    failed = snapctl(inventory, "backup", "--no-such-flag")  # the error's document: no token logged yet, none
    assert "warnings" not in json.loads(failed.stdout)
    # Once a process: `status --watch` reads the tokens on every refresh.
    loaded = load_inventory(inventory)
    with caplog.at_level("WARNING", logger="snapctl.auth"):
        for _ in range(3):
            tokens = AgentTokens(loaded)
            assert [tokens.of(node) for node in loaded.nodes] == [TOKENS["n1"], "n2-guessable"]
    assert [r.getMessage().split(" holds ")[0] for r in caplog.records] == [
        f"{inventory}: the token_file of node n2 {own}"]
    # The variable, when no file is named: the same words, naming it.
    data = yaml.safe_load(inventory.read_text())
    data["auth"] = {"token_env": "SHORT_AGENT_TOKEN"}
    inventory.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SHORT_AGENT_TOKEN", "tiny-token")
    caplog.clear()
    with caplog.at_level("WARNING", logger="snapctl.auth"):
        loaded = load_inventory(inventory)
        assert AgentTokens(loaded).of(loaded.nodes[0]) == "tiny-token"
    assert [r.getMessage().split(" holds ")[0] for r in caplog.records] == [f"{inventory}: $SHORT_AGENT_TOKEN"]
    assert all("tiny-token" not in r.getMessage() for r in caplog.records)
