"""The loopback floor bench: its server answers every request on every connection, and both
clients (raw sockets, a bare asyncio protocol, snapctl's transport) complete whole fan-outs
against it."""

from __future__ import annotations

from bench.loopback import run


def test_both_clients_complete_fan_outs_against_the_servers():
    table = run([3], rounds=2)
    rows = [line for line in table.splitlines() if line.startswith("| 3 ")]
    assert [row.split("|")[2].strip() for row in rows][:3] == ["raw", "asyncio protocol", "snapctl transport"]
    for row in rows:
        fan_out_ms = float(row.split("|")[3])
        assert fan_out_ms > 0
