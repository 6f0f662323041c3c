"""The process that serves the run's one moto server (see tests/moto_server.py): moto's own
``ThreadedMotoServer`` behind a front that files each request under the account of the key that
signed it, and answers the control API the tests' handles call.

Two changes to moto itself, made once for the whole server:

- S3 documents that of several racing ``PutObject`` calls with ``If-None-Match: *`` (or the same
  ``If-Match`` ETag) exactly one succeeds. moto 5 checks the condition and stores the object as
  two steps, unlocked, on a threaded server: racing writers could both pass (seen: 1 race in 100
  with 8 threads). Its PutObject handler is serialised, which is what S3 promises; without it a
  race test would be testing moto, not snapctl.
- EBS snapshots of an account that asked for it start ``pending`` (``new-snapshots-pending``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from typing import Any

from tests.fakes.callers import senders
from tests.moto_server import account_of, signed_by

_CONTROL = "/_snapctl-test/"


class MotoHost:
    """A started ``ThreadedMotoServer`` on ``address``, a free port, stopped at interpreter exit."""

    def __init__(self, address: str) -> None:
        # Read by moto when the EC2 backend is first built; without it ~1,300 AMI snapshots
        # show up as owned by "self".
        os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
        os.environ.pop("MOTO_ACCOUNT_ID", None)  # it would outrank the account each key signs into
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
        self._lock = threading.Lock()
        self._recordings: dict[str, list[tuple[str, str]]] = {}  # account -> (Action, User-Agent)
        self._pending_accounts: set[str] = set()
        # account -> (Action, the sending processes of each such request); a /proc scan per request
        self._senders: dict[str, tuple[str, list[list[tuple[int, ...]]]]] = {}
        self._server = ThreadedMotoServer(ip_address=address, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self._address = (host, port)
        wsgi = self._server._server  # moto offers no hook of its own for a request's headers
        wsgi.app = self._front(wsgi.app)
        _serialise_s3_puts()
        _new_snapshots_pending_for(self._pending_accounts)
        atexit.register(self._server.stop)

    def _front(self, app: Any) -> Any:
        def front(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO", "").startswith(_CONTROL):
                return self._answer_control(environ, start_response)
            key = signed_by(environ.get("HTTP_AUTHORIZATION", ""))
            if key is None:
                return app(environ, start_response)  # unsigned: moto's default account
            account = environ["HTTP_X_MOTO_ACCOUNT_ID"] = account_of(key)
            if (seen := self._recordings.get(account)) is not None and environ.get("REQUEST_METHOD") == "POST":
                seen.append(_action_and_agent(environ))
            if (watched := self._senders.get(account)) is not None and environ.get("REQUEST_METHOD") == "POST":
                if _action_and_agent(environ)[0] == watched[0]:  # now, while the client waits on the connection
                    watched[1].append(senders((environ["REMOTE_ADDR"], int(environ["REMOTE_PORT"])), self._address))
            return app(environ, start_response)

        return front

    def _answer_control(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        action = environ["PATH_INFO"][len(_CONTROL):]
        fields = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) or b"{}")
        try:
            answer = getattr(self, "_" + action.replace("-", "_"))(**fields)
            status = "200 OK"
        except KeyError as exc:
            answer, status = {"error": f"not found: {exc}"}, "404 Not Found"
        body = json.dumps(answer or {}).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _reset(self, account: str) -> None:
        from moto.core.base_backend import BackendDict, backend_lock
        from moto.s3.models import FakeBucket, s3_backends

        with backend_lock:
            for service in list(BackendDict._instances):
                gone = service.pop(account, None)
                if gone is None or service is not s3_backends:
                    continue
                # Not S3Backend.reset(): that disposes of every account's object bodies.
                for backend in gone.values():
                    for bucket in list(backend.buckets.values()):
                        assert isinstance(bucket, FakeBucket)
                        for key in bucket.keys.values():
                            key.dispose()
                        for part in bucket.multiparts.values():
                            part.dispose()
                        s3_backends.bucket_accounts.pop(bucket.name, None)
        with self._lock:
            self._recordings.pop(account, None)
            self._pending_accounts.discard(account)

    def _set_snapshot(self, account: str, region: str, snapshot_id: str, status: str | None,
                      progress: str | None, state_message: str | None) -> None:
        snapshot = _ec2(account, region).snapshots[snapshot_id]
        if status is not None:
            snapshot.status = status
        if progress is not None:
            snapshot.Progress = progress  # moto serializes this attribute before its fixed "100%"
        if state_message is not None:
            snapshot.state_message = state_message

    def _snapshot_ids(self, account: str, region: str) -> dict[str, list[str]]:
        return {"ids": sorted(_ec2(account, region).snapshots)}

    def _new_snapshots_pending(self, account: str, on: bool) -> None:
        with self._lock:
            (self._pending_accounts.add if on else self._pending_accounts.discard)(account)

    def _record(self, account: str, on: bool) -> dict[str, list[tuple[str, str]]]:
        with self._lock:
            if on:
                self._recordings[account] = []
                return {}
            return {"seen": self._recordings.pop(account, [])}

    def _senders_of(self, account: str, of: str, on: bool) -> dict[str, list[list[list[int]]]]:
        with self._lock:
            if on:
                self._senders[account] = (of, [])
                return {}
            return {"senders": self._senders.pop(account, (of, []))[1]}


def _ec2(account: str, region: str) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[account][region]


def _action_and_agent(environ: dict[str, Any]) -> tuple[str, str]:
    import io
    import urllib.parse

    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
    return action, environ.get("HTTP_USER_AGENT", "")


def _serialise_s3_puts() -> None:
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    put_lock = threading.Lock()

    def serialised(self: Any) -> Any:
        with put_lock:
            return original(self)

    S3Response.put_object = serialised  # type: ignore[method-assign]


def _new_snapshots_pending_for(accounts: set[str]) -> None:
    from moto.ec2.models.elastic_block_store import Snapshot

    made_completed = Snapshot.__init__

    def made(self: Any, ec2_backend: Any, *args: Any, **kwargs: Any) -> None:
        made_completed(self, ec2_backend, *args, **kwargs)
        if ec2_backend.account_id in accounts:
            self.status = "pending"  # uploading, until the test says otherwise

    Snapshot.__init__ = made  # type: ignore[method-assign]
