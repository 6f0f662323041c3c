"""The hold record's files in the agent's state_dir: the lock that keeps a second agent (in
another network namespace, where the database claim is not seen) off a live agent's record, the
state_dir's ownership and mode, the temp file never followed, the directory fsynced, the record
named from resolved paths, and other records naming this node or database warned about."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from node_agent.hold_record import HoldRecord, HoldRecords
from tests.agent.conftest import AGENT_BIN, TOKEN, agent_process, try_write, write_config
from tests.conftest import free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def a_record(run_id: str = "r1") -> HoldRecord:
    now = datetime.now(UTC)
    return HoldRecord(run_id, "sqlite", now, now + timedelta(seconds=60))


def run_agent(argv: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """``argv`` run to its end: an agent that serves instead of exiting fails the test, killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SNAPCTL_AGENT_TOKEN": ""})
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the agent did not exit: it served\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_a_second_agent_in_another_network_namespace_exits_2_and_the_first_agents_hold_stays(tmp_path: Path,
                                                                                            db: Path) -> None:
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n)")
    config = write_config(tmp_path, db, extra="state_dir: state\n")
    with agent_process(config) as first:
        prepared = httpx.post(first.url + "/v1/prepare", json={"run_id": "r1", "lease_s": 60}, headers=AUTH)
        assert prepared.status_code == 200, prepared.text
        [record] = (tmp_path / "state").glob("hold-n1-*.json")
        before = record.read_text()
        # Its own network: the abstract-socket claim of the first is not seen there.
        second = run_agent(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                            str(AGENT_BIN), "--config", str(config), "--port", str(free_port())])
        assert second.returncode == 2, second.stderr
        lock = record.with_suffix(".lock")
        assert second.stderr == (
            f"snapctl-agent: error: another snapctl-agent of node n1 on this database already runs with state_dir "
            f"{tmp_path / 'state'} (it holds {lock.name}): two agents on one database release each other's holds "
            f"(hint: stop the other agent (perhaps in another container or network namespace: fuser -v {lock}), "
            f"or point engine: in {config} at another database)\n")
        assert record.read_text() == before
        assert not try_write(db)
        status = httpx.get(first.url + "/v1/status", headers=AUTH).json()
        assert status["lease"]["run_id"] == "r1"
        assert httpx.post(first.url + "/v1/complete", json={"run_id": "r1"}, headers=AUTH).json()["released"]
    assert first.proc.returncode == 0
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


@pytest.mark.parametrize("how", ["mode 0777", "another owner"])
def test_a_state_dir_others_can_write_stops_the_agent_at_start(tmp_path: Path, db: Path, how: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o700)
    if how == "mode 0777":
        state.chmod(0o777)
        said = f"writable by others (uid {os.geteuid()}, mode 0777)"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user takes root")
        os.chown(state, 65534, -1)
        said = "not owned by the agent's user (uid 65534, mode 0700)"
    config = write_config(tmp_path, db, extra="state_dir: state\n")
    started = run_agent([str(AGENT_BIN), "--config", str(config), "--port", str(free_port())])
    assert started.returncode == 2, started.stderr
    assert started.stderr == (
        f"snapctl-agent: error: the agent's state_dir {state} is {said}: another user could plant or remove the "
        f"agent's hold record there (hint: chown {os.geteuid()} {state} && chmod 700 {state}, or set state_dir in "
        f"{config} to a directory of the agent's own)\n")
    assert list(state.iterdir()) == []


def test_systemd_makes_the_state_dir_as_the_agent_wants_it() -> None:
    unit = (Path(__file__).parents[2] / "deploy" / "snapctl-agent.service").read_text().splitlines()
    assert "StateDirectoryMode=0700" in unit


def test_a_planted_temp_file_symlink_is_not_written_through(tmp_path: Path, db: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    records = HoldRecords(state, "n1", "sqlite", [db])
    records.path.with_suffix(".json.tmp").symlink_to(victim)
    records.write(a_record())
    assert victim.read_text() == "precious\n"
    assert not records.path.is_symlink()
    assert records.load() is not None and records.load().run_id == "r1"
    assert stat.S_IMODE(records.path.stat().st_mode) == 0o600


def test_the_directory_is_fsynced_after_a_durable_write_and_after_a_remove(tmp_path: Path, db: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A spy on the real fsync: which fsyncs were of the directory, and whether the record was
    # there by then (after the rename, after the unlink).
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    records = HoldRecords(state, "n1", "sqlite", [db])
    seen: list[tuple[bool, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        seen.append((stat.S_ISDIR(os.fstat(fd).st_mode), records.path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    records.write(a_record())
    assert seen == [(False, False), (True, True)]
    seen.clear()
    records.write(a_record(), durable=False)  # during a hold: no fsync lengthens the freeze
    assert seen == []
    records.remove()
    assert seen == [(True, False)]


def test_the_record_is_named_from_resolved_paths(tmp_path: Path, db: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(db.parent)
    state = tmp_path / "state"
    assert HoldRecords(state, "n1", "sqlite", [link / db.name]).path == HoldRecords(state, "n1", "sqlite", [db]).path
    second = db.parent / "second.db"
    assert HoldRecords(state, "n1", "sqlite", [second]).path != HoldRecords(state, "n1", "sqlite", [db]).path


def test_other_records_naming_this_node_or_database_are_warned_about_and_left_alone(tmp_path: Path,
                                                                                   db: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # Written by this agent under an earlier node name, and one of this node for another database.
    renamed = HoldRecords(state, "old-name", "sqlite", [db])
    renamed.write(a_record("r-old"))
    same_node = HoldRecords(state, "n1", "sqlite", [tmp_path / "elsewhere.db"])
    same_node.write(a_record("r-other"))
    unrelated = HoldRecords(state, "n9", "sqlite", [tmp_path / "unrelated.db"])
    unrelated.write(a_record("r-unrelated"))
    kept = {p: p.read_text() for p in state.iterdir()}
    config = write_config(tmp_path, db, extra="state_dir: state\n")
    with agent_process(config) as agent:
        pass
    ours = HoldRecords(state, "n1", "sqlite", [db]).path.name
    warned = [line for line in agent.log.splitlines() if "another hold record" in line]
    assert [line.split("WARNING snapctl.agent: ", 1)[1] for line in warned] == [
        f"another hold record {path} names {what}, and this agent's record is {ours}: left alone; if it is an "
        "earlier name of this agent's, release the hold it names by hand and remove it (docs/agent.md, "
        "\"An engine left held\")"
        for path, what in sorted([(same_node.path, "node n1"), (renamed.path, f"the database at {db}")])]
    assert {p: p.read_text() for p in state.iterdir() if p.suffix == ".json"} == kept
    assert json.loads(renamed.path.read_text())["paths"] == [str(db)]
