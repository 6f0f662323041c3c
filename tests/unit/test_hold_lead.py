"""The automatic hold lead: as long as the preflight's fan-out, which opened the connections the
prepares reuse, but no longer than sending that many prepares needs: TLS handshakes make the
preflight far longer than the prepares that follow it take to send."""

from __future__ import annotations

import pytest

from snapctl.orchestrator import auto_hold_lead


def test_one_node_needs_no_lead() -> None:
    assert auto_hold_lead(1, 0.5) == 0.0


@pytest.mark.parametrize(("nodes", "fan_out_s"), [(3, 0.012), (100, 0.045), (1000, 0.4)])
def test_in_plain_http_the_lead_is_the_preflights_fan_out(nodes: int, fan_out_s: float) -> None:
    # What the benchmark machine measured: connects and a status request, 0.1-0.4 ms per node.
    assert auto_hold_lead(nodes, fan_out_s) == pytest.approx(fan_out_s + 0.002)


@pytest.mark.parametrize(("nodes", "fan_out_s"), [(100, 0.28), (1000, 2.2)])
def test_a_preflight_slowed_by_tls_handshakes_does_not_stretch_the_lead(nodes: int, fan_out_s: float) -> None:
    lead = auto_hold_lead(nodes, fan_out_s)
    assert lead < fan_out_s / 3
    assert lead >= nodes * 0.0004  # still as long as a plain-http preflight of as many nodes


def test_the_lead_never_passes_two_seconds() -> None:
    assert auto_hold_lead(100_000, 30.0) == 2.0
