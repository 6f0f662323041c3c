"""deploy/: the systemd units verify, and every snapctl command in the units, the crontab and the
CI workflow parses with the real CLI (so a renamed flag breaks this test, not a night's backup)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from node_agent.engines.tarantool import TarantoolSettings
from snapctl.cli import app
from snapctl.policy import Policy

try:  # typer 0.28 builds its commands on its own copy of click; older ones on click itself
    from typer._click.exceptions import NoSuchOption
except ImportError:
    from click.exceptions import NoSuchOption

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALLED = "/opt/snapctl/bin/"
# `snapctl` and its words, up to a shell operator or a redirection such as `2>&1`.
SNAPCTL_CALL = re.compile(r"(?<![\w/.-])snapctl(?:[ \t]+(?!\d*[<>])[^\s|;&()<>]+)*")


def parses(command: str) -> list[str]:
    """Parse a `snapctl ...` command line with the CLI's own parser, without running it."""
    argv = shlex.split(command)
    assert Path(argv[0]).name == "snapctl", command
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="snapctl")
    command_obj = group.get_command(ctx, argv[1])
    assert command_obj is not None, f"no snapctl command {argv[1]!r}: {command}"
    command_obj.make_context(argv[1], argv[2:], parent=ctx)  # raises click's UsageError on a bad flag
    return argv[1:]


def snapctl_run(step: dict) -> str | None:
    """A workflow step's `run:` text when it runs snapctl, without the `exec` it may start with."""
    run = step.get("run", "")
    run = run.removeprefix("exec ")
    return run if run.startswith("snapctl ") else None


def unit_value(unit: Path, key: str) -> str:
    return next(line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(f"{key}="))


def test_units_verify_with_systemd(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    bin_dir = Path(shutil.which("snapctl", path=str(REPO / ".venv" / "bin")) or "").parent
    for unit in [*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")]:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, f"{bin_dir}/"))
    result = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_backup_unit_and_timer_fit_together() -> None:
    service = DEPLOY / "snapctl-backup.service"
    assert parses(unit_value(service, "ExecStart")) == ["backup"]
    assert unit_value(service, "SuccessExitStatus") == "4"  # the lock's refusal (ExitCode.LOCK_HELD)
    assert unit_value(DEPLOY / "snapctl-backup.timer", "Unit") == service.name
    agent = unit_value(DEPLOY / "snapctl-agent.service", "ExecStart")
    assert shlex.split(agent)[:2] == [f"{INSTALLED}snapctl-agent", "--config"]


def test_the_agent_unit_waits_out_a_tarantool_snapshot_before_it_kills_the_agent() -> None:
    # On SIGTERM the agent waits for the prepare under way, then releases what it made. systemd's
    # SIGKILL at 60 s came in the middle of a box.snapshot() (up to snapshot_timeout_s), and the
    # server pinned its checkpoint after the agent had died, with no one left to release it.
    tarantool = TarantoolSettings(work_dir="/var/lib/tarantool")
    stop = unit_value(DEPLOY / "snapctl-agent.service", "TimeoutStopSec")
    assert stop.endswith("s") and stop[:-1].isdigit(), stop
    assert int(stop[:-1]) >= tarantool.snapshot_timeout_s + tarantool.timeout_s + 60


def test_the_backup_unit_lets_the_rollback_wait_out_the_create_calls_before_it_kills_the_run() -> None:
    # Stopped mid-run, the rollback waits up to snapshot_timeout_s for create calls in flight, then
    # deletes what they made. At TimeoutStopSec=120s (the default wait) systemd's SIGKILL came first:
    # orphan snapshots, and the run's manifest left `running`.
    stop = unit_value(DEPLOY / "snapctl-backup.service", "TimeoutStopSec")
    assert stop.endswith("s") and stop[:-1].isdigit(), stop
    assert int(stop[:-1]) >= Policy().snapshot_timeout_s + 120


def test_every_crontab_job_parses() -> None:
    jobs = [line for line in (DEPLOY / "crontab.example").read_text().splitlines()
            if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    commands = []
    for job in jobs:
        fields = job.split(None, 6)
        assert len(fields) == 7 and fields[5] == "snapctl", job  # m h dom mon dow user command
        commands += [parses(call) for call in SNAPCTL_CALL.findall(fields[6])]
    assert ["backup"] in commands and ["gc"] in commands


def test_the_ci_workflow_runs_a_drill_and_uploads_its_report() -> None:
    workflow = yaml.safe_load((DEPLOY / "ci" / "nightly-drill.yml").read_text())
    steps = workflow["jobs"]["drill"]["steps"]
    drill = [parses(run) for s in steps if (run := snapctl_run(s)) and run.startswith("snapctl drill")]
    assert len(drill) == 1 and drill[0][:2] == ["drill", "latest"]
    report = drill[0][drill[0].index("--junit") + 1]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == report and upload["if"] == "always()"
    status = next(run for s in steps if (run := snapctl_run(s)) and run.startswith("snapctl status"))
    assert parses(status.split("||")[0])
    with pytest.raises(NoSuchOption, match="No such option: --no-such-flag"):
        parses("snapctl drill latest --no-such-flag")  # the parser really checks


def test_the_docs_list_every_action_line_of_the_ci_workflow_to_pin_by_sha() -> None:
    # The workflow keeps movable tags (no SHA can be looked up for it here): the operator pins them,
    # and docs/scheduling.md lists the exact lines to change, which must be the workflow's.
    workflow = (DEPLOY / "ci" / "nightly-drill.yml").read_text()
    uses = [line for line in workflow.splitlines() if line.lstrip().startswith(("uses:", "- uses:"))]
    assert len(uses) == 5
    docs = (REPO / "docs" / "scheduling.md").read_text()
    block = docs.split("each to the form `uses: OWNER/ACTION@<40-hex commit SHA> # vX.Y.Z`:\n\n```\n", 1)[1]
    assert block.split("\n```", 1)[0].splitlines() == uses


def test_the_ci_workflow_gives_the_agent_token_only_to_the_steps_that_run_snapctl() -> None:
    # At job level it reached pip's build of the checkout and every action of the job (a third
    # party's among them, under a movable tag).
    workflow = yaml.safe_load((DEPLOY / "ci" / "nightly-drill.yml").read_text())
    job = workflow["jobs"]["drill"]
    assert "SNAPCTL_AGENT_TOKEN" not in {**workflow.get("env", {}), **job.get("env", {})}
    given = [s.get("run", s.get("uses")) for s in job["steps"] if "SNAPCTL_AGENT_TOKEN" in s.get("env", {})]
    assert given and all(snapctl_run({"run": run}) for run in given), given
    snapctl_steps = [s["run"] for s in job["steps"] if snapctl_run(s)]
    assert given == snapctl_steps



def step_runs(condition: str, *, failed: bool = False, cancelled: bool = False,
              outcomes: dict[str, str] | None = None) -> bool:
    """GitHub's verdict on a step's `if:`, for the expressions a workflow here uses: ``failed``,
    an earlier step failed; ``cancelled``, the job was cancelled; ``outcomes``, earlier steps' by id."""
    expression = condition.strip().removeprefix("${{").removesuffix("}}")
    if not re.search(r"\b(success|failure|cancelled|always)\(\)", expression):
        expression = f"success() && ({expression})"  # as GitHub adds it
    python = re.sub(r"steps\.([\w-]+)\.outcome", lambda m: repr((outcomes or {}).get(m[1], "skipped")), expression)
    python = re.sub(r"!(?!=)", " not ", python.replace("&&", " and ").replace("||", " or "))
    functions = {"success": lambda: not failed and not cancelled, "failure": lambda: failed,
                 "cancelled": lambda: cancelled, "always": lambda: True}
    return bool(eval(python, {"__builtins__": {}}, functions))


def test_the_ci_workflow_drills_even_when_the_status_step_failed_on_a_critical_cluster() -> None:
    # The drill restores from snapshots into scratch: it needs neither the agents nor a healthy
    # cluster. It had no `if:`, so status's exit 6 (an agent down, a node held) skipped it on the
    # nights its answer mattered most.
    steps = yaml.safe_load((DEPLOY / "ci" / "nightly-drill.yml").read_text())["jobs"]["drill"]["steps"]
    status = next(s for s in steps if (run := snapctl_run(s)) and run.startswith("snapctl status"))
    drill = next(s for s in steps if (run := snapctl_run(s)) and run.startswith("snapctl drill"))
    status_id = status.get("id", "")
    condition = str(drill.get("if", "success()"))
    assert step_runs(condition)
    assert step_runs(condition, failed=True, outcomes={status_id: "failure"})
    assert not step_runs(condition, failed=True, outcomes={status_id: "skipped"})  # the install failed: no snapctl
    assert not step_runs(condition, cancelled=True, outcomes={status_id: "success"})
    assert not step_runs(condition, failed=True, cancelled=True, outcomes={status_id: "failure"})
    assert step_runs("always()", cancelled=True) and not step_runs("steps.x.outcome == 'success'", failed=True,
                                                                  outcomes={"x": "success"})  # the model itself

@pytest.mark.parametrize(("said", "mailed"), [
    ("no orphaned snapshots of cluster prod: every tagged snapshot has a manifest", False),
    (("2 snapshot(s) of cluster prod that no manifest owns:\n  snap-1  node n1 ...\n"
     "run `snapctl gc --delete` to delete them"), True),
    (("no orphaned snapshots of cluster prod: every tagged snapshot has a manifest\n"
     "1 leftover(s) in the snapshot store of calls that died part-way (no snapshots):\n  /x  node n1"),
     True),
    ("snapctl: error: cannot read the catalog (hint: ...)", True),
])
def test_the_weekly_gc_job_mails_only_when_there_is_something_to_look_at(tmp_path: Path, said: str,
                                                                        mailed: bool) -> None:
    # Cron mails whatever a job prints: the weekly gc mailed "no orphaned snapshots" every week.
    [job] = [line.split(None, 6)[6] for line in (DEPLOY / "crontab.example").read_text().splitlines()
             if not line.startswith("#") and " gc" in line]
    fake = tmp_path / "snapctl"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{said}\nEOF\n")
    fake.chmod(0o755)
    ran = subprocess.run(["/bin/sh", "-c", job], env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10, check=True)
    assert ran.stdout == (said + "\n" if mailed else "")


@pytest.mark.parametrize(("exit_code", "mailed"), [(1, True), (130, True), (4, False), (0, False)])
def test_the_nightly_backup_job_prints_what_cron_mails_on_any_failure_but_the_locks_refusal(
        tmp_path: Path, exit_code: int, mailed: bool) -> None:
    # Cron mails a job's output, never its exit status; all of the backup's output goes to its log,
    # and `|| [ $? -eq 4 ]` changed only the status: a failed backup mailed nothing at all.
    [job] = [line.split(None, 6)[6] for line in (DEPLOY / "crontab.example").read_text().splitlines()
             if not line.startswith("#") and " backup" in line]
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    assert "/var/log/snapctl/" in job
    job = job.replace("/var/log/snapctl/", f"{log_dir}/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "snapctl"
    fake.write_text(f"#!/bin/sh\necho 'run table'\necho 'snapctl: error: it went wrong' >&2\nexit {exit_code}\n")
    fake.chmod(0o755)
    ran = subprocess.run(["/bin/sh", "-c", job], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10, check=False)
    assert "snapctl: error: it went wrong" in (log_dir / "backup.log").read_text()
    if mailed:
        assert f"exit code {exit_code}" in ran.stdout and "snapctl: error: it went wrong" in ran.stdout, ran.stdout
    else:
        assert (ran.stdout, ran.stderr) == ("", "")
