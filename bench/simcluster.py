"""A simulated cluster of N nodes: agents as HTTP servers on loopback, a few processes serving many ports.

Two agent stacks, same wire API (``--agent-stack``):

- ``lean`` (the default): ``bench.leanagent``, the agent's /v1 API and lease rules on a bare
  asyncio protocol, ~50 µs of CPU per request. In a real cluster every agent has a host of its
  own; here 1000 agents share snapctl's 2 cores, so their CPU must stay small for the benchmark to
  measure snapctl.
- ``real``: the real agent stack (``node_agent.app.create_app`` over an ``AgentService`` with the
  bearer token) around the simulated engine, one uvicorn server per process with one port per
  node. ~1 ms of CPU per request: at 1000 nodes that is what the run measures.

Either way a run over 1000 nodes makes 1000 real HTTP connections without 1000 processes.

    python -m bench.simcluster serve --nodes n1,n2 --prepare-latency 0.05   # one server process
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from bench.common import REPO, raise_open_files_limit, use_bench_plugins

TOKEN_ENV = "SNAPCTL_BENCH_AGENT_TOKEN"
# Optional packages for the simulated agents only (kept out of the project's venv so that no test
# of the real agent changes behaviour): `pip install --target DIR httptools uvloop`. uvicorn then
# parses HTTP in C and runs on libuv, which frees CPU for snapctl on a 2-core machine that hosts
# all N agents at once; real agents each have a host of their own.
AGENT_DEPS = Path(os.environ.get("SNAPCTL_BENCH_AGENT_DEPS", Path.home() / ".cache" / "snapctl-bench-deps"))
NODES_PER_PROCESS = 250


_serving: ContextVar[Any] = ContextVar("serving")


class _ServiceOfThisRequest:
    """Stands in for one ``AgentService`` inside the shared app: every attribute is that of the
    service of the node whose port the current request arrived on."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_serving.get(), name)


class ByLocalPort:
    """ASGI: one real agent app (``create_app``) shared by every node of this process, each request
    served by the ``AgentService`` of the port it arrived on. One app instead of one per node only
    saves start-up time; each node keeps its own service, lease and engine."""

    def __init__(self, app: Any, services: dict[int, Any]) -> None:
        self.app = app
        self.services = services
        self._threads_sized = False

    async def __call__(self, scope, receive, send) -> None:
        if not self._threads_sized:
            # A real agent is a process of its own with its own worker threads; here many share
            # one process, so they share a pool big enough that no node waits for another's thread.
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = max(40, len(self.services) + 8)
            self._threads_sized = True
        if scope["type"] == "lifespan":
            return
        _serving.set(self.services[scope["server"][1]])  # this request's task only
        await self.app(scope, receive, send)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _listen() -> socket.socket:
    # proto must say TCP: asyncio sets TCP_NODELAY only on such sockets, and without it every
    # response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def serve_lean(nodes: list[str], prepare_latency_s: float, complete_latency_s: float,
               tls_files: list[str] | None = None) -> int:
    import asyncio
    import ssl

    from bench.leanagent import serve_lean as serve_nodes

    raise_open_files_limit()
    sockets = {node: _listen() for node in nodes}
    stack = "lean+uvloop" if _importable("uvloop") else "lean+asyncio"
    tls = None
    if tls_files:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*tls_files)
        stack += "+tls"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        serving = asyncio.create_task(serve_nodes(sockets, os.environ[TOKEN_ENV], prepare_latency_s,
                                                  complete_latency_s, stop, tls))
        await asyncio.sleep(0)  # the servers are created before the parent hears the ports
        gc.collect()  # then frozen out of the collector's scans, as the real agent does before it serves
        gc.freeze()
        ports = {node: sock.getsockname()[1] for node, sock in sockets.items()}
        print(json.dumps({"ports": ports, "stack": stack}), flush=True)
        await serving

    if stack.endswith("uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return 0


def serve(nodes: list[str], prepare_latency_s: float, complete_latency_s: float) -> int:
    import uvicorn

    from bench.sim import SimEngine, SimEngineSettings
    from node_agent.app import create_app
    from node_agent.service import AgentService

    raise_open_files_limit()
    token = os.environ[TOKEN_ENV]
    settings = SimEngineSettings(prepare_latency_s=prepare_latency_s, complete_latency_s=complete_latency_s)
    sockets, services, ports = [], {}, {}
    for node in nodes:
        sock = _listen()
        port = sock.getsockname()[1]
        sockets.append(sock)
        services[port] = AgentService(node, SimEngine(settings, base_dir=Path.cwd()))
        ports[node] = port
    # The agent's per-client request limit is per agent; here one app serves many agents, so one
    # limiter would wrongly pool every node's calls. A run makes ~3 calls per agent: far below it.
    limits = {"rate_per_s": None} if "rate_per_s" in inspect.signature(create_app).parameters else {}
    app = ByLocalPort(create_app(_ServiceOfThisRequest(), token, **limits), services)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off",
                                           access_log=False, server_header=False, backlog=1024))

    def stop(_signum, _frame) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stack = "+".join(m for m in ("httptools", "uvloop") if _importable(m)) or "h11+asyncio"
    gc.collect()  # frozen out of the collector's scans, as the real agent does before it serves; before
    gc.freeze()  # the ports are printed, so that no run the parent starts meets this collection
    print(json.dumps({"ports": ports, "stack": stack}), flush=True)  # the parent waits for this: all bound
    try:
        server.run(sockets=sockets)
    finally:
        for service in services.values():
            service.close()
    return 0


@dataclass
class SimCluster:
    """N simulated agents plus an inventory for them. Use as a context manager: every process it
    started is stopped on exit."""

    nodes: int
    prepare_latency_s: float = 0.05
    complete_latency_s: float = 0.0
    processes: int | None = None
    provider: dict[str, Any] = field(default_factory=lambda: {"type": "sim"})
    policy: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    stack: str = "lean"  # "lean" (bench.leanagent) or "real" (the agent's FastAPI app); see the docstring
    volumes_of: Callable[[str], list[Any]] | None = None  # node name -> its volumes block (default: ["data"])
    tls: bool = False  # lean agents over TLS, with a throwaway CA's certificate (auth.ca_file in the inventory)
    agent_stack: str = ""  # what served, as the agent processes reported it (e.g. lean+uvloop, httptools+uvloop)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _pki: Any = None

    def __enter__(self) -> Self:
        use_bench_plugins()
        raise_open_files_limit()
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="snapctl-bench-")
            self.directory = Path(self._tmp.name)
        self.token = secrets.token_urlsafe(24)
        (self.directory / "agent-token").write_text(self.token + "\n")
        os.chmod(self.directory / "agent-token", 0o600)
        names = [f"node{i:04d}" for i in range(1, self.nodes + 1)]
        count = self.processes or max(1, math.ceil(self.nodes / NODES_PER_PROCESS))
        env = {**os.environ, TOKEN_ENV: self.token}
        tls_args: list[str] = []
        if self.tls:
            if self.stack != "lean":
                raise ValueError("tls: the lean agent stack only")
            from tests.agent.certs import make_pki  # the throwaway CA the TLS tests use

            self._pki = make_pki(self.directory / "pki")
            tls_args = ["--tls-cert", str(self._pki.server_cert), "--tls-key", str(self._pki.server_key)]
        if AGENT_DEPS.is_dir():
            env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), str(AGENT_DEPS)]).strip(os.pathsep)
        try:
            for part in range(count):
                chunk = names[part::count]
                if not chunk:
                    continue
                self._procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.simcluster", "serve", "--nodes", ",".join(chunk),
                     "--agent-stack", self.stack,
                     "--prepare-latency", str(self.prepare_latency_s),
                     "--complete-latency", str(self.complete_latency_s), *tls_args],
                    stdout=subprocess.PIPE, text=True, env=env, cwd=REPO))
            for proc in self._procs:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"simulated agent process {proc.pid} exited with {proc.wait()}")
                answer = json.loads(line)
                self.ports.update(answer["ports"])
                self.agent_stack = answer["stack"]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.ports = {name: self.ports[name] for name in names}
        self.write_inventory()
        return self

    def __exit__(self, *_exc) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def inventory_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "inventory.yaml"

    @property
    def agent_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def write_inventory(self, provider: dict[str, Any] | None = None, **policy: Any) -> Path:
        """(Re)write the inventory; ``policy`` entries override the defaults of this cluster, and
        ``provider`` entries its provider's settings."""
        wanted = {"lease_ttl_s": "60s", "max_freeze_s": "600s", "agent_timeout_s": "60s",
                  "prepare_timeout_s": "120s", "snapshot_timeout_s": "600s", "lock_ttl_s": "600s",
                  "concurrency": max(64, self.nodes), **self.policy, **policy}
        inventory = {
            "cluster": "bench",
            "provider": {**self.provider, **(provider or {})},
            "catalog": {"path": "catalog"},
            "auth": {"token_file": "agent-token", "token_env": None,
                     **({"ca_file": str(self._pki.ca)} if self.tls else {})},
            "policy": wanted,
            "rpo": "24h",
            "nodes": [{"name": name, "agent": f"{'https' if self.tls else 'http'}://127.0.0.1:{port}",
                       "engine": {"type": "sim"},
                       "volumes": self.volumes_of(name) if self.volumes_of else ["data"]}
                      for name, port in self.ports.items()],
        }
        self.inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        return self.inventory_path

    def inventory(self, provider: dict[str, Any] | None = None, **policy: Any):
        from snapctl.config import load_inventory

        return load_inventory(self.write_inventory(provider, **policy))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="serve simulated agents (one per port) until SIGTERM")
    serve_cmd.add_argument("--nodes", required=True, help="comma-separated node names")
    serve_cmd.add_argument("--prepare-latency", type=float, default=0.05)
    serve_cmd.add_argument("--complete-latency", type=float, default=0.0)
    serve_cmd.add_argument("--agent-stack", choices=("lean", "real"), default="lean")
    serve_cmd.add_argument("--tls-cert", help="lean stack: serve over TLS with this certificate ...")
    serve_cmd.add_argument("--tls-key", help="... and its key")
    args = parser.parse_args(argv)
    if args.agent_stack == "lean":
        tls_files = [args.tls_cert, args.tls_key] if args.tls_cert else None
        return serve_lean(args.nodes.split(","), args.prepare_latency, args.complete_latency, tls_files)
    return serve(args.nodes.split(","), args.prepare_latency, args.complete_latency)


if __name__ == "__main__":
    sys.exit(main())
