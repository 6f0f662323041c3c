"""A state_dir, or a hold record in it, that is not the agent's user's own: refused at start (exit 2,
one line) with nothing in it acted on, also when the agent cannot write that directory, where a
killed agent's record in its own directory is released before the refusal. The record here is
planted: it names the checkpoint another client of the QuestDB /exec fake holds, which must stay
held. Real agent processes, as root in a mount namespace of their own (a read-only state_dir), or
as another user (nobody)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.hold_record import HoldRecords
from tests.agent.conftest import AGENT_BIN, TOKEN
from tests.conftest import free_port
from tests.fakes.questdb import FakeQuestDB

NOBODY = 65534
LONG_AGO, FAR_OFF = "2000-01-01T00:00:00.000000Z", "2100-01-01T00:00:00.000000Z"


@pytest.fixture
def qdb() -> Iterator[FakeQuestDB]:
    with FakeQuestDB() as fake:
        fake.tables["trades"] = 5
        fake.hold_as_someone_else()  # another client's backup, live
        yield fake


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under tmp_path: pytest's directories are 0700, and nobody must reach the config in here.
    top = Path(tempfile.mkdtemp(prefix="sdo-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def agent_config(base: Path, qdb: FakeQuestDB, *, uid: int = 0) -> Path:
    (base / "qdb").mkdir()
    (base / "agent.token").write_text(TOKEN + "\n")
    (base / "agent.token").chmod(0o600)
    if uid:
        for path in (base / "qdb", base / "agent.token"):
            os.chown(path, uid, uid)
    config = base / "agent.yaml"
    config.write_text(f"node: q1\ntoken_file: agent.token\nstate_dir: state\n"
                      f"engine: {{type: questdb, root: qdb, url: '{qdb.url}', timeout_s: 3}}\n")
    return config


def plant(state: Path, base: Path) -> Path:
    """A record where the agent looks for its own, naming whatever checkpoint is held (the create
    'ran' over a century), and the lock file beside it, left by a killed agent as it would be."""
    records = HoldRecords(state, "q1", "questdb", [base / "qdb"])
    records.path.write_text(json.dumps({
        "run_id": "planted", "engine": "questdb", "began_at": LONG_AGO, "lease_expires_at": FAR_OFF,
        "facts": {"created": True, "server_since": None, "verbs": "checkpoint", "create_ran": [LONG_AGO, FAR_OFF]},
        "node": "q1", "paths": records.paths}))
    records.lock_path.write_text("")
    records.lock_path.chmod(0o644)
    return records.path


def run_agent(config: Path, *, uid: int | None = None, read_only: Path | None = None) -> subprocess.CompletedProcess:
    argv = [str(AGENT_BIN), "--config", str(config), "--port", str(free_port())]
    if read_only is not None:  # root writes through any mode: a read-only mount, in a namespace of its own
        remount = f'mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} && exec "$@"'
        argv = ["unshare", "-m", "sh", "-c", remount, "sh", *argv]
    if uid is not None:
        argv = [*as_user(uid), *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SNAPCTL_AGENT_TOKEN": "", "HOME": str(config.parent)})


def as_user(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def need(*, nobody: bool = False, mount_namespace: bool = False) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving files to another user, or a read-only mount of a state_dir, takes root")
    if mount_namespace and subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode:
        pytest.skip("cannot make a mount namespace here (unshare -m)")
    if nobody and (not shutil.which("setpriv") or subprocess.run(
            [*as_user(NOBODY), str(AGENT_BIN), "--version"], capture_output=True, check=False, cwd="/").returncode):
        pytest.skip(f"nobody cannot run {AGENT_BIN} through setpriv (its python under root's home, say)")


def assert_refused(stopped: subprocess.CompletedProcess, line: str, qdb: FakeQuestDB) -> None:
    assert stopped.returncode == 2, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == f"snapctl-agent: error: {line}", stopped.stderr
    assert "Traceback" not in stopped.stderr and "releasing" not in stopped.stderr, stopped.stderr
    assert qdb.held and not [q for q in qdb.queries if "RELEASE" in q], "the other client's checkpoint was released"


@pytest.mark.parametrize("how", ["the agent as nobody, root's 0755", "read-only, nobody's 0755",
                                 "read-only, mode 0777"])
def test_a_record_planted_in_a_state_dir_not_the_agents_own_is_not_acted_on_though_it_cannot_be_written(
        base: Path, qdb: FakeQuestDB, how: str) -> None:
    # The agent cannot write any of these: it released what the planted record named, before its
    # refusal of the directory, as it does for a killed agent's record in a read-only directory of
    # its own. The directory's owner and mode are checked first now.
    need(nobody=how.startswith("the agent as nobody"), mount_namespace=how.startswith("read-only"))
    as_nobody = how.startswith("the agent as nobody")
    config = agent_config(base, qdb, uid=NOBODY if as_nobody else 0)
    state = base / "state"
    state.mkdir(mode=0o755)
    record = plant(state, base)
    if how == "read-only, nobody's 0755":
        os.chown(state, NOBODY, NOBODY)
    elif how == "read-only, mode 0777":
        state.chmod(0o777)
    before = record.read_text()
    stopped = run_agent(config, uid=NOBODY if as_nobody else None, read_only=None if as_nobody else state)
    euid = NOBODY if as_nobody else 0
    uid, mode, owner = {"the agent as nobody, root's 0755": (0, "0755", "not owned by the agent's user"),
                        "read-only, nobody's 0755": (NOBODY, "0755", "not owned by the agent's user"),
                        "read-only, mode 0777": (0, "0777", "writable by others")}[how]
    assert_refused(stopped, f"the agent's state_dir {state} is {owner} (uid {uid}, mode {mode}): another user could "
                            f"plant or remove the agent's hold record there (hint: chown {euid} {state} && chmod 700 "
                            f"{state}, or set state_dir in {config} to a directory of the agent's own)", qdb)
    assert record.read_text() == before


@pytest.mark.parametrize("mode", [0o700, 0o600])
def test_a_state_dir_the_agents_user_cannot_enter_is_refused_in_one_line(base: Path, qdb: FakeQuestDB,
                                                                         mode: int) -> None:
    # A packaged /var/lib/snapctl-agent left root's 0700 with the agent run as another user: Path.exists()
    # raised PermissionError on the record in it, a traceback and exit 1. 0600 is the agent's own,
    # which it may not enter either: whether a record is there cannot be told.
    need(nobody=True)
    config = agent_config(base, qdb, uid=NOBODY)
    state = base / "state"
    state.mkdir(mode=mode)
    if mode == 0o600:
        os.chown(state, NOBODY, NOBODY)
    stopped = run_agent(config, uid=NOBODY)
    if mode == 0o700:
        said = (f"the agent's state_dir {state} is not owned by the agent's user (uid 0, mode 0700): another user "
                f"could plant or remove the agent's hold record there (hint: chown {NOBODY} {state} && chmod 700 "
                f"{state}, or set state_dir in {config} to a directory of the agent's own)")
    else:
        said = (f"the agent's state_dir {state} is not a directory its user can write; whether a hold record is "
                f"there cannot be told: permission denied (hint: set state_dir in {config} to a directory the "
                "agent's user can write)")
    assert_refused(stopped, said, qdb)
    assert stopped.stderr.count("\n") == 1, stopped.stderr


@pytest.mark.parametrize("how", ["owned by nobody", "a symlink", "owned by nobody, read-only"])
def test_a_record_the_agents_user_did_not_write_is_not_acted_on_in_its_own_state_dir(
        base: Path, qdb: FakeQuestDB, how: str) -> None:
    # The directory is the agent's own and no one else's to write: a record another user owns was
    # there before it was (or root put it there), and may be planted all the same.
    need(mount_namespace=how.endswith("read-only"))
    config = agent_config(base, qdb)
    state = base / "state"
    state.mkdir(mode=0o700)
    record = plant(state, base)
    by_hand = 'release any hold it names by hand (docs/agent.md, "An engine left held")'
    if how == "a symlink":
        record.rename(base / "elsewhere.json")
        record.symlink_to(base / "elsewhere.json")
        said = f"the hold record {record} is not a regular file: it may be planted, and the hold it names is not released"
        hint = f"remove it, and {by_hand}"
    else:
        os.chown(record, NOBODY, NOBODY)
        said = (f"the hold record {record} is owned by uid {NOBODY}, not the agent's user (uid 0): another user may "
                "have planted it, and the hold it names is not released")
        hint = f"if this agent wrote it while running as another user, chown 0 {record}; else remove it, and {by_hand}"
    stopped = run_agent(config, read_only=state if how.endswith("read-only") else None)
    if how.endswith("read-only"):  # one hint: the record's, then the state_dir's
        said = (f"the agent's state_dir {state} is not a directory its user can write; the hold record {record} "
                f"there is not acted on: {said}")
        hint += f"; set state_dir in {config} to a directory the agent's user can write"
    said += f" (hint: {hint})"
    assert_refused(stopped, said, qdb)
    assert record.exists()
