"""EC2 error answers injected in front of moto through botocore's ``before-send`` event.

A ``before-send`` handler that returns a response short-circuits the HTTP call; botocore then
parses it exactly like a real EC2 error (and its retry handler sees it the same way).
"""

from __future__ import annotations

from typing import Any


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any):
        yield self._data


def ec2_error_body(code: str, message: str) -> bytes:
    """The body of an EC2 query-protocol error, as the real service sends it."""
    return (
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()


def ec2_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    """An EC2 query-protocol error response, as the real service sends it."""
    from botocore.awsrequest import AWSResponse

    body = ec2_error_body(code, message)
    return AWSResponse("https://ec2.amazonaws.com/", status, {"Content-Type": "text/xml", **(headers or {})}, _Body(body))


def empty_listing(action: str, item_set: str) -> Any:
    """EC2's answer to ``action`` that lists nothing (``item_set`` empty)."""
    from botocore.awsrequest import AWSResponse

    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>00000000-0000-0000-0000-000000000000</requestId><{item_set}/></{action}Response>").encode()
    return AWSResponse("https://ec2.amazonaws.com/", 200, {"Content-Type": "text/xml"}, _Body(body))


class FailFirst:
    """Answer the first ``times`` calls of an operation with an error, then let calls through."""

    def __init__(self, times: int, status: int, code: str, message: str = "injected", headers: dict[str, str] | None = None):
        self.times = times
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.calls = 0

    def __call__(self, **_: Any) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            return ec2_error(self.status, self.code, self.message, self.headers)
        return None


def inject(provider: Any, operation: str, fault: FailFirst) -> FailFirst:
    provider.client.meta.events.register(f"before-send.ec2.{operation}", fault)
    return fault


class _AioBody:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self) -> bytes:
        return self._data


class AioFailFirst(FailFirst):
    """``FailFirst`` answering as aiobotocore's HTTP session does (a body read with ``await``)."""

    def __call__(self, **_: Any) -> Any:
        from aiobotocore.awsrequest import AioAWSResponse

        self.calls += 1
        if self.calls <= self.times:
            body = _AioBody(ec2_error_body(self.code, self.message))
            return AioAWSResponse("https://ec2.amazonaws.com/", self.status,
                                  {"Content-Type": "text/xml", **(self.headers or {})}, body)
        return None


async def inject_async(provider: Any, operation: str, fault: AioFailFirst) -> AioFailFirst:
    """``inject`` for the provider's aiobotocore client (made now, on the running loop)."""
    client = await provider.aio.client()
    client.meta.events.register(f"before-send.ec2.{operation}", fault)
    return fault


def throttle(times: int) -> FailFirst:
    return FailFirst(times, 503, "RequestLimitExceeded", "Request limit exceeded.")


class AcceptWithoutDetaching:
    """Answers DetachVolume as EC2 does when it accepted the call (``detaching``), leaving the volume attached."""

    def __init__(self, volume_id: str, instance_id: str) -> None:
        self.volume_id, self.instance_id = volume_id, instance_id
        self.calls = 0

    def __call__(self, **_):
        from botocore.awsrequest import AWSResponse

        self.calls += 1
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<DetachVolumeResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            "<requestId>00000000-0000-0000-0000-000000000000</requestId>"
            f"<volumeId>{self.volume_id}</volumeId><instanceId>{self.instance_id}</instanceId>"
            "<device>/dev/sdh</device><status>detaching</status>"
            "<attachTime>2026-01-01T00:00:00.000Z</attachTime></DetachVolumeResponse>"
        ).encode()
        return AWSResponse("https://ec2.amazonaws.com/", 200, {"Content-Type": "text/xml"}, _Body(body))


class NotListedYet:
    """DescribeSnapshots as EC2, eventually consistent, answers for a snapshot made moments ago:
    asked by id, ``InvalidSnapshot.NotFound``; by filter, not listed. For the first ``times``
    calls that name ``snapshot_id``; the others reach moto."""

    def __init__(self, snapshot_id: str, times: int) -> None:
        self.snapshot_id, self.times = snapshot_id, times
        self.calls = 0  # those answered so

    def __call__(self, request: Any = None, **_: Any) -> Any:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
        if self.snapshot_id not in body or self.calls >= self.times:
            return None
        self.calls += 1
        if "SnapshotId." in body:
            return ec2_error(400, "InvalidSnapshot.NotFound", f"The snapshot '{self.snapshot_id}' does not exist.")
        return empty_listing("DescribeSnapshots", "snapshotSet")


class VolumesNotListedYet:
    """DescribeVolumes as EC2, eventually consistent, answers a search by a tag of a volume made
    moments ago: not listed. For the first ``times`` calls whose filters name ``tag_key``; the
    others reach moto."""

    def __init__(self, tag_key: str, times: int) -> None:
        self.tag_key, self.times = tag_key, times
        self.calls = 0  # those answered so

    def __call__(self, request: Any = None, **_: Any) -> Any:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
        if f"tag%3A{self.tag_key}" not in body or self.calls >= self.times:
            return None
        self.calls += 1
        return empty_listing("DescribeVolumes", "volumeSet")
