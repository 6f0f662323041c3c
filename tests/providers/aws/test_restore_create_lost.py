"""A restore whose CreateVolume made the volume but whose answer never came (later than the read
timeout, through a loopback front end in front of moto): the restore fails without the volume's
id, so the volume is found by the ClientToken it carries as a tag, and deleted; one that cannot be
deleted is named in the error. moto ignores ClientToken and makes a volume per sending: all go."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from snapctl_aws.restore import TAG_RESTORE_TOKEN, TAG_RESTORED_FROM

from snapctl.errors import ProviderError, ProviderUnreachable
from snapctl.providers import RestoreTarget, snapshot_tags
from tests.fakes.serving import in_front_of, serving
from tests.providers.aws.conftest import ZONE
from tests.providers.aws.faults import FailFirst, inject

HELD_S = 2.5  # each CreateVolume's answer, past the provider's read timeout
READ_TIMEOUT_S = 1.0


class LateCreateVolumes:
    """Lets every CreateVolume reach moto, which makes the volume, and holds its answer back."""

    def __init__(self) -> None:
        self.tokens: list[str] = []  # the ClientToken of each sending
        self._lock = threading.Lock()

    def answer(self, path: str, body: bytes) -> None:
        return None  # every request goes on to moto

    def __call__(self, body: bytes) -> float:
        sent = urllib.parse.parse_qs(body.decode())
        if sent.get("Action") != ["CreateVolume"]:
            return 0
        with self._lock:
            self.tokens += sent.get("ClientToken", [""])
        return HELD_S


@pytest.fixture
def late() -> LateCreateVolumes:
    return LateCreateVolumes()


@pytest.fixture
def front_provider(moto, make_provider, late: LateCreateVolumes) -> Iterator[Any]:
    with serving(in_front_of(moto.endpoint_url, late.answer, late_s=late)) as url:
        yield make_provider(endpoint_url=url, read_timeout_s=READ_TIMEOUT_S, max_attempts=2)


def snapshot_of(provider, volume: str):
    volumes = provider.validate_volumes("n1", [{"volume": volume, "name": "data"}], base_dir=Path("."))
    [ref] = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))
    return ref


def restored_volumes(ec2) -> list[str]:
    found = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": [TAG_RESTORED_FROM]}])["Volumes"]
    return sorted(v["VolumeId"] for v in found if v["State"] not in ("deleting", "deleted"))


def test_a_volume_made_by_a_create_volume_whose_answer_was_lost_is_deleted(front_provider, ec2, volume, late):
    ref = snapshot_of(front_provider, volume)

    with pytest.raises(ProviderUnreachable, match="ReadTimeoutError") as caught:
        front_provider.restore(ref, RestoreTarget(zone=ZONE))

    assert len(late.tokens) == 2 and len(set(late.tokens)) == 1 and late.tokens[0]  # botocore sent ours again
    assert restored_volumes(ec2) == [], "a volume the lost create made was left behind"
    assert "vol-" not in caught.value.message  # nothing left to name


def test_a_volume_made_by_a_lost_create_that_cannot_be_deleted_is_named_in_the_error(
        front_provider, ec2, volume, late) -> None:
    ref = snapshot_of(front_provider, volume)
    inject(front_provider, "DeleteVolume", FailFirst(100, 403, "UnauthorizedOperation", "not allowed"))

    with pytest.raises(ProviderUnreachable) as caught:
        front_provider.restore(ref, RestoreTarget(zone=ZONE))

    left = restored_volumes(ec2)
    assert len(left) == 2  # moto made one per sending
    message = caught.value.message
    assert message.startswith("aws: no answer from EC2 (ReadTimeoutError)")
    assert f"CreateVolume made {', '.join(left)} (tag {TAG_RESTORE_TOKEN}={late.tokens[0]}), which could not be " \
           "deleted" in message
    assert "aws ec2 delete-volume --volume-id vol-" in caught.value.hint


def test_a_create_volume_refused_made_nothing_and_is_not_searched_for(provider, ec2, volume):
    ref = snapshot_of(provider, volume)
    inject(provider, "CreateVolume", FailFirst(1, 400, "InvalidParameterValue", "iops not allowed"))
    searches = inject(provider, "DescribeVolumes", FailFirst(0, 500, "unused"))  # fails none: counts them

    with pytest.raises(ProviderError) as caught:
        provider.restore(ref, RestoreTarget(zone=ZONE))

    assert caught.value.message == "aws CreateVolume: InvalidParameterValue: iops not allowed"
    assert searches.calls == 0 and restored_volumes(ec2) == []


def test_a_restored_volume_carries_the_client_token_its_create_sent(provider, ec2, volume):
    ref = snapshot_of(provider, volume)
    sent: list[str] = []
    provider.client.meta.events.register(
        "before-send.ec2.CreateVolume",
        lambda request, **_: sent.extend(urllib.parse.parse_qs(request.body.decode() if isinstance(request.body, bytes)
                                                               else request.body)["ClientToken"]))

    made = provider.restore(ref, RestoreTarget(zone=ZONE))

    [restored] = ec2.describe_volumes(VolumeIds=[made])["Volumes"]
    assert {t["Key"]: t["Value"] for t in restored["Tags"]}[TAG_RESTORE_TOKEN] == sent[0] != ""
