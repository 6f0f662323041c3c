"""The common part of the engine fakes (QuestDB, DingoDB, AresDB).

Each fake is a ``FakeServer``: a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a daemon
thread, with a ``hang()`` mode that accepts connections and never answers, the failure every
adapter's timeouts must survive. Use them as context managers so every test stops its servers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # act first, answer this much later (a reply lost to the client's timeout)
    drop: bool = False  # close the connection without answering (a reply lost to a reset)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def text(cls, text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, text.encode(), {"Content-Type": "text/plain", **(headers or {})})


class FakeServer:
    """Subclasses implement ``handle(request) -> Response``; every request is logged in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self._hanging = threading.Event()
        self._release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(self.command, parts.path, query, headers, body)
                if fake._hanging.is_set():
                    fake._release.wait()
                    self.close_connection = True
                    return
                fake.before_handling(request)
                with fake.lock:
                    fake.requests.append(request)
                    response = fake.handle(request)
                if response.drop:
                    self.close_connection = True  # received, never answered
                    return
                if response.delay_s:
                    time.sleep(response.delay_s)
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up waiting: what delay_s is for

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._handler = Handler
        self._listen(0)

    def _listen(self, port: int) -> None:
        self._server = ThreadingHTTPServer((LOOPBACK, port), self._handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def before_handling(self, request: Request) -> None:
        """Runs outside the lock, before ``handle``: a request a server keeps waiting here does not
        keep the others waiting (one whose handler blocks, as AresDB's snapshot submit does)."""

    @contextlib.contextmanager
    def hang(self) -> Iterator[None]:
        """Accept connections and never answer until the block ends."""
        self._release.clear()
        self._hanging.set()
        try:
            yield
        finally:
            self._hanging.clear()
            self._release.set()

    def stop_listening(self) -> None:
        """New connections are refused from now on (a server gone down); those open stay served.
        Safe to call from ``handle``: the listening loop runs in a thread of its own."""
        self._server.shutdown()
        self._server.socket.close()

    def listen_again(self) -> None:
        """Accept connections again on the same port (the server back up)."""
        self._thread.join(timeout=5)
        self._listen(self.port)
        self._thread.start()

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._hanging.clear()
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
