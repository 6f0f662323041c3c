"""One agent per database: real ``snapctl-agent`` processes; a second one on a database the first
serves exits 2 naming the first, and the first goes on serving."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.agent.conftest import AGENT_BIN, TOKEN, agent_process, make_db, try_write, wait_until, write_config
from tests.conftest import free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_second(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AGENT_BIN), "--config", str(config), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SNAPCTL_AGENT_TOKEN": ""})


def engine_config(directory: Path, engine: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agent.token").write_text(TOKEN + "\n")
    (directory / "agent.token").chmod(0o600)
    config = directory / "agent.yaml"
    config.write_text(yaml.safe_dump({"node": "n1", "token_file": "agent.token", "engine": engine}))
    return config


def refusal(pid: int, engine: str, database: Path, config: Path) -> str:
    return (f"snapctl-agent: error: another snapctl-agent (pid {pid}) already serves the {engine} database at "
            f"{database}: two agents on one database release each other's holds (hint: stop the other agent, "
            f"or point engine: in {config} at another database)\n")


def test_a_second_agent_on_a_sqlite_database_exits_2_naming_the_first_which_goes_on_serving(tmp_path: Path,
                                                                                              db: Path) -> None:
    # Reached through a symlink from another directory: still the same database.
    other = tmp_path / "other"
    other.mkdir()
    (other / "link.db").symlink_to(db)
    second_config = engine_config(other, {"type": "sqlite", "path": "link.db"})
    with agent_process(write_config(tmp_path, db)) as first:
        second = start_second(second_config)
        assert second.returncode == 2, second.stderr
        assert second.stderr == refusal(first.proc.pid, "sqlite", db, second_config)
        prepared = httpx.post(first.url + "/v1/prepare", json={"run_id": "r1", "lease_s": 60}, headers=AUTH)
        assert prepared.status_code == 200, prepared.text
        assert not try_write(db)
        assert httpx.post(first.url + "/v1/complete", json={"run_id": "r1"}, headers=AUTH).json()["released"]
        assert try_write(db)
    assert first.proc.returncode == 0


def test_two_sqlite_databases_in_one_directory_get_an_agent_each(tmp_path: Path, db: Path) -> None:
    make_db(tmp_path / "second.db")
    with agent_process(write_config(tmp_path, db)), \
            agent_process(engine_config(tmp_path / "conf2", {"type": "sqlite", "path": str(tmp_path / "second.db")})):
        pass  # both answered /v1/health


def test_the_claim_dies_with_a_killed_agent(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    with agent_process(config) as first:
        first.proc.kill()
        first.proc.wait()
    with agent_process(config):  # as systemd's Restart= starts it again
        pass


@pytest.mark.parametrize("engine", ["etcd", "tarantool"])
def test_a_second_agent_on_an_etcd_backup_dir_or_a_tarantool_work_dir_exits_2(tmp_path: Path, engine: str) -> None:
    # No server is needed: the agent claims its database before it ever asks one.
    data = tmp_path / "data"
    data.mkdir()
    settings = ({"type": "etcd", "backup_dir": str(data)} if engine == "etcd"
                else {"type": "tarantool", "work_dir": str(data)})
    with agent_process(engine_config(tmp_path / "a", settings)) as first:
        second_config = engine_config(tmp_path / "b", settings)
        second = start_second(second_config)
        assert second.returncode == 2, second.stderr
        assert second.stderr == refusal(first.proc.pid, engine, data, second_config)
        assert httpx.get(first.url + "/v1/status", headers=AUTH).status_code == 200


def test_tarantool_starts_in_the_work_dir_of_a_running_agent(tmp_path: Path) -> None:
    # What a flock on the data directory would have broken: Tarantool flocks its wal_dir itself.
    if shutil.which("tarantool") is None:
        pytest.skip("tarantool is not installed")
    work_dir = tmp_path / "tt"
    work_dir.mkdir()
    with agent_process(engine_config(tmp_path / "conf", {"type": "tarantool", "work_dir": str(work_dir)})):
        started = subprocess.run(["tarantool", "-e", f"box.cfg{{work_dir = '{work_dir}'}} print('up') os.exit(0)"],
                                 capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert started.returncode == 0 and started.stdout.strip() == "up", started.stderr[-2000:]


def squat(name: bytes, *, uid: int | None, listen: bool) -> subprocess.Popen[str]:
    """A process that binds the claim's abstract name, as ``uid``, and waits: what any local user can do."""
    code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(bytes.fromhex(sys.argv[1])); "
            f"{'s.listen(1); ' if listen else ''}print('bound', flush=True); sys.stdin.read()")
    # The system's python: nobody may not read the test's own (a pyenv under /root).
    python = shutil.which("python3", path="/usr/bin:/bin") if uid is not None else sys.executable
    if python is None:
        pytest.skip("no python3 in /usr/bin or /bin for another user to run")
    proc = subprocess.Popen([python, "-c", code, name.hex()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, user=uid, group=uid, extra_groups=[] if uid is not None else None)
    assert proc.stdout is not None and proc.stdout.readline() == "bound\n"
    return proc


@pytest.mark.parametrize("who", ["another uid, listening", "a process not listening"])
def test_a_claim_squatted_by_what_is_not_our_agent_is_warned_about_and_the_agent_serves(tmp_path: Path, db: Path,
                                                                                        who: str) -> None:
    from node_agent.exclusive import _abstract_name

    other_uid = who.startswith("another uid")
    if other_uid and os.geteuid() != 0:
        pytest.skip("running a process as another user (nobody) takes root")
    squatter = squat(_abstract_name(db, True), uid=65534 if other_uid else None, listen=other_uid)
    try:
        with agent_process(write_config(tmp_path, db)) as agent:
            prepared = httpx.post(agent.url + "/v1/prepare", json={"run_id": "r1", "lease_s": 60}, headers=AUTH)
            assert prepared.status_code == 200, prepared.text
            assert httpx.post(agent.url + "/v1/complete", json={"run_id": "r1"}, headers=AUTH).json()["released"]
        held_by = f"uid 65534 (pid {squatter.pid})" if other_uid else "a process that does not listen on it"
        assert (f"WARNING snapctl.agent: the claim on the sqlite database at {db} is held by {held_by}, not by a "
                "snapctl-agent of this user: serving without it\n") in agent.log
    finally:
        squatter.kill()
        squatter.wait()


def test_one_path_in_two_mount_namespaces_is_two_databases(tmp_path: Path) -> None:
    # Two containers sharing the host's network, each with its own /var/lib/...: a tmpfs over the
    # data directory, seen only in the second agent's mount namespace.
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a mount namespace here (unshare -m)")
    data = tmp_path / "data"
    data.mkdir()
    settings = {"type": "tarantool", "work_dir": str(data)}
    with agent_process(engine_config(tmp_path / "a", settings)):
        second_config = engine_config(tmp_path / "b", settings)
        with open(second_config, "a") as config:
            config.write("state_dir: state\n")  # each container its own, as the first's is
        port = free_port()
        second = subprocess.Popen(["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(data),
                                   str(AGENT_BIN), "--config", str(second_config), "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def up() -> bool:
                if second.poll() is not None:
                    raise AssertionError(f"the second agent exited with {second.returncode}:\n{second.stdout.read()}")
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, what="the second agent to answer /v1/health")
        finally:
            second.terminate()
            second.wait(timeout=30)
