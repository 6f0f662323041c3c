"""Ctrl-C before the command itself begins: while its modules load, and while typer parses the
command line. Each program sends itself a real SIGINT at that point, through the console script's
own entry function."""

import json
import subprocess
import sys

import pytest

from snapctl.entry import asks_for_json
from snapctl.errors import ExitCode
from tests.conftest import with_ctrl_c

# argv: WHEN ENTRY SNAPCTL-ARGS...; a SIGINT arrives while the modules load, or as typer parses.
_PROGRAM = """
import os, signal, sys

import snapctl.entry as entry

when, which, *args = sys.argv[1:]
sys.argv = [which, *args]


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


if when == "loading":
    load = entry._cli_main if which == "snapctl" else entry._agent_main
    def loading():
        ctrl_c()
        return load()
    entry._cli_main = entry._agent_main = loading
else:  # inside typer's parsing of the command line, whose own answer to Ctrl-C was a silent 130
    import typer.core
    parse_args = typer.core.TyperGroup.parse_args
    def parsing(self, ctx, args):
        ctrl_c()
        return parse_args(self, ctx, args)
    typer.core.TyperGroup.parse_args = parsing
getattr(entry, which.replace("-", "_"))()
"""


def _run(when: str, which: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(with_ctrl_c([sys.executable, "-c", _PROGRAM, when, which, *args]), check=False,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("when", ["loading", "parsing"])
def test_ctrl_c_before_the_command_begins_ends_it_as_interrupted(when, tmp_path):
    result = _run(when, "snapctl", "status", "-i", "missing.yaml", tmp_path=tmp_path)
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    # Stopped before the command read anything: not "inventory file not found".
    assert result.stderr.strip().splitlines() == ["snapctl: error: interrupted (SIGINT)"]
    assert result.stdout == ""


@pytest.mark.parametrize("when", ["loading", "parsing"])
def test_ctrl_c_before_the_command_begins_still_gives_a_json_document(when, tmp_path):
    result = _run(when, "snapctl", "list", "-o", "json", "-i", "missing.yaml", tmp_path=tmp_path)
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    document = json.loads(result.stdout)
    assert document["error"] == "interrupted (SIGINT)"
    assert document["exit_code"] == ExitCode.INTERRUPTED


def test_ctrl_c_while_help_is_parsed_is_reported_after_it(tmp_path):
    result = _run("parsing", "snapctl", "--help", tmp_path=tmp_path)
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert "Usage: snapctl" in result.stdout
    assert result.stderr.strip() == "snapctl: error: interrupted (SIGINT)"


def test_ctrl_c_while_a_usage_error_is_parsed_leaves_one_json_document(tmp_path):
    result = _run("parsing", "snapctl", "list", "--no-such-flag", "-o", "json", tmp_path=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    document = json.loads(result.stdout)  # one document: json.loads refuses a second
    assert "no-such-flag" in document["error"]


def test_ctrl_c_while_the_agent_loads_ends_it_before_it_reads_its_config(tmp_path):
    result = _run("loading", "snapctl-agent", "--config", "missing.yaml", tmp_path=tmp_path)
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert result.stderr.strip() == "snapctl-agent: error: interrupted (SIGINT)"


def test_without_a_ctrl_c_the_command_runs_and_ctrl_c_is_python_s_again(tmp_path):
    program = ("import signal, sys, snapctl.entry as entry; sys.argv = ['snapctl', 'list', '-i', 'missing.yaml']\n"
               "try:\n    entry.snapctl()\nexcept SystemExit as exc:\n"
               "    print(exc.code, signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    result = subprocess.run(with_ctrl_c([sys.executable, "-c", program]), check=False, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.stdout.split() == [str(int(ExitCode.BAD_INPUT)), "True"], result.stderr
    assert "inventory file not found" in result.stderr


@pytest.mark.parametrize(("argv", "asked"), [
    (["list", "-o", "json"], True),
    (["list", "--output=json"], True),
    (["list", "-ojson"], True),
    (["list", "-o", "json", "-o", "text"], False),
    (["list"], False),
    (["list", "-o"], False),
])
def test_asks_for_json_reads_the_last_output_option(argv, asked):
    assert asks_for_json(argv) is asked
