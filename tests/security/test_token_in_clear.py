"""snapctl says when it would send an agent token over plain http beyond this host, as the agent
says when it serves one that way. Clients are only opened: nothing is sent anywhere."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from snapctl import agent_credentials
from snapctl.agent_client import open_agents
from snapctl.config import load_inventory


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(agent_credentials, "_WARNED", set())


def _inventory(tmp_path, agents: dict[str, str], *, token: bool = True):
    (tmp_path / "token").write_text("a-token-of-the-cluster\n")
    (tmp_path / "token").chmod(0o600)
    raw = {"cluster": "prod", "provider": {"type": "local", "store": str(tmp_path / "store")},
           "nodes": [{"name": name, "agent": url, "volumes": [{"name": "data", "path": str(tmp_path / name)}]}
                     for name, url in agents.items()]}
    if token:
        raw["auth"] = {"token_file": "token"}
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(raw))
    return load_inventory(tmp_path / "inv.yaml")


def _warnings(caplog, inventory, *, opened: int = 1) -> list[str]:
    caplog.set_level("WARNING", logger="snapctl.auth")

    async def open_only():
        for _ in range(opened):  # as `status --watch` does, every refresh
            async with open_agents(inventory):
                pass

    asyncio.run(open_only())
    return [r.getMessage() for r in caplog.records if r.name == "snapctl.auth"]


def test_a_token_sent_in_clear_beyond_this_host_is_warned_about_once(tmp_path, caplog):
    inventory = _inventory(tmp_path, {"n1": "http://10.0.0.11:7700", "n2": "http://db2.internal:7700",
                                      "n3": "https://10.0.0.13:7700", "n4": "http://127.0.0.1:7700"})
    [warning] = _warnings(caplog, inventory, opened=3)
    assert "the agent token crosses the network in clear to node n1 (http://10.0.0.11:7700) and 1 more" in warning
    assert "a-token-of-the-cluster" not in warning


@pytest.mark.parametrize("agents", [{"n1": "https://10.0.0.11:7700"}, {"n1": "http://127.0.0.1:7700"},
                                    {"n1": "http://[::1]:7700"}, {"n1": "http://localhost:7700"}])
def test_tls_or_loopback_is_not_warned_about(tmp_path, caplog, agents):
    assert _warnings(caplog, _inventory(tmp_path, agents)) == []


def test_no_token_no_warning_about_one(tmp_path, caplog):
    assert _warnings(caplog, _inventory(tmp_path, {"n1": "http://10.0.0.11:7700"}, token=False)) == []
