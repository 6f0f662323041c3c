"""The provider worker's first process forked from snapctl's: only while snapctl's process has one
thread (a native one counts; a terminal's live display has one), else a new interpreter, as when
the system refuses the fork; holding none of its descriptors but stderr, so a connection snapctl
closes is closed for its peer; with fresh output streams, so a stray print of its provider
reaches stderr, and what the parent had not written yet is written once, whatever stream object
the parent's program had put in sys.stdout."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from snapctl import worker_process
from snapctl.provider_worker import ProviderWorker
from snapctl.providers import available_providers

THIRD_PARTY = Path(__file__).resolve().parents[1] / "e2e" / "thirdparty"
REPO = Path(__file__).resolve().parents[2]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in an interpreter of its own: this test process has xdist's threads."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(THIRD_PARTY), str(REPO)])}
    env.pop("PYTHONUNBUFFERED", None)  # output to a pipe buffered, as from cron or CI
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path, check=False)


def test_only_a_process_with_one_thread_forks_its_worker(tmp_path):
    result = _python("""
        import faulthandler, threading, time
        from rich.console import Console
        from snapctl.render.progress import LiveProgress
        from snapctl.worker_process import can_fork
        print(can_fork())
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        print(can_fork())
        stop.set()
        thread.join()
        faulthandler.dump_traceback_later(60)  # a thread of C's own, which threading does not list
        time.sleep(0.05)
        print(threading.active_count(), can_fork())
        faulthandler.cancel_dump_traceback_later()
        progress = LiveProgress(Console(force_terminal=True, file=open("/dev/null", "w")))  # on a terminal
        on_a_terminal = can_fork()
        progress.close()
        print(on_a_terminal)
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True", "False", "1 False", "False"]


@pytest.fixture
def forked_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(worker_process, "can_fork", lambda: True)
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    available_providers.cache_clear()
    yield ProviderWorker({"type": "slow", "store": "store"}, cluster="c1", base_dir=tmp_path, threads=2)
    available_providers.cache_clear()


def test_a_connection_the_parent_closes_is_closed_for_its_peer_while_the_forked_worker_lives(forked_worker):
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with peer:
            async def go() -> bytes:
                forked_worker.start()  # forked while our end of the connection is open
                await forked_worker.ready(30)
                ours.close()
                peer.settimeout(5)
                try:  # the worker still runs: had it kept a copy of our end, no end of stream
                    return await asyncio.to_thread(peer.recv, 1)
                finally:
                    forked_worker.shutdown()

            assert asyncio.run(go()) == b""
    assert forked_worker._process.wait(10) == 0


def test_a_fork_the_system_refuses_starts_a_new_interpreter(forked_worker, monkeypatch):
    def refused():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", refused)

    async def go() -> None:
        forked_worker.start()
        try:
            await forked_worker.ready(30)
        finally:
            forked_worker.shutdown()

    asyncio.run(go())
    assert isinstance(forked_worker._process, subprocess.Popen)
    assert forked_worker._process.wait(10) == 0


def test_a_stray_print_reaches_stderr_and_the_parents_pending_output_is_written_once(tmp_path):
    result = _python("""
        import asyncio, sys
        from pathlib import Path
        from snapctl.provider_worker import ProviderWorker

        # A program of its own around snapctl, with a stream of its own as sys.stdout (not
        # sys.__stdout__): freed in the child, it would write what it holds into the results pipe.
        sys.stdout = open(1, "w", encoding="utf-8")
        print("the parent's line")  # to a pipe: still in the buffer when the worker is forked
        worker = ProviderWorker({"type": "slow", "store": "store", "say": "a stray line"}, cluster="c1",
                                base_dir=Path("."), threads=1)

        async def go():
            worker.start()
            await worker.ready(30)
            started_as = Path(f"/proc/{worker._process.pid}/cmdline").read_bytes()
            named = Path(f"/proc/{worker._process.pid}/comm").read_text().strip()
            worker.shutdown()
            return started_as == Path("/proc/self/cmdline").read_bytes(), named

        forked, named = asyncio.run(go())
        print("forked" if forked else "a new interpreter", named)
        sys.exit(worker._process.wait(10))
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["the parent's line", "forked snapctl-worker"]
    assert result.stderr.splitlines() == ["a stray line"]
