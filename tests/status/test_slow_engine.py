"""An engine that stops answering its agent's status queries (a frozen etcd or Tarantool): a
second caller meanwhile (a scrape, another `snapctl status`) must not be shown the engine's last
answer as if it were fine."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.service import AgentService
from snapctl.health import NodeProbe, assess_node
from tests.status.conftest import make_db


class Freezes(SqliteEngine):
    """Answers status until ``frozen`` is set, then hangs in it until ``thaw``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frozen, self.entered, self.thaw = False, threading.Event(), threading.Event()

    def status(self):
        if self.frozen:
            self.entered.set()
            self.thaw.wait(10)
        return super().status()


@contextmanager
def agent_of(tmp_path: Path) -> Iterator[tuple[AgentService, Freezes]]:
    """An agent of one SQLite node whose engine can be frozen; closed on exit."""
    db = make_db(tmp_path / "data.db")
    engine = Freezes(SqliteSettings(path=db.name, timeout_s=5), base_dir=tmp_path)
    svc = AgentService("n1", engine)
    try:
        yield svc, engine
    finally:
        svc.close()
        engine.close()


@contextmanager
def frozen_inside(engine: Freezes, first_call: Callable[[], object]) -> Iterator[None]:
    """``first_call`` in a thread of its own, hanging in the frozen engine; thawed on exit."""
    engine.frozen = True
    first = threading.Thread(target=first_call)
    first.start()
    try:
        assert engine.entered.wait(10)
        yield
    finally:
        engine.thaw.set()
        first.join(10)


def test_a_status_query_the_engine_has_not_answered_is_degraded_not_an_info_busy(tmp_path):
    # Reproduced with a real 3-member etcd, its leader SIGSTOPped: a scrape of /metrics hung on it for
    # the engine's timeout, and `snapctl status` meanwhile showed that node "info engine busy: busy"
    # with the frozen leader still leading, engine up, verdict healthy but for the backups.
    with agent_of(tmp_path) as (svc, engine):
        svc.status()
        with frozen_inside(engine, svc.status):
            during = svc.status()
            assert during.engine.details["busy"].startswith("status query of the engine under way for ")
            findings = assess_node(NodeProbe("n1", status=during))
            assert [(f.severity, f.message.split(":")[0]) for f in findings] == [("degraded", "engine slow to answer")]
            assert "from its last answer" in findings[0].message
            assert [f.severity for f in assess_node(NodeProbe("n1", status=during), for_backup=True)] == ["critical"]
        after = svc.status()
        assert "busy" not in after.engine.details and assess_node(NodeProbe("n1", status=after)) == []


def test_a_scrape_meanwhile_says_the_engine_is_not_up(tmp_path):
    # Two Prometheus servers (an HA pair) scraping one agent whose etcd froze: the scrape that came
    # second answered from the engine's last status, snapctl_engine_up 1, for a frozen engine.
    import snapctl.metrics
    from tests.status.promtext import parse, value

    with agent_of(tmp_path) as (svc, engine):
        assert value(parse(snapctl.metrics.agent_metrics(svc)), "snapctl_engine_up", engine="sqlite") == 1
        with frozen_inside(engine, lambda: snapctl.metrics.agent_metrics(svc)):
            assert value(parse(snapctl.metrics.agent_metrics(svc)), "snapctl_engine_up", engine="sqlite") == 0
        assert value(parse(snapctl.metrics.agent_metrics(svc)), "snapctl_engine_up", engine="sqlite") == 1


def test_the_status_textfile_says_an_engine_slow_to_answer_is_not_up(tmp_path):
    # The same stale answer made `snapctl status --textfile` write snapctl_status_engine_up 1.
    from datetime import UTC, datetime

    from snapctl.health import Verdict
    from snapctl.metrics import status_textfile
    from snapctl.status import ClusterStatus
    from tests.status.promtext import parse, value

    with agent_of(tmp_path) as (svc, engine):
        svc.status()
        with frozen_inside(engine, svc.status):
            status = ClusterStatus("c", datetime.now(UTC), [NodeProbe("n1", status=svc.status())], Verdict(), 86400.0)
            assert value(parse(status_textfile(status)), "snapctl_status_engine_up", cluster="c", node="n1") == 0
