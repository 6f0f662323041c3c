"""One moto server per test process (per xdist worker), shared by every AWS-backed test.

boto3 talks to it over real HTTP on 127.0.0.1. The server runs in this process, so tests can
reach moto's backends directly (e.g. to put a snapshot in ``pending`` or ``error``).

Use the ``moto_server`` fixture (``tests/providers/aws/conftest.py`` registers it, plus a reset
between tests), or call ``shared_moto_server()`` where no fixture reaches, e.g. a contract env.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

LOOPBACK = "127.0.0.1"
DEFAULT_REGION = "us-east-1"

# Dummy credentials: moto accepts anything, and a developer's real ones must never be used.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": DEFAULT_REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class MotoServer:
    """A started ``ThreadedMotoServer`` bound to 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        # Read by moto when the EC2 backend is first built; without it ~1,300 AMI snapshots
        # show up as owned by "self".
        os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self._seen: list[tuple[str, str]] | None = None
        wsgi = self._server._server  # moto offers no hook of its own for a request's headers
        wsgi.app = self._recorded(wsgi.app)

    def _recorded(self, app: Any) -> Any:
        def recorded(environ: dict[str, Any], start_response: Any) -> Any:
            if (seen := self._seen) is not None and environ.get("REQUEST_METHOD") == "POST":
                body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                environ["wsgi.input"] = io.BytesIO(body)
                action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
                seen.append((action, environ.get("HTTP_USER_AGENT", "")))
            return app(environ, start_response)

        return recorded

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[tuple[str, str]]]:
        """Each query-protocol request (EC2's) received meanwhile, as (Action, User-Agent): which
        SDK made a call, say boto3 or aiobotocore, as only the server sees it."""
        self._seen = seen = []
        try:
            yield seen
        finally:
            self._seen = None

    def reset(self) -> None:
        """Forget every resource in every backend (moto's own reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def ec2_backend(self, region: str = DEFAULT_REGION) -> Any:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        return ec2_backends[DEFAULT_ACCOUNT_ID][region]

    def stop(self) -> None:
        self._server.stop()


_lock = threading.Lock()
_server: MotoServer | None = None


def shared_moto_server() -> MotoServer:
    """The process's moto server, started on first use and stopped at interpreter exit."""
    global _server
    with _lock:
        if _server is None:
            _server = MotoServer()
            atexit.register(_server.stop)
        return _server


@contextlib.contextmanager
def dummy_aws_credentials() -> Iterator[None]:
    """Point the SDK's credential chain at dummy values for the duration, then restore."""
    saved = {key: os.environ.get(key) for key in DUMMY_AWS_ENV}
    os.environ.update(DUMMY_AWS_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
