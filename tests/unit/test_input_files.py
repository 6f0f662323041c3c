"""Files snapctl reads whole (the inventory, a token file) must be regular files of a bounded size:
a FIFO blocked every command until someone wrote to it, /dev/zero as ``-i`` ate memory until the
OOM killer came. Each is refused in one line, exit 2, with a hint. Run as real processes, their
address space capped: without the check, /dev/zero would take the test's machine down with it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from snapctl.input_files import MAX_CONFIG_BYTES

INVENTORY = """\
cluster: c
provider: {type: local, store: store}
catalog: {path: catalog}
nodes:
  - {name: n1, agent: "http://127.0.0.1:9", volumes: [{name: data, path: data}]}
"""


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))


def snapctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SNAPCTL_INVENTORY", "SNAPCTL_AGENT_TOKEN")}
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**env, "XDG_STATE_HOME": str(cwd / "state")}, preexec_fn=capped,
                          check=False)


def refused(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.strip().splitlines()
    assert hint.startswith("  hint: ")
    return error, hint


@pytest.mark.parametrize("command", [["list"], ["status"], ["demo", "down"]])
def test_a_fifo_as_the_inventory_is_refused_not_waited_on(tmp_path, command):
    fifo = tmp_path / "inventory.yaml"
    os.mkfifo(fifo)

    error, hint = refused(snapctl(tmp_path, *command, "-i", str(fifo)))

    assert error == f"snapctl: error: {fifo}: cannot read inventory: is a FIFO (named pipe), not a regular file"
    assert "regular file" in hint


def test_dev_zero_as_the_inventory_is_refused_not_read_until_memory_runs_out(tmp_path):
    error, _ = refused(snapctl(tmp_path, "status", "-i", "/dev/zero"))
    assert error == "snapctl: error: /dev/zero: cannot read inventory: is a character device, not a regular file"


def test_an_inventory_past_the_size_limit_is_refused(tmp_path):
    big = tmp_path / "inventory.yaml"
    big.write_text(INVENTORY + ("# " + "x" * 98 + "\n") * (MAX_CONFIG_BYTES // 100 + 1))

    error, hint = refused(snapctl(tmp_path, "list", "-i", str(big)))

    assert error == f"snapctl: error: {big}: cannot read inventory: is larger than 4 MiB, the most an inventory may be"
    assert hint == f"  hint: check that {big} is an inventory"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_token_file_that_is_no_regular_file_is_refused(tmp_path, kind):
    token = tmp_path / "agent.token"
    if kind == "fifo":
        os.mkfifo(token)
    else:
        token.symlink_to("/dev/zero")  # after the symlink: what it names is what is read
    (tmp_path / "inventory.yaml").write_text(INVENTORY + "auth: {token_file: agent.token}\n")

    error, _ = refused(snapctl(tmp_path, "status", "-i", "inventory.yaml"))

    what = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert error == (f"snapctl: error: inventory.yaml: cannot read auth.token_file {token}: is {what}, "
                     "not a regular file")


def test_a_ca_file_on_a_fifo_is_refused_not_waited_on(tmp_path):
    # ssl would open it and wait for a writer; SIGTERM did not end that wait either.
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    (tmp_path / "agent.token").write_text("t" * 32 + "\n")
    (tmp_path / "agent.token").chmod(0o600)
    inventory = INVENTORY.replace("http://", "https://") + "auth: {token_file: agent.token, ca_file: ca.pem}\n"
    (tmp_path / "inventory.yaml").write_text(inventory)

    error, _ = refused(snapctl(tmp_path, "status", "-i", "inventory.yaml"))

    assert error == (f"snapctl: error: inventory.yaml: cannot read auth.ca_file {fifo}: is a FIFO (named pipe), "
                     "not a regular file")
