"""Where the catalog knows the run an engine left held belongs to, status and the preflight say so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from node_agent.models import AgentStatus, EngineStatus
from snapctl import __version__
from snapctl.health import Finding, NodeProbe
from snapctl.left_holds import name_left_holds
from snapctl.manifest import IndexEntry


def test_a_hold_left_behind_is_said_to_be_the_failed_run_the_catalog_shows():
    # A Tarantool pin names its run, and the catalog says that run failed: say so, the operator's
    # first question (tests/faults/test_left_hold.py has the QuestDB case with real agents).
    started = datetime(2026, 12, 7, 13, 31, 9, tzinfo=UTC)
    failed = IndexEntry(run_id="r1", status="failed", started_at=started, finished_at=started + timedelta(seconds=12),
                        nodes=1, snapshots=0)
    good = IndexEntry(run_id="r0", status="succeeded", started_at=started - timedelta(hours=1),
                      finished_at=started - timedelta(minutes=59), nodes=1, snapshots=1)

    def probe(held_by: str | None, since: datetime | None = None) -> NodeProbe:
        engine = EngineStatus(engine="tarantool", reachable=True, held=True, held_by=held_by, held_since=since)
        return NodeProbe("n1", status=AgentStatus(node="n1", agent_version=__version__, engine=engine))

    def said(p: NodeProbe, entries: list[IndexEntry]) -> str:
        finding = Finding("critical", "n1", f"engine already held by {p.status.engine.held_by} (not this agent)")
        [named] = name_left_holds([finding], [p], entries)
        return named.message

    assert said(probe("snapctl run r1"), [failed, good]) == (
        "engine already held by snapctl run r1 (not this agent); held by run r1, which failed at "
        "2026-12-07 13:31:21Z, whose agent left the hold behind")
    # A run the catalog does not know, or one that succeeded: nothing to add.
    assert said(probe("snapctl run r9"), [failed]).endswith("(not this agent)")
    assert said(probe("snapctl run r0"), [good]).endswith("(not this agent)")
    # Another tool's hold that began before any failed run: not blamed on one.
    assert said(probe("box.backup.start() by another backup tool", started - timedelta(minutes=5)),
                [failed, good]).endswith("(not this agent)")
    # A hold that began while a run failed, from a server that cannot name its holder: that run's.
    assert said(probe("another questdb client", started + timedelta(seconds=1)), [failed, good]) == (
        "engine already held by another questdb client (not this agent); held since 2026-12-07 13:31:10Z, during "
        "run r1, which failed at 2026-12-07 13:31:21Z: likely left behind by its agent")
