"""The suite's port picker: a port handed to one test process is not handed to another while
its server may still be coming up (xdist workers, and two suites on one machine, pick at once)."""

from __future__ import annotations

import os
import time

import pytest

from tests import conftest


@pytest.fixture
def reservations(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "_RESERVATIONS", tmp_path)
    return tmp_path


def test_a_port_is_handed_out_once_while_reserved(reservations, monkeypatch):
    first = conftest.free_port()
    # Every process draws its own sample; here the next draw starts with the port just handed out.
    monkeypatch.setattr(conftest.random, "sample", lambda candidates, k: [first, first + 1])

    assert conftest.free_port() == first + 1
    assert {p.name for p in reservations.iterdir()} == {str(first), str(first + 1)}


def test_a_stale_reservation_is_taken_over(reservations, monkeypatch):
    port = conftest.free_port()
    old = time.time() - conftest._RESERVED_FOR_S - 1
    os.utime(reservations / str(port), (old, old))
    monkeypatch.setattr(conftest.random, "sample", lambda candidates, k: [port])

    assert conftest.free_port() == port
    assert time.time() - (reservations / str(port)).stat().st_mtime < conftest._RESERVED_FOR_S
