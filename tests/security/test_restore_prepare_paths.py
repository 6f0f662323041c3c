"""restore-prepare acts only under the engine's data paths, or the restore_root of the scratch
agent's config: a token holder aiming it at the rest of the host (a stale -shm deleted, every
*.inprogress file of a tree, an etcd data dir moved aside, QuestDB's conf rewritten) is refused,
with one answer whether the path exists or not. Real agent processes on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.agent.conftest import TOKEN, agent_process, make_db

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVER_CONF = "http.bind.to=0.0.0.0:9000\ncairo.snapshot.instance.id=victim-instance\n"


def _sqlite(data: Path, victim: Path) -> tuple[dict, Callable[[], None]]:
    make_db(data / "app.db")
    make_db(victim / "app.db")
    (victim / "app.db-shm").write_bytes(b"the shared memory of a live database")
    return {"type": "sqlite", "path": "data/app.db"}, lambda: (victim / "app.db-shm").stat()


def _tarantool(data: Path, victim: Path) -> tuple[dict, Callable[[], None]]:
    for where in (data, victim):
        (where / "00000000000000000000.snap").write_bytes(b"SNAP\n")
    (victim / "00000000000000000042.vylog.inprogress").write_bytes(b"another instance's work")
    return ({"type": "tarantool", "port": 9, "work_dir": "data"},
            lambda: (victim / "00000000000000000042.vylog.inprogress").stat())


def _questdb(data: Path, victim: Path) -> tuple[dict, Callable[[], None]]:
    (victim / "conf").mkdir()
    (victim / "conf" / "server.conf").write_text(SERVER_CONF)

    def untouched() -> None:
        assert not (victim / "_restore").exists()
        assert (victim / "conf" / "server.conf").read_text() == SERVER_CONF

    return {"type": "questdb", "url": "http://127.0.0.1:9", "root": "data"}, untouched


def _etcd(data: Path, victim: Path) -> tuple[dict, Callable[[], None]]:
    (data / "backup").mkdir()
    (data / "backup" / "run-1.db").write_bytes(b"a saved snapshot")
    (victim / "keep").write_text("a directory of the host")
    restore = {"name": "m1", "initial_cluster": "m1=http://127.0.0.1:2380",
               "initial_advertise_peer_urls": "http://127.0.0.1:2380"}
    return ({"type": "etcd", "endpoint": "http://127.0.0.1:9", "backup_dir": "data/backup",
             "data_dir": "data/member", "restore": restore},
            lambda: (victim / "keep").stat())  # not moved aside to victim.before-restore-...


def start_agent(tmp_path: Path, engine: dict, **extra: object):
    (tmp_path / "agent.token").write_text(TOKEN + "\n")
    (tmp_path / "agent.token").chmod(0o600)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"node": "scratch", "token_file": "agent.token", "restore_target": True,
                                      "engine": engine, **extra}))
    return agent_process(config)


@pytest.mark.parametrize("victim_of", [_sqlite, _tarantool, _questdb, _etcd],
                         ids=["sqlite", "tarantool", "questdb", "etcd"])
def test_restore_prepare_outside_the_engines_paths_is_refused_alike_and_touches_nothing(tmp_path, victim_of) -> None:
    data, victim = tmp_path / "data", tmp_path / "victim"
    data.mkdir()
    victim.mkdir()
    engine, untouched = victim_of(data, victim)
    (data / "escape").symlink_to(victim)
    aimed = [str(victim), str(data / "escape"), f"{data}/../victim", "victim", str(tmp_path / "nowhere"),
             str(victim / "not-there" / "app.db")]
    with start_agent(tmp_path, engine) as agent:
        # The check-only form (what snapctl asks before restoring anything) answers alike.
        answers = [httpx.post(agent.url + "/v1/restore-prepare", json={"path": path, **check}, headers=AUTH,
                              timeout=10)
                   for path in aimed for check in ({}, {"check_only": True})]
    untouched()
    assert [a.status_code for a in answers] == [400] * 2 * len(aimed), [a.text for a in answers]
    # One answer for every path, there or not: no way to learn what exists on the host.
    assert len({a.text for a in answers}) == 1, [a.text for a in answers]
    error = answers[0].json()
    assert error["error"].startswith("restore-prepare refused: its path must be absolute and lie under the "
                                     "engine's data paths or the agent's restore_root (")
    assert "restore_root" in error["hint"] and "restore.agent_path" in error["hint"]


def test_restore_prepare_under_the_engines_paths_or_restore_root_goes_ahead(tmp_path) -> None:
    data, mounted = tmp_path / "data", tmp_path / "mnt" / "restored"
    data.mkdir()
    mounted.mkdir(parents=True)
    for where in (data, mounted):
        make_db(where / "app.db")
        (where / "app.db-shm").write_bytes(b"stale")
    engine = {"type": "sqlite", "path": "data/app.db"}
    with start_agent(tmp_path, engine, restore_root="mnt") as agent:
        (tmp_path / "mnt-link").symlink_to(mounted)  # resolved by the agent: a link to where the disk is
        for path in (data, data / "app.db", mounted, tmp_path / "mnt-link"):
            answer = httpx.post(agent.url + "/v1/restore-prepare", json={"path": str(path), "check_only": True},
                                headers=AUTH, timeout=10)
            assert answer.status_code == 204, answer.text
        assert (data / "app.db-shm").exists() and (mounted / "app.db-shm").exists(), "a check touches nothing"
        for path in (data, data / "app.db", mounted):  # relative restore_root: from the config's directory
            answer = httpx.post(agent.url + "/v1/restore-prepare", json={"path": str(path)}, headers=AUTH, timeout=10)
            assert answer.status_code == 204, answer.text
        assert not (data / "app.db-shm").exists() and not (mounted / "app.db-shm").exists()
        status = httpx.get(agent.url + "/v1/status", headers=AUTH, timeout=10).json()
        assert status["data_paths"] == [str(data)]
    assert os.path.exists(data / "app.db") and os.path.exists(mounted / "app.db")


def test_restore_root_without_restore_target_is_refused_at_start(tmp_path) -> None:
    from node_agent.config import AgentConfigError, load_agent_config

    config = tmp_path / "agent.yaml"
    config.write_text("node: n1\nengine: {type: sqlite, path: app.db}\nrestore_root: /srv/restored\n")
    with pytest.raises(AgentConfigError) as refused:
        load_agent_config(config)
    assert refused.value.message == (f"{config}:3: restore_root: is for a scratch agent beside restored disks: it "
                                     "needs restore_target: true")
