"""What goes where: with `-o json`, one document on stdout and the run's progress and warnings on
stderr, as README "Commands" says (a cron job's `-o json 2>>backup.log` keeps what the run did);
text into a pipe or a log is lines without the console's padding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from snapctl.errors import ExitCode
from tests.status.conftest import load, record_run, sqlite_nodes, write_inventory

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def snapctl_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a new interpreter, with a last line on stderr saying whether rich was loaded."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('RICH LOADED', 'rich' in sys.modules, file=sys.stderr))\n"
            f"sys.argv = ['snapctl', *{list(args)!r}]\n"
            "from snapctl.cli import main\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "XDG_STATE_HOME": str(cwd / "state")}, check=False)


def test_with_json_output_a_backups_progress_goes_to_stderr_and_stdout_stays_one_document(tmp_path):
    # `-o json` wrote nothing at all on stderr: a backup from cron with `2>>backup.log` logged
    # nothing of its run, though README says progress goes there.
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 2))

    result = snapctl_in_process("backup", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)

    assert result.returncode == ExitCode.OK, result.stderr
    [document] = [json.loads(line) for line in result.stdout.splitlines()]
    run_id = document["data"]["run_id"]
    *progress, loaded = result.stderr.splitlines()
    assert loaded == "RICH LOADED False"  # the lines need none of rich's rendering: -o json still never loads it
    assert progress and all(STAMP.match(line) for line in progress), progress
    said = [STAMP.sub("", line) for line in progress]
    assert "preflight: checking 2 agents" in said
    assert {"  n1: held", "  n2: held"} <= set(said)
    assert said[-1] == f"run {run_id} succeeded"


def test_with_json_output_a_warning_is_on_stderr_as_well_as_in_the_document(tmp_path):
    # A manifest that cannot be read was said on stderr by `list`, but only in the document by
    # `list -o json`: a cron job logging stderr never heard of it.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=120)
    record_run(inventory, "r-damaged", "succeeded", age_s=60)
    (tmp_path / "catalog" / "st" / "manifests" / "r-damaged.json").write_text("{ not json")

    listed = snapctl_in_process("list", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)

    assert listed.returncode == ExitCode.OK, listed.stderr
    [document] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert document["data"]["problems"] == ["run r-damaged: not valid JSON"]
    assert listed.stderr.splitlines() == ["warning: run r-damaged: not valid JSON", "RICH LOADED False"]


def test_with_json_output_prunes_warnings_are_on_stderr_as_in_text(tmp_path):
    # `prune` said a manifest it could not read on stderr, `prune -o json` only in the document.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=120)
    record_run(inventory, "r-damaged", "succeeded", age_s=60)
    (tmp_path / "catalog" / "st" / "manifests" / "r-damaged.json").write_text("{ not json")

    text = snapctl_in_process("prune", "-i", "inventory.yaml", cwd=tmp_path)
    pruned = snapctl_in_process("prune", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)

    assert pruned.returncode == text.returncode == ExitCode.OK, pruned.stderr
    [document] = [json.loads(line) for line in pruned.stdout.splitlines()]
    assert document["data"]["problems"] == ["run r-damaged: not valid JSON"]
    warned = "warning: run r-damaged: not valid JSON (left alone)"
    assert pruned.stderr.splitlines() == [warned, "RICH LOADED False"]
    assert text.stderr.splitlines() == [warned, "RICH LOADED True"]


def test_with_json_output_a_verify_that_fails_says_why_on_stderr(tmp_path):
    # `verify -o json` exiting 7 wrote nothing on stderr: `verify -o json 2>>verify.log` from cron
    # logged nothing of why.
    import shutil

    write_inventory(tmp_path, sqlite_nodes(tmp_path, 2))
    backup = snapctl_in_process("backup", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)
    assert backup.returncode == ExitCode.OK, backup.stderr
    run_id = json.loads(backup.stdout)["data"]["run_id"]

    whole = snapctl_in_process("verify", run_id, "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)
    assert whole.returncode == ExitCode.OK and whole.stderr.splitlines() == ["RICH LOADED False"]

    [gone] = (tmp_path / "snapshots").glob(f"*/n2/{run_id}-n2-*")
    shutil.rmtree(gone)
    failed = snapctl_in_process("verify", run_id, "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)

    assert failed.returncode == ExitCode.VERIFY_MISMATCH, failed.stderr
    assert json.loads(failed.stdout)["data"]["ok"] is False
    assert failed.stderr.splitlines() == [f"n2/data: snapshot {gone.name} no longer exists",
                                          f"verify: run {run_id}: the run cannot be restored as recorded",
                                          "RICH LOADED False"]


def test_text_into_a_pipe_has_no_trailing_spaces_and_its_columns_stay_aligned(tmp_path):
    # `snapctl list | awk '{print length}'` gave lines padded with spaces to the table's width
    # (124 characters for a run list with one error, mostly blank): rich pads every cell.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 2)))
    record_run(inventory, "r-good", "succeeded", age_s=120)
    record_run(inventory, "r-broken-with-a-longer-id", "failed", age_s=60, error="node n2: prepare did not answer")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("COLUMNS", None)

    for command in ("list", "status", "show"):
        args = [command, "-i", "inventory.yaml"] + (["r-good"] if command == "show" else [])
        result = subprocess.run([sys.executable, "-m", "snapctl.cli", *args], capture_output=True, text=True,
                                cwd=tmp_path, env=env, timeout=120, check=False)
        assert result.stdout.strip(), (command, result.stderr)
        padded = [line for line in result.stdout.splitlines() if line != line.rstrip()]
        assert not padded, (command, padded)

    listed = subprocess.run([sys.executable, "-m", "snapctl.cli", "list", "-i", "inventory.yaml"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=60, check=False).stdout.splitlines()
    header = next(line for line in listed if line.lstrip().startswith("run "))
    good = next(line for line in listed if line.lstrip().startswith("r-good "))
    failed = next(line for line in listed if line.lstrip().startswith("r-broken-with-a-longer-id "))
    assert good.index("succeeded") == failed.index("failed") == header.index("status"), listed
    assert failed.index("node n2: prepare did not answer") == header.index("error"), listed


def test_spaces_a_write_ends_in_are_kept_when_more_of_the_line_follows(capsys):
    from snapctl.render import _PipedLines

    piped = _PipedLines()
    for part in ("n1  ", "ok   ", "\nn2   \n", "  n3", "   "):
        piped.write(part)
    piped.flush()
    assert capsys.readouterr().out == "n1  ok\nn2\n  n3"
