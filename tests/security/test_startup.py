"""The agent refuses to listen beyond loopback without a token, and says how to set one. (Only the
refusals run for real: a test never binds anything but 127.0.0.1.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from node_agent.main import is_loopback
from tests.faults.harness import AGENT_BIN, create_db


def start_agent(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "SNAPCTL_AGENT_TOKEN"}
    return subprocess.run([str(AGENT_BIN), "--config", str(config), *args], check=False, capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})})


@pytest.fixture
def tokenless_config(tmp_path: Path) -> Path:
    create_db(tmp_path / "db.sqlite")
    config = tmp_path / "agent.yaml"
    config.write_text("node: n1\nport: 0\nengine: {type: sqlite, path: db.sqlite}\n")
    return config


@pytest.mark.parametrize(("listen", "env"), [
    ("0.0.0.0", {}),
    ("::", {}),
    ("10.20.30.40", {}),
    ("db-1.example.internal", {}),  # a name may resolve to anything
    ("0.0.0.0", {"SNAPCTL_AGENT_TOKEN": "   "}),  # a blank variable is no token
])
def test_no_token_no_listening_beyond_loopback(tokenless_config: Path, listen: str, env: dict[str, str]) -> None:
    result = start_agent(tokenless_config, "--listen", listen, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (f"snapctl-agent: error: refusing to listen on {listen} without a token (hint: set token_file in "
         f"{tokenless_config}, pass --token-file FILE, or set $SNAPCTL_AGENT_TOKEN)")
    ]
    assert "listening on" not in result.stdout + result.stderr


def test_the_same_refusal_in_the_config_file(tokenless_config: Path) -> None:
    tokenless_config.write_text(tokenless_config.read_text() + "listen: 0.0.0.0\n")
    result = start_agent(tokenless_config)
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in result.stderr


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("db-1", False), ("", False),
])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_with_token_env_null_the_hint_names_no_variable(tokenless_config: Path) -> None:
    # It said "or set $None".
    tokenless_config.write_text(tokenless_config.read_text() + "token_env: null\n")
    result = start_agent(tokenless_config, "--listen", "0.0.0.0", env={"SNAPCTL_AGENT_TOKEN": "t" * 32})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"snapctl-agent: error: refusing to listen on 0.0.0.0 without a token (hint: set token_file in "
        f"{tokenless_config} or pass --token-file FILE)"
    ]
