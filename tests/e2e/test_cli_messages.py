"""What the command line says of bad input is one line and its hint, whatever the input holds: a
usage error as every other error, a control character escaped, a long value cut."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from snapctl.errors import ExitCode

INVENTORY = ("cluster: c\nprovider: {type: local, store: snaps}\n"
             "nodes:\n  - name: n1\n    agent: http://127.0.0.1:7701\n    volumes: [data]\n")


def snapctl(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=60, check=False)


@pytest.mark.parametrize(("argv", "error", "hint"), [
    # The number flags' own parser (snapctl/cli_numbers.py) says what it wants, with an example.
    (["list", "--limit", "x"], "--limit x: give a number of runs, or 0 for every run", "e.g. --limit 20"),
    (["status", "-w", "x"], "--watch x: the interval must be a number of seconds more than zero",
     "e.g. --watch 5, or a bare --watch for every 2 seconds"),
    (["trigger", "--timeout", ""], "--timeout '': the timeout must be a number of seconds more than zero",
     "e.g. --timeout 600 (the default)"),
    # click's own usage errors, with a hint to the command's help.
    (["show"], "missing argument 'RUN'", "show"),
    (["show", "latest", "extra"], "got unexpected extra argument(s) (extra)", "show"),
    (["demo", "bogus"], "no such command 'bogus'", "demo"),
], ids=["list-limit", "status-watch", "trigger-timeout", "show-no-run", "show-two-runs", "demo-bogus"])
@pytest.mark.parametrize("output", ["text", "json"])
def test_a_usage_error_is_one_lowercase_line_and_a_hint_in_both_outputs(argv, error, hint, output):
    # click said "Usage: ...", "Try '... --help' for help.", "", "Error: Invalid value ...": three
    # lines, capitalised, no hint; with -o json the document was right but stderr had click's block.
    result = snapctl(*argv, *(["-o", "json"] if output == "json" else []))
    assert result.returncode == ExitCode.BAD_INPUT
    if " " not in hint:  # a command's name: the hint points at its help
        hint = f"see `python -m snapctl.cli {hint} --help`"  # click's name for a `python -m` program
    assert result.stderr.splitlines() == [f"snapctl: error: {error}", f"  hint: {hint}"]
    if output == "json":
        assert json.loads(result.stdout) == {"schema_version": 1, "error": error, "hint": hint, "exit_code": 2}
    else:
        assert result.stdout == ""


@pytest.mark.parametrize("argv", [["--help"], ["list", "--help"], ["demo"]], ids=" ".join)
def test_help_is_still_clicks_own(argv):
    result = snapctl(*argv)
    shown = result.stdout + result.stderr
    assert shown.startswith("Usage: ") and "Options:" in shown and "error" not in shown


def test_trigger_and_no_trigger_together_are_refused(tmp_path):
    # click lets the last of the pair win: a wrapper's --trigger and the operator's --no-trigger
    # went on as one of them, without a word.
    (tmp_path / "inv.yaml").write_text(INVENTORY)
    result = snapctl("backup", "--dry-run", "--trigger", "--no-trigger", "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    assert result.stderr.splitlines() == ["snapctl: error: --trigger and --no-trigger together: give one of them",
                                          "  hint: keep only the one you mean: --trigger or --no-trigger"]


def test_a_control_character_in_the_inventory_path_is_escaped_in_the_one_line(tmp_path):
    result = snapctl("list", "-i", "inv\nentory.yaml", "-o", "json", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    error = f"inv\\nentory.yaml: inventory file not found in {tmp_path}"
    assert json.loads(result.stdout)["error"] == error  # no newline for a script that prints it
    assert result.stderr.splitlines()[0] == f"snapctl: error: {error}"
    assert len(result.stderr.splitlines()) == 2  # and its hint


def test_an_escape_sequence_in_snapctl_inventory_is_not_sent_to_the_terminal(tmp_path):
    result = snapctl("status", cwd=tmp_path, env={"SNAPCTL_INVENTORY": "/tmp/\x1b[31mx.yaml"})
    assert result.returncode == ExitCode.BAD_INPUT
    assert "\x1b" not in result.stderr
    assert result.stderr.splitlines()[0] == ("snapctl: error: /tmp/\\x1b[31mx.yaml: inventory file not found "
                                             "(from $SNAPCTL_INVENTORY)")


@pytest.mark.parametrize("command", ["show", "verify"])
def test_a_long_run_id_is_cut_where_it_is_echoed(tmp_path, command):
    # `snapctl show <100000 characters>` repeated all 100 KB in its error.
    (tmp_path / "inv.yaml").write_text(INVENTORY)
    result = snapctl(command, "a" * 100_000, "-i", "inv.yaml", "-o", "json", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    error = json.loads(result.stdout)["error"]
    assert error.startswith(f"no run of cluster c matches '{'a' * 79}…' in the catalog at "), error
    assert len(result.stderr) < 1000
