"""The automatic hold lead: as long as the preflight's fan-out, which opened the connections the
prepares reuse, but no longer than sending that many prepares needs (20 ms and 0.15 ms a node):
connects, and TLS handshakes most of all, make the preflight longer than the prepares that follow
it take to send."""

from __future__ import annotations

import pytest

from snapctl.orchestrator import auto_hold_lead


def test_one_node_needs_no_lead() -> None:
    assert auto_hold_lead(1, 0.5) == 0.0


@pytest.mark.parametrize(("nodes", "fan_out_s"), [(3, 0.012), (100, 0.024), (300, 0.057)])
def test_a_quick_preflight_sets_the_lead(nodes: int, fan_out_s: float) -> None:
    # What the benchmark machine measured: connects and a status request, 0.2-0.4 ms per node.
    assert auto_hold_lead(nodes, fan_out_s) == pytest.approx(fan_out_s + 0.002)


@pytest.mark.parametrize(("nodes", "fan_out_s"), [(100, 0.28), (1000, 0.3), (1000, 2.2)])
def test_connects_and_tls_handshakes_in_the_preflight_do_not_stretch_the_lead(nodes: int, fan_out_s: float) -> None:
    lead = auto_hold_lead(nodes, fan_out_s)
    assert lead < fan_out_s
    # Still room to write every prepare: 1000 took 28-133 ms on the benchmark machine.
    assert lead == pytest.approx(0.02 + nodes * 0.00015)


def test_the_lead_never_passes_two_seconds() -> None:
    assert auto_hold_lead(100_000, 30.0) == 2.0
