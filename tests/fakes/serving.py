"""A request handler class served on 127.0.0.1 in a thread, for the tests whose other end is no
agent and no cloud (a proxy, another service on an agent's port): one place for the start and
the shutdown."""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
