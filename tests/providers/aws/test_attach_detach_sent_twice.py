"""AttachVolume and DetachVolume take no idempotency token: when the answer to a sending that took
effect is late (past the read timeout) botocore sends the call again, and EC2 refuses the second,
the volume attached already (VolumeInUse) or available already (IncorrectState). moto accepts it,
so a loopback front end passes the first sending to moto, holds its answer back, and answers the
second as EC2 does. The same answer to a call that did not take effect still fails it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from snapctl.errors import ProviderError
from snapctl.providers import RestoreTarget, SnapshotRef, snapshot_tags
from tests.fakes.serving import Answer, in_front_of, serving
from tests.providers.aws.conftest import CLUSTER, ZONE, Machine
from tests.providers.aws.faults import ec2_error_body

HELD_S = 2.5  # the first sending's answer, past the provider's read timeout
READ_TIMEOUT_S = 1.0
DEVICE = "/dev/sdz"


class RefusedAgain:
    """For one action: the first sending of each body goes to moto, its answer held back past the
    read timeout (``passes_first``; else it is refused too), and any later one is refused with
    ``refusal(volume_id)``, EC2's code and message."""

    def __init__(self, action: str, refusal: Callable[[str], tuple[str, str]], passes_first: bool = True) -> None:
        self.action = f"Action={action}&".encode()
        self.refusal, self.passes_first = refusal, passes_first
        self.sendings: dict[bytes, int] = {}
        self.refused = 0
        self._lock = threading.Lock()

    def answer(self, path: str, body: bytes) -> Answer | None:
        if self.action not in body:
            return None
        with self._lock:
            self.sendings[body] = self.sendings.get(body, 0) + 1
            if self.passes_first and self.sendings[body] == 1:
                return None
            self.refused += 1
        [volume_id] = parse_qs(body.decode())["VolumeId"]
        return 400, "text/xml", ec2_error_body(*self.refusal(volume_id))

    def late_s(self, body: bytes) -> float:
        return HELD_S if self.action in body else 0


def attached_already(volume_id: str) -> tuple[str, str]:
    return "VolumeInUse", f"{volume_id} is already attached to an instance"


def available_already(volume_id: str) -> tuple[str, str]:
    return "IncorrectState", f"Volume '{volume_id}' is in the 'available' state."


@pytest.fixture
def snapshot(provider: Any, machine: Machine) -> SnapshotRef:
    volumes = provider.validate_volumes("n1", [{"volume": machine.data_volumes[0], "name": "data0"}],
                                        base_dir=Path("."))
    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run-1", "n1"))
    return ref


@pytest.fixture
def through(moto: Any, make_provider: Callable[..., Any]) -> Iterator[Callable[[RefusedAgain], Any]]:
    """Makes a provider whose requests go through a front end answering as the given ``RefusedAgain``."""
    with contextlib.ExitStack() as stack:
        def make(front: RefusedAgain) -> Any:
            url = stack.enter_context(serving(in_front_of(moto.endpoint_url, front.answer, late_s=front.late_s)))
            # A short restore_timeout_s: a call taken for done that was not fails the test soon.
            return make_provider(endpoint_url=url, read_timeout_s=READ_TIMEOUT_S, max_attempts=4,
                                 restore_timeout_s=10)

        yield make


def volumes_now(ec2: Any) -> dict[str, dict[str, Any]]:
    return {v["VolumeId"]: v for v in ec2.describe_volumes()["Volumes"]}


def target(machine: Machine) -> RestoreTarget:
    return RestoreTarget(zone=ZONE, instance=machine.instance, device=DEVICE)


def test_an_attach_sent_again_and_refused_volume_in_use_restores_the_volume_attached(
        through, ec2, machine: Machine, snapshot: SnapshotRef) -> None:
    front = RefusedAgain("AttachVolume", attached_already)
    provider = through(front)
    before = set(volumes_now(ec2))

    volume_id = provider.restore(snapshot, target(machine))

    assert front.refused == 1  # the second sending, after the first attached the volume
    assert set(volumes_now(ec2)) - before == {volume_id}
    [attachment] = volumes_now(ec2)[volume_id]["Attachments"]
    assert (attachment["InstanceId"], attachment["Device"], attachment["State"]) == (machine.instance, DEVICE,
                                                                                       "attached")


def test_an_attach_refused_volume_in_use_that_did_not_attach_fails_the_restore(
        through, ec2, machine: Machine, snapshot: SnapshotRef) -> None:
    provider = through(RefusedAgain("AttachVolume", attached_already, passes_first=False))
    before = set(volumes_now(ec2))

    with pytest.raises(ProviderError, match="aws AttachVolume: VolumeInUse: vol-.* is already attached"):
        provider.restore(snapshot, target(machine))

    assert set(volumes_now(ec2)) == before  # the volume it made is deleted again


def test_a_detach_sent_again_and_refused_incorrect_state_tears_the_volume_down(
        provider, through, ec2, machine: Machine, snapshot: SnapshotRef) -> None:
    volume_id = provider.restore(snapshot, target(machine))
    front = RefusedAgain("DetachVolume", available_already)

    through(front).delete_volume(volume_id)

    assert front.refused == 1
    assert volume_id not in volumes_now(ec2)


def test_a_detach_refused_incorrect_state_that_did_not_detach_fails_the_teardown(
        provider, through, ec2, machine: Machine, snapshot: SnapshotRef) -> None:
    volume_id = provider.restore(snapshot, target(machine))
    refused = RefusedAgain("DetachVolume", lambda volume: ("IncorrectState", f"Volume '{volume}' is busy."),
                           passes_first=False)

    with pytest.raises(ProviderError, match="aws DetachVolume: IncorrectState: Volume 'vol-.*' is busy"):
        through(refused).delete_volume(volume_id)

    assert volumes_now(ec2)[volume_id]["Attachments"][0]["State"] == "attached"
