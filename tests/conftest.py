"""Shared fixtures: everything listens on loopback only."""

from __future__ import annotations

import socket

import pytest

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()
