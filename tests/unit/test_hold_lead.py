"""The automatic hold lead: as long as the preflight's fan-out, which opened the connections the
prepares reuse, but no longer than sending that many prepares needs (20 ms, and 0.07 ms a node in
plain http, 0.15 ms over TLS): connects, and TLS handshakes most of all, make the preflight longer
than the prepares that follow it take to send."""

from __future__ import annotations

import pytest

from snapctl.config import parse_inventory
from snapctl.pacing import auto_hold_lead, hold_lead


def test_one_node_needs_no_lead() -> None:
    assert auto_hold_lead(1, 0.5) == 0.0


@pytest.mark.parametrize(("nodes", "fan_out_s"), [(3, 0.012), (100, 0.024), (300, 0.035)])
def test_a_quick_preflight_sets_the_lead(nodes: int, fan_out_s: float) -> None:
    # What the benchmark machine measured: connects and a status request, 0.2-0.4 ms per node.
    assert auto_hold_lead(nodes, fan_out_s) == pytest.approx(fan_out_s + 0.002)


@pytest.mark.parametrize(("nodes", "fan_out_s"), [(100, 0.28), (1000, 0.3), (1000, 2.2)])
def test_connects_in_the_preflight_do_not_stretch_the_lead(nodes: int, fan_out_s: float) -> None:
    lead = auto_hold_lead(nodes, fan_out_s)
    assert lead < fan_out_s
    # Still room to write every prepare: 1000 took 28-41 ms on the benchmark machine.
    assert lead == pytest.approx(0.02 + nodes * 0.00007)


def test_tls_agents_get_longer_to_read_their_prepares() -> None:
    plain, tls = auto_hold_lead(1000, 2.2), auto_hold_lead(1000, 2.2, tls_nodes=1000)
    assert tls == pytest.approx(0.02 + 1000 * 0.00015)
    assert plain < auto_hold_lead(1000, 2.2, tls_nodes=400) < tls  # a mixed cluster: each node its own share


def test_a_run_counts_its_tls_agents_from_the_inventory() -> None:
    nodes = "".join(f"  - name: n{i}\n    agent: {'https' if i < 600 else 'http'}://127.0.0.1:{7000 + i}\n"
                    for i in range(1000))
    inventory = parse_inventory(f"cluster: c\nprovider: {{type: local}}\nnodes:\n{nodes}", source="inv.yaml")
    assert hold_lead(inventory, 1000, 2.2) == pytest.approx(auto_hold_lead(1000, 2.2, tls_nodes=600))


def test_the_lead_never_passes_two_seconds() -> None:
    assert auto_hold_lead(100_000, 30.0, tls_nodes=100_000) == 2.0
