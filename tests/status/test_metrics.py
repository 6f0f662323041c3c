"""The agent's GET /metrics (served for real on loopback) and the node_exporter textfiles."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import httpx
import pytest

import snapctl.metrics
from node_agent.app import create_app
from node_agent.engines.base import create_engine
from node_agent.engines.sqlite import SqliteSettings
from node_agent.service import AgentService
from snapctl.errors import BadInputError
from snapctl.metrics import Exposition, backup_textfile, recording_backup, status_textfile, write_textfile
from snapctl.status import collect_status
from tests.agent.conftest import serve, wait_until
from tests.fakes.dingodb import FakeDingoStore
from tests.status.conftest import FakeAgent, fake_agents, load, make_db, record_run, sqlite_nodes, write_inventory
from tests.status.promtext import parse, value

TOKEN = "metrics-test-t0ken-9d1e"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_agent_metrics_need_the_token_and_show_the_lease_and_its_expiry(tmp_path):
    db = make_db(tmp_path / "data.db")
    service = AgentService("n1", create_engine({"type": "sqlite", "path": str(db)}, base_dir=tmp_path))
    try:
        with serve(create_app(service, TOKEN)) as url:
            assert httpx.get(f"{url}/v1/status").status_code == 401, "the API still needs the token"
            assert httpx.get(f"{url}/metrics").status_code == 401, "metrics are behind the token too"
            before = httpx.get(f"{url}/metrics", headers=AUTH)
            assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = parse(before.text)
            assert value(samples, "snapctl_agent_up") == 1
            assert value(samples, "snapctl_agent_lease_held") == 0
            assert value(samples, "snapctl_engine_up", engine="sqlite") == 1

            service.prepare("run-metrics-1", 60)
            held = parse(httpx.get(f"{url}/metrics", headers=AUTH).text)
            assert value(held, "snapctl_agent_lease_held") == 1
            assert value(held, "snapctl_agent_prepares_total") == 1
            assert value(held, "snapctl_agent_last_prepare_duration_seconds") >= 0

            service.renew("run-metrics-1", 0.05)  # then stop renewing: the agent releases it by itself
            wait_until(lambda: service.stats.lease_expirations == 1, what="the lease to expire")
            after = httpx.get(f"{url}/metrics", headers=AUTH).text
            assert value(parse(after), "snapctl_agent_lease_expirations_total") == 1
            assert value(parse(after), "snapctl_agent_lease_held") == 0
            assert TOKEN not in after and "run-metrics-1" not in after
            assert "/metrics" not in httpx.get(f"{url}/openapi.json").text, "not part of the /v1 JSON API"
    finally:
        service.close()


def test_agent_metrics_carry_the_raft_state_and_survive_a_dead_engine(tmp_path):
    with FakeDingoStore(region_ids=(1001, 1002)) as store:
        engine = create_engine({"type": "dingodb", "server": store.server.address, "raft": store.raft.address,
                                "data_path": str(tmp_path), "timeout_s": 1}, base_dir=tmp_path)
        service = AgentService("store1", engine)
        try:
            with serve(create_app(service, TOKEN)) as url:
                samples = parse(httpx.get(f"{url}/metrics", headers=AUTH).text)
                me = store.peer(store.raft.port)
                leader = store.regions[1001]
                ids = {"group": leader.group, "member": me}
                assert value(samples, "snapctl_raft_leader", **ids) == 1
                assert value(samples, "snapctl_raft_term", **ids) == leader.term
                assert value(samples, "snapctl_raft_applied_index", **ids) == leader.applied
                assert value(samples, "snapctl_raft_role", role="follower", group=store.regions[1002].group,
                             member=me) == 1
                assert value(samples, "snapctl_raft_peer_lag_entries", peer=store.peer(store.raft.port + 1), **ids) == 0
                with store.hang():
                    down = parse(httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text)
                assert value(down, "snapctl_engine_up", engine="dingodb") == 0
                assert value(down, "snapctl_agent_up") == 1
        finally:
            service.close()


def test_label_values_are_escaped():
    out = Exposition()
    out.add("x", "gauge", "help", 1, group='a"b\\c\nd')
    assert parse(out.text()) == {("x", frozenset({("group", 'a\\"b\\\\c\\nd')})): 1.0}


def test_status_textfile_is_written_atomically_and_reads_back(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 2)))
    record_run(inventory, "r-good", "succeeded", age_s=120)
    textfile = tmp_path / "textfile" / "snapctl.prom"
    textfile.parent.mkdir()
    status = asyncio.run(collect_status(inventory, textfile=textfile))
    samples = parse(textfile.read_text())
    assert value(samples, "snapctl_status_verdict", cluster="st") == 0
    assert value(samples, "snapctl_status_safe_to_back_up", cluster="st") == 1
    assert value(samples, "snapctl_status_node_reachable", cluster="st", node="n2") == 1
    assert 120 <= value(samples, "snapctl_status_last_success_age_seconds", cluster="st") < 600
    assert [p.name for p in textfile.parent.iterdir()] == ["snapctl.prom"], "no temp file left behind"
    assert status.verdict.level == "healthy"


def test_an_unwritable_textfile_is_a_finding_not_a_lost_status(tmp_path, monkeypatch):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=1)
    target = tmp_path / "out"
    target.mkdir()

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapctl.metrics, "write_atomically", disk_full)
    status = asyncio.run(collect_status(inventory, textfile=target / "snapctl.prom"))
    (finding,) = [f for f in status.verdict.findings if f.subject == "metrics"]
    assert finding.severity == "degraded" and "cannot write the metrics textfile" in finding.message
    assert "no space left on device" in finding.message


@pytest.mark.parametrize(("name", "problem"), [("snapctl.txt", "ending in .prom"), ("missing/x.prom", "does not exist"),
                                              ("taken.prom", "it is a directory")])
def test_textfile_paths_node_exporter_would_never_read_are_refused(tmp_path, name, problem):
    (tmp_path / "taken.prom").mkdir()
    with pytest.raises(BadInputError, match=problem):
        write_textfile(tmp_path / name, "")


@pytest.mark.parametrize(("kind", "said"), [("fifo", "a FIFO (named pipe)"), ("device", "a character device")])
def test_a_textfile_that_is_no_regular_file_is_refused_and_left_as_it_is(tmp_path, kind, said):
    # Each write renames a temp file over the target: as root, a device node there became a regular file.
    target = tmp_path / "snapctl.prom"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        try:
            os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, never /dev/null
        except PermissionError:
            pytest.skip("making a device node needs root")
    before = os.stat(target)

    with pytest.raises(BadInputError) as refused:
        write_textfile(target, "snapctl_up 1\n")
    assert refused.value.message == f"--textfile {target}: it is {said}, not a regular file"
    assert refused.value.hint
    after = os.stat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_the_textfile_counts_unreachable_nodes(tmp_path):
    with fake_agents([FakeAgent("up"), FakeAgent("stuck", "hang")]) as fleet:
        nodes = [{"name": a.node, "agent": a.url} for a in fleet.agents]
        inventory = load(write_inventory(tmp_path, nodes, policy={"agent_timeout_s": "2s"}))
        samples = parse(status_textfile(asyncio.run(collect_status(inventory))))
    assert value(samples, "snapctl_status_node_reachable", cluster="st", node="up") == 1
    assert value(samples, "snapctl_status_node_reachable", cluster="st", node="stuck") == 0
    assert value(samples, "snapctl_status_verdict", cluster="st") == 2
    assert ("snapctl_status_engine_up", frozenset({("cluster", "st"), ("node", "stuck")})) not in samples


def test_a_textfile_that_cannot_be_written_after_the_run_is_a_warning_not_the_runs_outcome(tmp_path, caplog):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    prom = tmp_path / "prom"
    prom.mkdir()

    async def succeeding_run() -> str:
        prom.rmdir()
        prom.write_text("a file where node_exporter's directory was")  # the disk changed under the run
        return "the manifest"

    assert asyncio.run(recording_backup(inventory, prom / "snapctl.prom", succeeding_run())) == "the manifest"
    assert f"--textfile {prom / 'snapctl.prom'}: {prom} is not a directory" in caplog.text
    assert "the run's outcome stands" in caplog.text


def test_the_documented_rpo_alert_fires_for_a_cluster_whose_every_backup_failed(tmp_path):
    # docs/status.md: `time() - snapctl_backup_last_success_timestamp_seconds > 86400`. After only
    # failed runs the series was absent, so the alert never fired, however long nothing succeeded.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-failed", "failed", age_s=3 * 86400, error="boom")
    backup = parse(backup_textfile(inventory))
    assert value(backup, "snapctl_backup_last_run_success", cluster="st") == 0
    assert time.time() - value(backup, "snapctl_backup_last_success_timestamp_seconds", cluster="st") > 86400
    samples = parse(status_textfile(asyncio.run(collect_status(inventory))))
    age = value(samples, "snapctl_status_last_success_age_seconds", cluster="st")
    assert age > value(samples, "snapctl_status_rpo_seconds", cluster="st")

    record_run(inventory, "r-good", "succeeded", age_s=60)  # and it stops firing once one succeeds
    assert time.time() - value(parse(backup_textfile(inventory)), "snapctl_backup_last_success_timestamp_seconds",
                               cluster="st") < 86400


def test_every_metric_written_is_named_in_the_docs(tmp_path):
    # snapctl_status_timestamp_seconds was written but named nowhere: the staleness alert a textfile
    # needs (the cron job stopped) could not be found in docs/status.md.
    docs = (Path(__file__).parents[2] / "docs" / "status.md").read_text()
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    written = status_textfile(asyncio.run(collect_status(inventory))) + backup_textfile(inventory)
    with FakeDingoStore(region_ids=(1001,)) as store:
        engine = create_engine({"type": "dingodb", "server": store.server.address, "raft": store.raft.address,
                                "data_path": str(tmp_path), "timeout_s": 1}, base_dir=tmp_path)
        service = AgentService("store1", engine)
        try:
            service.prepare("run-docs", 60)
            service.complete("run-docs")
            written += snapctl.metrics.agent_metrics(service)
        finally:
            service.close()
    names = {line.split()[2] for line in written.splitlines() if line.startswith("# TYPE ")}
    assert {"snapctl_status_timestamp_seconds", "snapctl_raft_peer_lag_entries"} <= names
    assert sorted(n for n in names if f"`{n}`" not in docs and f"`{n}{{" not in docs) == []


def test_an_engine_held_past_its_lease_is_told_apart_from_a_hold_on_agent_metrics(tmp_path):
    # A lease that expired while the engine could not be reached leaves the database frozen with no
    # run (status: critical "engine still held"), and /metrics said only snapctl_agent_lease_held 1,
    # as during any backup: no alert could tell a frozen database from a backup in progress.
    from tests.agent.test_service import FakeClock
    from tests.agent.test_service_engine_trouble import GoesDown

    db = make_db(tmp_path / "data.db")
    engine, clock = GoesDown(SqliteSettings(path=db.name, timeout_s=5), base_dir=tmp_path), FakeClock()
    service = AgentService("n1", engine, clock=clock)
    try:
        service.prepare("run-1", 10)
        held = parse(snapctl.metrics.agent_metrics(service))
        assert (value(held, "snapctl_agent_lease_held"), value(held, "snapctl_agent_lease_expired_still_held")) == (1, 0)
        engine.down = True
        clock.advance(11)
        service.expire_if_due()
        stuck = parse(snapctl.metrics.agent_metrics(service))
        assert value(stuck, "snapctl_agent_lease_expired_still_held") == 1
        assert value(stuck, "snapctl_agent_lease_expirations_total") == 1
        engine.down = False
        clock.advance(60)
        service.expire_if_due()
        released = parse(snapctl.metrics.agent_metrics(service))
        assert (value(released, "snapctl_agent_lease_held"), value(released, "snapctl_agent_lease_expired_still_held")) \
            == (0, 0)
    finally:
        service.close()
        engine.close()
