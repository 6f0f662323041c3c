"""The CI workflow's drill step cancelled as GitHub's runner cancels a job: the step's `run:` text,
read from deploy/ci/nightly-drill.yml, run as the runner runs it (`bash --noprofile --norc -eo
pipefail FILE`), with SIGINT sent to that shell's pid alone while the drill runs. The drill must
get it, tear down, write its JUnit report and exit 130."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import yaml

from snapctl.errors import ExitCode
from tests.e2e.conftest import REPO, THIRD_PARTY

WORKFLOW = REPO / "deploy" / "ci" / "nightly-drill.yml"

# The real CLI, with one step of the drill held until the drill is told to stop: the signal then
# lands while the drill runs on any machine. Not told within HOLD_S (the signal never reached it),
# the drill goes on and passes.
HOLD_S = 30
_SNAPCTL = """#!{python}
import os, sys, time

sys.path[:0] = {paths!r}
import snapctl.drill as drill
from snapctl.cli import main

original = drill._step


def held(run, node, phase, detail=None):
    if phase == "restoring":
        try:
            os.close(os.open({marker!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL))  # the drill runs now
        except FileExistsError:
            pass
        deadline = time.monotonic() + {hold}
        while not run.cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
    return original(run, node, phase, detail)


drill._step = held
sys.argv[0] = "snapctl"
sys.exit(main())
"""


def drill_step_script() -> str:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["drill"]["steps"]
    [step] = [s for s in steps if "snapctl drill" in s.get("run", "")]
    return step["run"]


@contextlib.contextmanager
def sigint_at_its_default_in_children() -> Iterator[None]:
    """The runner starts a step with SIGINT at its default. A pytest started in the background of a
    script ignores it, and an ignored signal stays ignored across exec; a handler is reset by it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_cancelled_jobs_sigint_to_the_steps_shell_reaches_the_drill_which_tears_down_and_reports(cluster,
                                                                                                  tmp_path):
    backup = cluster.snapctl("backup")
    assert backup.returncode == 0, backup.stderr
    scratch = tmp_path / "scratch"
    cluster.write_inventory(drill={"scratch_dir": str(scratch)})

    bin_dir, workspace, marker = tmp_path / "bin", tmp_path / "workspace", tmp_path / "drill-running"
    bin_dir.mkdir()
    workspace.mkdir()
    snapctl = bin_dir / "snapctl"
    snapctl.write_text(_SNAPCTL.format(python=sys.executable, paths=[str(THIRD_PARTY), str(REPO)],
                                       marker=str(marker), hold=HOLD_S))
    snapctl.chmod(0o755)
    step = tmp_path / "step.sh"  # the runner writes the run: text to a file, as here
    step.write_text(drill_step_script())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SNAPCTL_INVENTORY": str(cluster.inventory)}
    env.pop("SNAPCTL_AGENT_TOKEN", None)

    with (open(tmp_path / "step.out", "wb") as out, open(tmp_path / "step.err", "wb") as err,
          sigint_at_its_default_in_children()):
        shell = subprocess.Popen(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(step)], cwd=workspace,
                                 env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and shell.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), (tmp_path / "step.err").read_text()
        os.kill(shell.pid, signal.SIGINT)  # the shell's pid only, not its process group
        returncode = shell.wait(timeout=120)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    said = (tmp_path / "step.err").read_text()

    assert returncode == ExitCode.INTERRUPTED, said
    assert "teardown: stopping scratch engines, removing restored data" in said
    assert not any(scratch.iterdir()), "restored data and scratch engines are gone"
    report = workspace / "reports" / "drill.xml"
    cases = {case.get("name"): case for case in ET.parse(report).getroot().iter("testcase")}
    assert set(cases) == {"node node1 (sqlite)", "node node2 (sqlite)", "node node3 (sqlite)", "cluster e2e"}
    for name, case in cases.items():
        error = case.find("error")
        assert error is not None and "interrupted (SIGINT)" in error.get("message"), name
