"""`snapctl demo run`, the README's first command, as a user runs it; stopped by SIGTERM; and `demo up`
or `demo run` whose agent cannot start. Whichever way, every agent and writer process it started is
stopped when it ends (a failed `demo up` stops what it started)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing as contextlib_closing
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from snapctl import demo
from snapctl.errors import ExitCode
from tests.conftest import LOOPBACK, snapctl_sigtermed_after
from tests.e2e.conftest import make_inventory


def processes_naming(directory: Path) -> list[str]:
    """Live processes whose command line names ``directory``: the demo's agents (their config) and
    its writer (the databases)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if str(directory) in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    path, _ = make_inventory(tmp_path)
    try:
        yield path
    finally:  # never leave a test's processes behind, whatever the code under test did
        subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "down", "-i", str(path)], cwd=tmp_path,
                       capture_output=True, timeout=60, check=False)


def test_demo_run_backs_up_restores_matching_rows_and_stops_everything(inventory):
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "run", "-i", str(inventory), "-o", "json"],
                            cwd=inventory.parent, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == ExitCode.OK, result.stderr
    data = json.loads(result.stdout)["data"]
    assert data["backup"]["status"] == "succeeded"
    assert [(n["node"], n["mismatches"]) for n in data["restore"]["nodes"]] == [
        ("node1", []), ("node2", []), ("node3", [])]
    assert not any(node["running"] for node in data["demo_down"]["nodes"])
    assert processes_naming(inventory.parent) == []


def test_a_demo_run_stopped_by_sigterm_as_it_starts_stops_everything_it_started(inventory):
    # The agents and the writer are up, then SIGTERM: before anything else of the run.
    result = snapctl_sigtermed_after("snapctl.demo", "up", "demo", "run", "-i", str(inventory), "-o", "json",
                                     cwd=inventory.parent)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert result.stderr.splitlines()[-1] == "snapctl: error: interrupted (SIGTERM)"
    assert json.loads(result.stdout) == {"schema_version": 1, "error": "interrupted (SIGTERM)",
                                         "hint": None, "exit_code": ExitCode.INTERRUPTED}  # the one document
    assert processes_naming(inventory.parent) == []


def test_demo_down_never_stops_a_process_that_only_reuses_a_demo_pid(inventory):
    # `demo down` SIGTERMed, then SIGKILLed, whatever process had the pid in its files: after a
    # reboot or a long while, a reused pid, or a pid file planted in the demo's directory.
    state = inventory.parent / ".snapctl-demo"
    state.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for pid_file in ("node1.pid", "node2.pid", "node3.pid", demo.WRITER_PID):
            (state / pid_file).write_text(str(bystander.pid))
        result = subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "down", "-i", str(inventory), "-o",
                                 "json"], cwd=inventory.parent, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == ExitCode.OK, result.stderr
        assert bystander.poll() is None, "a process the demo never started was stopped"
        assert [n["pid"] for n in json.loads(result.stdout)["data"]["nodes"]] == [None, None, None]
        assert not any(state.glob("*.pid"))  # stale: removed
    finally:
        bystander.kill()
        bystander.wait()


def _agent_port(inventory: Path, node: str) -> int:
    url = next(n["agent"] for n in yaml.safe_load(inventory.read_text())["nodes"] if n["name"] == node)
    return int(url.rsplit(":", 1)[1])


def _agent_line(inventory: Path, node: str) -> int:
    """The line of the node's ``agent:`` in the inventory file."""
    lines = inventory.read_text().splitlines()
    named = next(i for i, line in enumerate(lines) if f"name: {node}" in line)
    return next(i for i in range(named - 1, len(lines)) if "agent:" in lines[i]) + 1


def _demo(*args: str, inventory: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", *args, "-i", str(inventory)],
                          cwd=inventory.parent, capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def _port_taken(port: int) -> Iterator[None]:
    """Another process's listening socket on ``port``, as a second demo or any server has it."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))
        sock.listen()
        yield


def test_demo_up_with_an_agent_port_taken_fails_at_once_with_the_agents_error_and_stops_what_it_started(inventory):
    port = _agent_port(inventory, "node2")
    with _port_taken(port):
        started = time.monotonic()
        result = _demo("up", inventory=inventory)
        took = time.monotonic() - started
        left = processes_naming(inventory.parent)

    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    assert took < demo.START_TIMEOUT_S / 2, f"waited {took:.1f}s for an agent that had exited"
    error, hint = result.stderr.strip().splitlines()
    assert error.startswith(f"snapctl: error: demo agent node2 exited: snapctl-agent: error: cannot listen on "
                            f"{LOOPBACK}:{port}: address already in use"), result.stderr
    assert error.endswith(": address already in use; stopped what it had started: the agents of node1 and node3, "
                          "and the writer")
    # Not the agent's own "pick another --port": the demo has no --port, its inventory sets each port.
    assert "--port" not in result.stderr
    assert hint == (f"  hint: stop what uses it, or set node node2's agent: http://{LOOPBACK}:{port} "
                    f"({inventory}:{_agent_line(inventory, 'node2')}) to a free port; "
                    f"see {inventory.parent / '.snapctl-demo' / 'node2.agent.log'}")
    assert left == []
    # Nothing is left to get in the way: with the port free, the next `demo up` starts every node.
    again = _demo("up", "-o", "json", inventory=inventory)
    assert again.returncode == ExitCode.OK, again.stderr
    assert [n["running"] for n in json.loads(again.stdout)["data"]["nodes"]] == [True, True, True]


def test_demo_up_does_not_take_another_servers_answer_on_an_agents_port_for_its_agent(inventory):
    # Another demo's agent, or any server answering 200 to every GET: its /v1/health is not node2's.
    port = _agent_port(inventory, "node2")

    class AnswersEverything(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok", "agent_version": "0.1.0", "node": "elsewhere"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, port), AnswersEverything)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = _demo("up", inventory=inventory)
        left = processes_naming(inventory.parent)
    finally:
        server.shutdown()
        server.server_close()

    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    assert f"demo agent node2 exited: snapctl-agent: error: cannot listen on {LOOPBACK}:{port}" in result.stderr
    assert left == []


@pytest.mark.parametrize("keep", [False, True], ids=["run", "run-keep"])
def test_a_demo_run_whose_agent_cannot_start_stops_everything_it_started(inventory, keep):
    with _port_taken(_agent_port(inventory, "node3")):
        result = _demo("run", *(["--keep"] if keep else []), inventory=inventory)
        left = processes_naming(inventory.parent)

    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    assert "snapctl: error: demo agent node3 exited: snapctl-agent: error: cannot listen on" in result.stderr
    assert "; stopped what it had started: the agents of node1 and node2, and the writer" in result.stderr
    assert left == []


def test_a_demo_up_stopped_by_sigterm_as_it_starts_its_agents_stops_those_it_started(inventory):
    # SIGTERM once node1's agent is started, before the others are.
    result = snapctl_sigtermed_after("snapctl.demo", "_spawn", "demo", "up", "-i", str(inventory),
                                     cwd=inventory.parent)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert processes_naming(inventory.parent) == []


def test_demo_up_where_its_inventory_is_not_says_how_to_run_it_from_anywhere(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "SNAPCTL_INVENTORY"}
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "up"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == ExitCode.BAD_INPUT
    example = Path(demo.__file__).resolve().parents[1] / "inventory.example.yaml"
    assert example.is_file()  # the tests run from a clone, as the demo does
    assert result.stderr.splitlines() == [
        f"snapctl: error: inventory.example.yaml: inventory file not found in {tmp_path}",
        (f"  hint: pass -i {example}, or run the demo from {example.parent}; it keeps its state beside its "
         "inventory, in .snapctl-demo/")]
    assert list(tmp_path.iterdir()) == []  # nothing made here


def test_demo_up_checks_every_node_before_it_starts_any(inventory):
    data = yaml.safe_load(inventory.read_text())
    data["nodes"][1]["agent"] = "http://192.0.2.7:7700"  # TEST-NET-1: the demo refuses it, asking nothing
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))

    result = _demo("up", inventory=inventory)

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "node node2: the demo runs agents on loopback" in result.stderr
    assert processes_naming(inventory.parent) == []  # node1's agent was started, and left running


def test_demo_up_reads_its_token_file_as_the_agents_do_its_first_line(inventory):
    # A note on the token file's second line: the agents and snapctl send the first line only, so
    # must the demo's wait for its agents, or it waits 20 s for agents that are up.
    token_file = inventory.parent / yaml.safe_load(inventory.read_text())["auth"]["token_file"]
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("demo-token-0f3c9a71e2\nrotated on the 1st by ops\n")
    token_file.chmod(0o600)

    started = _demo("up", inventory=inventory, timeout=60)

    assert started.returncode == ExitCode.OK, started.stderr
    status = subprocess.run([sys.executable, "-m", "snapctl.cli", "status", "-i", str(inventory), "-o", "json"],
                            cwd=inventory.parent, capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(status.stdout)["data"]["verdict"]["level"] != "critical", status.stdout


def test_a_node_named_writer_keeps_its_own_agent_beside_the_demos_writer(inventory):
    # The writer's pid file was writer.pid, the agent of a node named `writer` had the same: `demo
    # up` took the writer for that node's agent (or the other way round) and `demo down` stopped one.
    data = yaml.safe_load(inventory.read_text())
    node = data["nodes"][0]
    node["name"] = "writer"
    node["engine"]["path"] = ".snapctl-demo/writer/data/demo.db"
    node["volumes"][0]["path"] = ".snapctl-demo/writer/data"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))

    started = _demo("up", inventory=inventory, timeout=60)

    assert started.returncode == ExitCode.OK, started.stderr
    running = processes_naming(inventory.parent)
    assert sum("node_agent.main" in cmd for cmd in running) == 3
    assert sum("snapctl.demo_writer" in cmd for cmd in running) == 1
    stopped = _demo("down", inventory=inventory, timeout=60)
    assert stopped.returncode == ExitCode.OK, stopped.stderr
    assert processes_naming(inventory.parent) == []


def test_demo_up_with_an_agent_left_running_under_another_token_says_so_at_once(inventory):
    # The kept agent read the old token when it started; it refused the new one for 20 s, and
    # `demo up` then said only that the agent "did not become healthy".
    assert _demo("up", inventory=inventory, timeout=60).returncode == ExitCode.OK
    token_file = inventory.parent / yaml.safe_load(inventory.read_text())["auth"]["token_file"]
    token_file.write_text("another-token-made-since-7d1e0c\n")

    began = time.monotonic()
    again = _demo("up", inventory=inventory, timeout=60)

    assert again.returncode != ExitCode.OK
    assert time.monotonic() - began < 10  # not the 20 s wait for a healthy agent
    error, hint = again.stderr.strip().splitlines()[-2:]
    assert "demo agent node1, left running by an earlier `demo up`, refuses the demo's token" in error, again.stderr
    assert hint.strip() == "hint: run `snapctl demo down`, then `snapctl demo up`"
    assert "another-token" not in again.stderr
    assert _demo("down", inventory=inventory, timeout=60).returncode == ExitCode.OK
    assert processes_naming(inventory.parent) == []


def test_demo_down_stops_a_writer_started_under_its_old_pid_file(inventory):
    # The writer's pid file was writer.pid until it became _writer.pid: a demo started before that
    # kept its writer running after `demo down`.
    assert _demo("up", inventory=inventory, timeout=60).returncode == ExitCode.OK
    state = inventory.parent / ".snapctl-demo"
    (state / demo.WRITER_PID).rename(state / "writer.pid")

    assert _demo("down", inventory=inventory, timeout=60).returncode == ExitCode.OK
    assert processes_naming(inventory.parent) == []


def _production_database(path: Path) -> bytes:
    """A real application's SQLite database (rollback journal, its own table); its bytes, to show
    nothing was written to it."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib_closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL)")
        conn.execute("INSERT INTO accounts (owner) VALUES ('ada')")
        conn.commit()
    return path.read_bytes()


def _production_inventory(directory: Path, database: str) -> Path:
    path, _ = make_inventory(directory)
    data = yaml.safe_load(path.read_text())
    for node in data["nodes"]:
        node["engine"]["path"] = database.replace("NODE", node["name"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_demo_up_never_reads_snapctl_inventory_the_real_clusters(tmp_path):
    # $SNAPCTL_INVENTORY names the real cluster's inventory for every other command; `demo up` read
    # it too, switched its databases to WAL, added the demo's table and started a writer on them.
    production = tmp_path / "prod"
    database = production / "db" / "node1.db"
    before = _production_database(database)
    path = _production_inventory(production, str(production / "db" / "NODE.db"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        result = subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "up"], cwd=elsewhere,
                                env={**os.environ, "SNAPCTL_INVENTORY": str(path)},
                                capture_output=True, text=True, timeout=60, check=False)
        left = processes_naming(production)
    finally:
        subprocess.run([sys.executable, "-m", "snapctl.cli", "demo", "down", "-i", str(path)], cwd=production,
                       capture_output=True, timeout=60, check=False)

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"snapctl: error: inventory.example.yaml: inventory file not found in {elsewhere}")
    assert database.read_bytes() == before
    assert left == []


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_demo_up_refuses_a_database_it_did_not_make_and_writes_nothing_to_it(tmp_path, where):
    # Given the real inventory by -i: its databases are outside the demo's state directory, or (a
    # real database copied there) inside it with tables of its own. Either way `demo up` changed it.
    production = tmp_path / "prod"
    database = (production / "db" / "node1.db" if where == "outside"
                else production / ".snapctl-demo" / "node1" / "data" / "demo.db")
    before = _production_database(database)
    path = _production_inventory(production, str(database).replace("node1", "NODE"))

    try:
        result = _demo("up", inventory=path, timeout=60)
        json_result = _demo("run", "-o", "json", inventory=path, timeout=60)
        left = processes_naming(production)
    finally:
        _demo("down", inventory=path, timeout=60)

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    error, hint = result.stderr.splitlines()
    why = ("the demo's databases live in" if where == "outside"
           else "it holds accounts, not only the demo's table events")
    assert error.startswith(f"snapctl: error: node node1: {database} is not a demo database: "), error
    assert why in error
    assert hint.startswith("  hint: ")
    assert json_result.returncode == ExitCode.BAD_INPUT
    assert list(json.loads(json_result.stdout)) == ["schema_version", "error", "hint", "exit_code"]  # the one document
    assert database.read_bytes() == before
    assert not database.with_name(database.name + "-wal").exists()
    assert left == []


def test_demo_up_again_accepts_the_databases_it_made(inventory):
    # The check reads a database the demo made (its writer's table alone) as the demo's own: a
    # second `demo up`, and `demo down`, still work on a cluster that is running and written to.
    assert _demo("up", inventory=inventory, timeout=60).returncode == ExitCode.OK
    again = _demo("up", inventory=inventory, timeout=60)
    assert again.returncode == ExitCode.OK, again.stderr
    assert _demo("down", inventory=inventory, timeout=60).returncode == ExitCode.OK
    assert processes_naming(inventory.parent) == []
