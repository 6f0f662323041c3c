"""The agent's config and token files must be regular files of a bounded size: a FIFO as --config
or token_file kept the agent from starting (nor failing) until someone wrote to it, /dev/zero ended
in MemoryError and a traceback. Each is one line, exit 2. Real agent processes, their address
space capped: without the check /dev/zero would eat the test machine's memory."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
from pathlib import Path

import pytest

from node_agent.engines.base import PasswordFile
from snapctl.errors import EngineError
from tests.agent.certs import make_pki
from tests.agent.conftest import AGENT_BIN, write_config


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPCTL_AGENT_TOKEN": ""}
    return subprocess.run([str(AGENT_BIN), *args], capture_output=True, text=True, timeout=60, env=env,
                          preexec_fn=capped, check=False)


def special(path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


WHAT = {"fifo": "a FIFO (named pipe)", "dev-zero": "a character device"}
HINT = "(hint: name a regular file: it is read whole, and a FIFO or a device may block or never end)"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_config_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    config = special(tmp_path / "agent.yaml", kind)

    result = run_agent("--config", str(config))

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"snapctl-agent: error: {config}: cannot read agent config: is {WHAT[kind]}, not a regular file {HINT}"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_token_file_that_is_no_regular_file_is_refused(tmp_path: Path, db: Path, kind: str) -> None:
    token = special(tmp_path / "fifo.token", kind)
    config = write_config(tmp_path, db, token=None, extra="token_file: fifo.token\n")

    result = run_agent("--config", str(config))

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"snapctl-agent: error: {config}: cannot read token_file {token}: is {WHAT[kind]}, not a regular file {HINT}"]


def test_a_tls_key_file_on_a_fifo_is_refused_not_waited_on(tmp_path: Path, db: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    key = special(tmp_path / "key.fifo", "fifo")
    config = write_config(tmp_path, db, extra=f"tls:\n  cert_file: {pki.server_cert}\n  key_file: {key}\n")

    result = run_agent("--config", str(config))

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"snapctl-agent: error: {config}: cannot read tls.key_file {key}: is a FIFO (named pipe), not a regular file "
        f"{HINT}"]


def test_a_config_past_the_size_limit_is_refused(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    with config.open("a") as out:
        out.write(("# " + "x" * 98 + "\n") * 45_000)

    result = run_agent("--config", str(config))

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"snapctl-agent: error: {config}: cannot read agent config: is larger than 4 MiB, the most an agent config "
        f"may be (hint: check that {config} is an agent config)"]


@pytest.mark.timeout(30)
def test_a_password_file_on_a_fifo_is_an_engine_error_not_a_wait(tmp_path: Path) -> None:
    fifo = special(tmp_path / "password", "fifo")

    with pytest.raises(EngineError) as refused:
        PasswordFile("questdb", fifo, logging.getLogger("test")).read()
    assert refused.value.message == (f"cannot read questdb password file {fifo}: is a FIFO (named pipe), "
                                     "not a regular file")
