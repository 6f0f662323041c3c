"""Keeps writing rows into the demo databases, as an application would. Stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time

TABLE, COLUMNS = "events", ("id", "payload", "created_at")  # the demo's check of a database reads these
SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, created_at REAL NOT NULL)"


def open_db(path: str) -> sqlite3.Connection:
    # A long busy timeout: while a backup holds the database, writes wait instead of failing.
    conn = sqlite3.connect(path, timeout=120, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    return conn


def main(paths: list[str], interval_s: float = 0.02) -> None:
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conns = [open_db(p) for p in paths]
    n = 0
    while not stop:
        for conn in conns:
            conn.execute("INSERT INTO events (payload, created_at) VALUES (?, ?)", (os.urandom(16).hex(), time.time()))
        n += 1
        time.sleep(interval_s)


if __name__ == "__main__":
    main(sys.argv[1:])
