"""The agent refuses to listen beyond loopback without a token, and says how to set one. (Only the
refusals run for real: a test never binds anything but 127.0.0.1. The addresses refused are
documentation ones no host here has (TEST-NET, 2001:db8::/32): were a refusal gone, binding would
fail, not listen beyond loopback. A name would cost a DNS query then, so names, and the wildcards
0.0.0.0 and ::, are shown to take the same path by `is_loopback` below.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from node_agent.main import is_loopback
from tests.agent.conftest import agent_process, make_db, write_config
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
    ("192.0.2.1", {}),
    ("2001:db8::1", {}),
    ("198.51.100.2", {"SNAPCTL_AGENT_TOKEN": "   "}),  # a blank variable is no token
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
    tokenless_config.write_text(tokenless_config.read_text() + "listen: 192.0.2.1\n")
    result = start_agent(tokenless_config)
    assert result.returncode == 2 and "refusing to listen on 192.0.2.1 without a token" in result.stderr


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("db-1", False), ("", False),
    # A name other than localhost may resolve to anything, even one that reads like a loopback address.
    ("db-1.example.invalid", False), ("127.0.0.1.example.invalid", False), ("localhost.example.invalid", False),
])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_with_token_env_null_the_hint_names_no_variable(tokenless_config: Path) -> None:
    # It said "or set $None".
    tokenless_config.write_text(tokenless_config.read_text() + "token_env: null\n")
    result = start_agent(tokenless_config, "--listen", "192.0.2.1", env={"SNAPCTL_AGENT_TOKEN": "t" * 32})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"snapctl-agent: error: refusing to listen on 192.0.2.1 without a token (hint: set token_file in "
        f"{tokenless_config} or pass --token-file FILE)"
    ]


def test_a_short_token_is_refused_beyond_loopback_and_warned_about_on_it(tmp_path: Path,
                                                                        tokenless_config: Path) -> None:
    # Nothing refused a one-character token, even on 0.0.0.0: guessed within the first burst.
    short = tmp_path / "short.token"
    short.write_text("abc123def456ghi\n")  # 15 characters
    short.chmod(0o600)
    result = start_agent(tokenless_config, "--listen", "192.0.2.10", "--token-file", str(short))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"snapctl-agent: error: {tokenless_config}: token_file {short} holds a token shorter than 16 characters: "
        f"refusing to listen on 192.0.2.10 with a token that short (hint: generate a long random one: "
        f"(umask 077 && openssl rand -hex 32 > {short}))"
    ]
    result = start_agent(tokenless_config, "--listen", "198.51.100.7", env={"SNAPCTL_AGENT_TOKEN": "x"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "snapctl-agent: error: $SNAPCTL_AGENT_TOKEN holds a token shorter than 16 characters: refusing to listen "
        "on 198.51.100.7 with a token that short (hint: generate a long random one: set $SNAPCTL_AGENT_TOKEN to "
        "the output of openssl rand -hex 32)"
    ]
    assert "listening on" not in result.stdout + result.stderr
    # On loopback it starts, and says so once; 16 characters pass.
    for token, warned in (("abc123def456ghi", True), ("abc123def456ghij", False)):
        home = tmp_path / f"len-{len(token)}"
        home.mkdir()
        config = write_config(home, make_db(home / "data.db"), token=token)
        with agent_process(config) as agent:
            assert httpx.get(agent.url + "/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        warnings = [line.split(" WARNING snapctl.agent: ", 1)[1] for line in agent.log.splitlines() if " WARNING " in line]
        assert warnings == ([
            f"{config}: token_file {home / 'agent.token'} holds a token shorter than 16 characters, which any local "
            "user could guess (the rate limit only slows guessing down); generate a long random one: "
            f"(umask 077 && openssl rand -hex 32 > {home / 'agent.token'})"] if warned else [])
        assert token not in agent.log


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_an_engine_url_with_a_password_in_an_open_config_is_warned_about(tmp_path: Path, mode: int,
                                                                         warned: bool) -> None:
    # QuestDB and AresDB take their basic-auth credentials in the URL, and have no password_file:
    # the config then holds a database password, and must be the agent's user's alone.
    from tests.fakes.questdb import FakeQuestDB

    (tmp_path / "qdb").mkdir()
    with FakeQuestDB() as questdb:
        url = questdb.url.replace("http://", "http://admin:s3cret-quest@")
        config = tmp_path / "agent.yaml"
        config.write_text(f"node: n1\nengine: {{type: questdb, root: qdb, url: '{url}'}}\n")
        config.chmod(mode)
        with agent_process(config) as agent:
            log = agent.log
    said = (f"{config}: engine.url carries a password, and this file is readable by "
            f"{'its group and other users' if mode & 0o004 else 'its group'} (mode {mode:04o}); chmod 600 {config} "
            "so that only the agent's user can read it")
    assert (said in log) is warned, log
    assert "s3cret-quest" not in log
