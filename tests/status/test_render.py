"""The status screen: many raft groups fold to the ones with something to say; names are never markup."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from node_agent.models import AgentStatus, EngineStatus, LeaseInfo, RaftGroup
from snapctl import __version__
from snapctl.config import parse_inventory
from snapctl.health import NodeProbe, assess
from snapctl.render import Renderer
from snapctl.status import ClusterStatus

INVENTORY = parse_inventory("cluster: c\nprovider: {type: local}\nnodes: [{name: a, agent: 'http://127.0.0.1:1'}]")


def screen(groups: list[RaftGroup], group_filter: list[str] | None = None,
           node_filter: list[str] | None = None) -> tuple[str, int]:
    status = AgentStatus(node="a", agent_version=__version__,
                         engine=EngineStatus(engine="dingodb", reachable=True, raft=groups))
    probes = [NodeProbe("a", status=status)]
    cluster = ClusterStatus("c", datetime.now(UTC), probes, assess(INVENTORY, probes), 3600.0,
                            group_filter=group_filter or [], node_filter=node_filter or [])
    renderer = Renderer()
    renderer.out = Console(file=io.StringIO(), width=250, highlight=False)
    code = renderer.status(cluster)
    return renderer.out.file.getvalue(), code


def region(n: int, role: str = "leader") -> RaftGroup:
    return RaftGroup(group=f"[1_T_part_0_{n}]", member="127.0.0.1:20101:0", role=role, term=2)


def test_many_groups_show_only_the_unhealthy_ones_with_a_count_of_the_rest():
    text, code = screen([region(n) for n in range(1, 30)] + [region(99, role="candidate")])
    assert "[1_T_part_0_99]" in text, "a group name with brackets is shown as it is, not as markup"
    assert "[1_T_part_0_7]" not in text
    assert "29 healthy raft groups not shown" in text
    assert code == 6 and "verdict: critical (exit 6)" in text


def test_a_few_groups_or_an_explicit_filter_show_every_group():
    text, _ = screen([region(n) for n in range(1, 4)])
    assert all(f"[1_T_part_0_{n}]" in text for n in range(1, 4)) and "not shown" not in text
    text, _ = screen([region(n) for n in range(1, 30)], group_filter=["*"])
    assert "[1_T_part_0_29]" in text and "not shown" not in text


def test_what_an_agent_reports_is_shown_as_it_is_not_as_markup():
    status = AgentStatus(node="a", agent_version="[/v]",
                         engine=EngineStatus(engine="dingodb", version="[bold]3.0", reachable=True, held=True,
                                             held_by="[/ops]",
                                             raft=[RaftGroup(group="g", member="m", role="leader", term=2,
                                                                 snapshot_status="[/odd]")]))
    probes = [NodeProbe("a", status=status)]
    cluster = ClusterStatus("c", datetime.now(UTC), probes, assess(INVENTORY, probes), 3600.0)
    renderer = Renderer()
    renderer.out = Console(file=io.StringIO(), width=250, highlight=False)
    renderer.status(cluster)
    text = renderer.out.file.getvalue()
    assert all(word in text for word in ("ok [/v]", "[bold]3.0", "held by [/ops]", "[/odd]")), text


def test_watch_into_a_pipe_writes_every_refresh_after_the_last():
    status = AgentStatus(node="a", agent_version=__version__, engine=EngineStatus(engine="dingodb", reachable=True))
    probes = [NodeProbe("a", status=status)]
    renderer = Renderer()
    renderer.out = Console(file=io.StringIO(), width=250, highlight=False)  # not a terminal
    with renderer.status_watch() as show:
        for _ in range(3):
            show(ClusterStatus("c", datetime.now(UTC), probes, assess(INVENTORY, probes), 3600.0))
    assert renderer.out.file.getvalue().count("verdict: healthy (exit 0)") == 3


def test_the_verdict_line_says_what_a_backup_would_be_refused_on():
    # A held lease is an info finding in status and a refusal in the preflight: the refusal was
    # counted on the verdict line ("1 critical finding(s)") and shown nowhere but -o json.
    lease = LeaseInfo(run_id="r-7", acquired_at=datetime.now(UTC), expires_at=datetime.now(UTC))
    status = AgentStatus(node="a", agent_version=__version__, lease=lease,
                         engine=EngineStatus(engine="sqlite", reachable=True))
    probes = [NodeProbe("a", status=status)]
    cluster = ClusterStatus("c", datetime.now(UTC), probes, assess(INVENTORY, probes), 3600.0,
                            preflight=assess(INVENTORY, probes, for_backup=True).at_least("critical"))
    renderer = Renderer()
    renderer.out = Console(file=io.StringIO(), width=250, highlight=False)
    renderer.status(cluster)
    verdict = renderer.out.file.getvalue().splitlines()[-1]
    assert verdict.endswith("safe to back up: no, a backup would be refused: a: held by run r-7 until "
                            f"{lease.expires_at:%H:%M:%S}Z (hint: wait for run r-7 to end, or for its lease to "
                            "expire (the agent then releases the node))"), verdict


def test_a_lease_past_its_expiry_whose_engine_would_not_release_says_so_in_the_lease_column():
    now = datetime.now(UTC)
    lease = LeaseInfo(run_id="r-8", acquired_at=now, expires_at=now)
    releasing = "the lease of run r-8 expired and the engine would not release: unreachable"
    status = AgentStatus(node="a", agent_version=__version__, lease=lease,
                         engine=EngineStatus(engine="tarantool", reachable=True, details={"releasing": releasing}))
    probes = [NodeProbe("a", status=status)]
    cluster = ClusterStatus("c", now, probes, assess(INVENTORY, probes), 3600.0)
    renderer = Renderer()
    renderer.out = Console(file=io.StringIO(), width=250, highlight=False)
    renderer.status(cluster)
    text = renderer.out.file.getvalue()
    assert f"r-8, 0s old, expired {now:%H:%M:%S}Z, still held" in text
    assert "critical a: engine still held" in text


def test_safe_to_back_up_with_some_nodes_asked_says_a_backup_holds_every_node():
    # `status --node a` said "safe to back up: yes" with the other nodes down: a backup asks them all.
    whole, _ = screen([region(1)])
    some, _ = screen([region(1)], node_filter=["a"])
    assert whole.rstrip().endswith("safe to back up: yes")
    assert some.rstrip().endswith("safe to back up: yes for the nodes asked (a); a backup holds every node")
