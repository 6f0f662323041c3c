"""A request handler class served on 127.0.0.1 in a thread, for the tests whose other end is no
agent and no cloud (a proxy, another service on an agent's port): one place for the start and
the shutdown. And handlers for what the network or the cloud does to answers: cut them short,
or answer some requests itself in front of a real server."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import LOOPBACK


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Yields the server's base URL; shuts it down on the way out."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def cut_short(*, truncated: bool) -> type[BaseHTTPRequestHandler]:
    """A server whose every answer the network cut short: 200 with an empty body, or (``truncated``)
    the first bytes of a longer one and then the connection closed, as a dropped link leaves it."""

    class CutShort(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "500" if truncated else "0")
            self.end_headers()
            if truncated:
                self.wfile.write(b'{"name": "snap1", "sta')
                self.close_connection = True

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args) -> None:
            pass

    return CutShort


Answer = tuple[int, str, bytes]  # status, content type, body
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def in_front_of(upstream: str, answer: Callable[[str, bytes], Answer | None],
                late_s: Callable[[bytes], float] = lambda body: 0) -> type[BaseHTTPRequestHandler]:
    """A server that passes each request on to ``upstream`` (``http://127.0.0.1:PORT``) and its
    answer back, except those ``answer(path, body)`` answers itself: a cloud's front end failing.
    ``late_s(body)``: seconds to hold the upstream's answer back, done by then (a slow way back)."""
    host, port = upstream.removeprefix("http://").rsplit(":", 1)

    class InFrontOf(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _pass(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            own = answer(self.path, body)
            if own is None:
                own = self._upstream(body)
                time.sleep(late_s(body))
            status, content_type, payload = own
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped waiting (its read timed out)

        def _upstream(self, body: bytes) -> Answer:
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheader("Content-Type") or "text/plain", response.read()
            finally:
                connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = _pass

        def log_message(self, *args) -> None:
            pass

    return InFrontOf
