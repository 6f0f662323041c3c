"""A create whose answer came back later than the read timeout, so botocore sent it again: EC2
made both snapshots (CreateSnapshot(s) takes no idempotency token), and so does moto, behind a
loopback front end that holds each first create's answer back. The run records the second; the
wait deletes the first, so that one snapshot per volume is left. Likewise when EC2 refused the
second sending (the first's snapshot in progress, on a volume that allows one) and snapctl's own
per-volume retry made the snapshot recorded."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapctl.providers import SnapshotRef, snapshot_tags
from tests.fakes.serving import Answer, in_front_of, serving
from tests.providers.aws.conftest import CLUSTER, Machine
from tests.providers.aws.faults import ec2_error_body
from tests.providers.aws.test_snapshot import all_snapshots
from tests.providers.aws.test_snapshot_async import on_loop

HELD_S = 2.5  # each first create's answer, past the provider's read timeout
READ_TIMEOUT_S = 1.0


class LateFirstCreates:
    """Holds back the answer to the first sending of each create (the body botocore sends again
    is the same), after moto has made its snapshots. With ``refuse_second``, answers the second
    sending as EC2 does on an st1/sc1 volume, whose one in-progress snapshot the first made."""

    def __init__(self) -> None:
        self.holding = True
        self.refuse_second = False
        self.sendings: dict[bytes, int] = {}  # of each create's body
        self.held = 0
        self.refused = 0
        self.describes_by_tag = 0  # DescribeSnapshots that search by tag, not by id
        self._lock = threading.Lock()

    def answer(self, path: str, body: bytes) -> Answer | None:
        with self._lock:
            if b"Action=DescribeSnapshots&" in body and b"Name=tag%3A" in body:
                self.describes_by_tag += 1
            if b"Action=CreateSnapshot" not in body:  # CreateSnapshot and CreateSnapshots
                return None
            self.sendings[body] = self.sendings.get(body, 0) + 1
            if self.refuse_second and self.sendings[body] == 2:
                self.refused += 1
                return 400, "text/xml", ec2_error_body("SnapshotCreationPerVolumeRateExceeded",
                                                       "The maximum per volume CreateSnapshot request rate "
                                                       "has been exceeded.")
            return None

    def __call__(self, body: bytes) -> float:
        with self._lock:
            if not self.holding or self.sendings.get(body) != 1:
                return 0
            self.held += 1
            return HELD_S


@pytest.fixture
def late() -> LateFirstCreates:
    return LateFirstCreates()


@pytest.fixture
def front_provider(moto, make_provider, late: LateFirstCreates) -> Iterator[Any]:
    """The provider, its requests through the front end; max_attempts leaves room for a slow moto."""
    with serving(in_front_of(moto.endpoint_url, late.answer, late_s=late)) as url:
        yield make_provider(endpoint_url=url, read_timeout_s=READ_TIMEOUT_S, max_attempts=4)


def snapshot_volumes(provider: Any, ec2: Any, machine: Machine, mode: str) -> list[SnapshotRef]:
    if mode.startswith("instance"):
        raw: list[dict[str, Any]] = [{"instance": machine.instance}]
    else:
        raw = [{"volume": volume, "name": f"data{i}"} for i, volume in enumerate(machine.data_volumes)]
    volumes = provider.validate_volumes("n1", raw, base_dir=Path("."))
    tags = snapshot_tags(CLUSTER, "run-1", "n1")
    if mode.endswith("async"):
        return on_loop(provider, lambda: provider.snapshot_async(volumes, tags))
    return provider.snapshot(volumes, tags)


@pytest.mark.parametrize("mode", ["volumes", "volumes async", "instance", "instance async"])
def test_the_wait_deletes_the_second_snapshot_of_a_create_sent_twice(
        front_provider, ec2, machine: Machine, late: LateFirstCreates, mode: str, caplog) -> None:
    refs = snapshot_volumes(front_provider, ec2, machine, mode)

    assert late.held == (1 if mode.startswith("instance") else 2)
    assert sorted(ref.extra["volume_id"] for ref in refs) == sorted(machine.data_volumes)
    assert all(ref.extra["create_attempts"] >= 2 for ref in refs)
    made = all_snapshots(ec2)
    assert len(made) >= 2 * len(refs)  # both sendings made their snapshots
    twins = set(made) - {ref.snapshot_id for ref in refs}

    with caplog.at_level(logging.INFO, logger="snapctl_aws"):
        done = front_provider.wait(refs, time.monotonic() + 30)

    assert [ref.snapshot_id for ref in done] == [ref.snapshot_id for ref in refs]
    assert set(all_snapshots(ec2)) == {ref.snapshot_id for ref in refs}  # one per volume, the recorded one
    for twin in twins:
        assert f"deleted snapshot {twin}, a second one of volume" in caplog.text


@pytest.mark.parametrize("mode", ["volumes", "volumes async", "instance", "instance async"])
def test_the_wait_deletes_the_first_snapshot_when_snapctls_per_volume_retry_made_the_second(
        front_provider, ec2, machine: Machine, late: LateFirstCreates, mode: str, caplog) -> None:
    late.refuse_second = True
    refs = snapshot_volumes(front_provider, ec2, machine, mode)

    creates = 1 if mode.startswith("instance") else 2
    assert (late.held, late.refused) == (creates, creates)
    # Late, refused, made again by snapctl: the answer recorded says RetryAttempts 0.
    assert [ref.extra["create_attempts"] for ref in refs] == [3] * len(refs)
    made = all_snapshots(ec2)
    assert len(made) == 2 * len(refs)
    twins = set(made) - {ref.snapshot_id for ref in refs}

    with caplog.at_level(logging.INFO, logger="snapctl_aws"):
        front_provider.wait(refs, time.monotonic() + 30)

    assert set(all_snapshots(ec2)) == {ref.snapshot_id for ref in refs}
    for twin in twins:
        assert f"deleted snapshot {twin}, a second one of volume" in caplog.text


def test_a_create_sent_once_costs_the_wait_no_search(front_provider, ec2, machine: Machine,
                                                     late: LateFirstCreates) -> None:
    late.holding = False
    refs = snapshot_volumes(front_provider, ec2, machine, "volumes")
    searches_before = late.describes_by_tag

    front_provider.wait(refs, time.monotonic() + 30)

    assert not any("create_attempts" in ref.extra for ref in refs)
    assert late.describes_by_tag == searches_before
    assert set(all_snapshots(ec2)) == {ref.snapshot_id for ref in refs}
