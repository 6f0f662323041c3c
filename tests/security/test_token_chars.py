"""A token that cannot go in an Authorization header as it is (beyond printable ASCII) is refused
where it is read, by snapctl and by the agent, in one line that does not repeat it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.harness import AGENT_BIN, create_db

TOKEN = "t\u00f6ken-\u20ac-9f8e7d6c"  # ö is latin-1 (sent, then never matched), € is not (never sent)


def test_snapctl_refuses_a_token_it_could_not_send(tmp_path: Path) -> None:
    # Before: `UnicodeEncodeError: 'latin-1' codec can't encode character` and a traceback, from
    # the transport, on every command that spoke to an agent.
    (tmp_path / "cluster.token").write_text(TOKEN + "\n")
    (tmp_path / "cluster.token").chmod(0o600)
    (tmp_path / "data").mkdir()
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(f"cluster: c\nprovider: {{type: local, store: {tmp_path / 'store'}}}\n"
                         f"catalog: {{path: {tmp_path / 'catalog'}}}\nauth: {{token_file: cluster.token}}\n"
                         "nodes:\n  - {name: n1, agent: 'http://127.0.0.1:9', "
                         f"volumes: [{{name: d, path: {tmp_path / 'data'}}}]}}\n")
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "backup", "-i", str(inventory)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"snapctl: error: {inventory}: auth.token_file {tmp_path / 'cluster.token'} holds a character a bearer token "
        "cannot carry (printable ASCII only)",
        "  hint: generate one that is, e.g. (umask 077 && openssl rand -hex 32 > FILE)"]


@pytest.mark.parametrize("source", ["file", "env"])
def test_the_agent_refuses_a_token_no_client_could_send_at_start(tmp_path: Path, source: str) -> None:
    # Before: it started, and answered every request with 401, the right token's included.
    create_db(tmp_path / "db.sqlite")
    config = tmp_path / "agent.yaml"
    env = {k: v for k, v in os.environ.items() if k != "SNAPCTL_AGENT_TOKEN"}
    text = "node: n1\nport: 0\nengine: {type: sqlite, path: db.sqlite}\n"
    if source == "file":
        (tmp_path / "agent.token").write_text(TOKEN + "\n")
        (tmp_path / "agent.token").chmod(0o600)
        text += "token_file: agent.token\n"
        said = f"{config}: token_file {tmp_path / 'agent.token'} holds"
    else:
        env["SNAPCTL_AGENT_TOKEN"] = TOKEN
        said = "$SNAPCTL_AGENT_TOKEN holds"
    config.write_text(text)
    try:
        result = subprocess.run([str(AGENT_BIN), "--config", str(config)], capture_output=True, text=True,
                                timeout=20, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent started, serving a token no client can send")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"snapctl-agent: error: {said} a character a bearer token cannot carry (printable ASCII only) "
        "(hint: generate one that is, e.g. (umask 077 && openssl rand -hex 32 > FILE))"]
