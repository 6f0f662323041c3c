"""The common part of the cloud fakes: a JSON-over-HTTP server on 127.0.0.1 in a thread, a log
of every request it answered, and injectable faults (throttling, denial, failures after commit,
connections dropped without an answer). On request (``record_senders``), which processes sent each
request (``tests/fakes/callers.py``): what an SDK cannot be asked to say.

Subclasses implement ``route`` (the cloud's wire format) and ``error_body`` (its error shape).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.callers import senders

LOOPBACK = "127.0.0.1"

Reply = tuple[int, Any, dict[str, str]]  # status, JSON body (None: empty), extra headers
DROP: Reply = (0, None, {})  # no answer: the connection is closed, as a network blip ends it


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``status`` instead of the real reply.

    ``after_commit`` applies the request first and then answers with the fault: what a client
    sees when a response is lost after the server acted, the case idempotency keys exist for.
    """

    status: int
    times: int = 1
    retry_after: float | None = None
    method: str | None = None
    path_contains: str | None = None
    after_commit: bool = False
    message: str = "injected fault"
    extra: dict[str, Any] = field(default_factory=dict)

    def matches(self, method: str, path: str, after_commit: bool) -> bool:
        return (
            self.times > 0
            and self.after_commit == after_commit
            and (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
        )


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a client opening dozens of connections at once (an
    # async client's gathered creates) had the kernel drop the rest of its SYNs, each retried a
    # second or more later, for calls that took seconds instead of milliseconds.
    request_queue_size = 128


class JsonHttpFake:
    """Start with ``with Fake() as fake:`` (or start/stop); the base URL is ``fake.url``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self._faults: list[Fault] = []
        # (method, path, the sending processes' lines of descent) per request, while set: a /proc
        # scan each, so only where a test asks which process made a call.
        self.record_senders = False
        self.senders: list[tuple[str, str, list[tuple[int, ...]]]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> JsonHttpFake:
        server = _Server((LOOPBACK, 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=type(self).__name__,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "fake server not started"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    # --- faults and the request log ----------------------------------------------------------
    def inject(self, fault: Fault) -> Fault:
        with self.lock:
            self._faults.append(fault)
        return fault

    def throttle(self, times: int = 1, *, retry_after: float | None = 1, method: str | None = None,
                 path_contains: str | None = None) -> Fault:
        """HTTP 429 with Retry-After for the next ``times`` matching requests."""
        return self.inject(Fault(429, times, retry_after, method, path_contains, message="rate limit exceeded"))

    def drop(self, times: int = 1, *, method: str | None = None, path_contains: str | None = None) -> Fault:
        """Close the connection without an answer to the next ``times`` matching requests."""
        return self.inject(Fault(DROP[0], times, method=method, path_contains=path_contains))

    def requests_to(self, method: str | None = None, path_contains: str | None = None) -> list[Recorded]:
        with self.lock:
            return [
                r for r in self.requests
                if (method is None or r.method == method) and (path_contains is None or path_contains in r.path)
            ]

    def senders_of(self, method: str, path_contains: str) -> list[list[tuple[int, ...]]]:
        """The processes that sent each matching request since ``record_senders`` was set."""
        with self.lock:
            return [who for m, path, who in self.senders if m == method and path_contains in path]

    def _take_fault(self, method: str, path: str, *, after_commit: bool) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path, after_commit):
                    fault.times -= 1
                    return fault
        return None

    def fault_reply(self, fault: Fault) -> Reply:
        if fault.status == DROP[0]:
            return DROP
        headers = {"Retry-After": _seconds(fault.retry_after)} if fault.retry_after is not None else {}
        return fault.status, self.error_body(fault.status, fault.message, fault), headers

    # --- for subclasses ----------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def error_body(self, status: int, message: str, fault: Fault | None = None) -> Any:
        raise NotImplementedError

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> Reply:
        parts = urlsplit(raw_path)
        path, query = parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            return 400, self.error_body(400, "request body is not JSON"), {}
        record = Recorded(method, path, query, body)
        reply = None
        fault = self._take_fault(method, path, after_commit=False)
        if fault is not None:
            reply = self.fault_reply(fault)
        else:
            with self.lock:
                reply = self.route(method, path, query, body, headers)
            late = self._take_fault(method, path, after_commit=True)
            if late is not None:
                reply = self.fault_reply(late)
        record.status = reply[0]
        with self.lock:
            self.requests.append(record)
        return reply


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection ends its thread instead of outliving the server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake: JsonHttpFake = self.server.fake  # type: ignore[attr-defined]
        if fake.record_senders:  # now, while the client still waits on the connection
            who = senders(self.client_address, self.server.server_address)
            with fake.lock:
                fake.senders.append((self.command, self.path, who))
        status, body, extra = fake.handle(self.command, self.path, headers, raw_body)
        if status == DROP[0]:
            self.close_connection = True
            return
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass
