"""A network outage between snapctl and EC2 while a backup waits for its snapshots: boto3 in the
real CLI against moto's server behind a loopback proxy that the test partitions (every byte
dropped, as with a pulled cable) and heals. And EC2 failing on its side meanwhile: a loopback
front end that answers the wait's DescribeSnapshots with 503 ``Unavailable`` for a while.
Snapshots are made ``pending`` in moto's backend, which runs in this process, so the wait has
something to wait for.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from snapctl.errors import ExitCode
from tests.fakes.serving import Answer, in_front_of, serving
from tests.faults.harness import NODES, FaultCluster, wait_until
from tests.faults.proxy import LoopbackProxy
from tests.faults.test_provider_faults import assert_released_by
from tests.moto_server import DEFAULT_REGION, MotoServer, dummy_aws_credentials, shared_moto_server
from tests.providers.aws.faults import ec2_error_body


@dataclass
class Ec2Behind:
    moto: MotoServer
    proxy: LoopbackProxy  # between the CLI and moto
    volumes: dict[str, str]  # node -> its EBS volume

    def snapshots(self) -> set[str]:
        return self.moto.snapshot_ids()

    def completed(self, snapshots: set[str]) -> None:
        """The uploads went on meanwhile."""
        for snapshot_id in snapshots:
            self.moto.set_snapshot(snapshot_id, status="completed")


@pytest.fixture
def ec2() -> Iterator[Ec2Behind]:
    import boto3

    moto = shared_moto_server()
    moto.reset()
    with dummy_aws_credentials(), moto.new_snapshots_pending():  # uploading, until the test says otherwise
        client = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        volumes = {n: client.create_volume(Size=8, AvailabilityZone=f"{DEFAULT_REGION}a")["VolumeId"] for n in NODES}
        proxy = LoopbackProxy(int(moto.endpoint_url.rsplit(":", 1)[1]))
        try:
            yield Ec2Behind(moto, proxy, volumes)
        finally:
            proxy.close()


def aws_inventory(scene: FaultCluster, ec2: Ec2Behind, policy: dict | None = None, endpoint_url: str | None = None):
    # Two attempts each: a call gives up on a silent network within seconds. Behind the front end
    # nothing is silent, so its reads may take long. Not shorter than 2 s behind the proxy: a create
    # that moto, on a loaded machine, answered later than the read timeout was sent again, and EC2
    # has no idempotency token for it, so a second snapshot of the volume was made (CI, once at 0.5 s).
    read_timeout_s = 10 if endpoint_url else 2
    provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": endpoint_url or ec2.proxy.url,
                "poll_interval_s": 0.05,
                "max_attempts": 2, "connect_timeout_s": 0.5, "read_timeout_s": read_timeout_s}
    return scene.write_inventory(scene.directory / "aws.yaml", provider=provider, policy=policy,
                                 volumes=lambda node: [{"volume": ec2.volumes[node], "name": "data"}])


def released_with_snapshots(scene: FaultCluster, ec2: Ec2Behind) -> set[str]:
    """Once the run's snapshots are made and every node released (only the wait asks EC2 anything
    after that): the snapshots' ids."""
    wait_until(lambda: len(ec2.snapshots()) == len(NODES) and not scene.held(), 60,
               "the run's snapshots to be made and every node released")
    return ec2.snapshots()


def partitioned_while_waiting(scene: FaultCluster, ec2: Ec2Behind) -> set[str]:
    """Cut the network once the run's snapshots are made and every node released."""
    snapshots = released_with_snapshots(scene, ec2)
    ec2.proxy.partition()
    return snapshots


def while_running(run: subprocess.Popen, reached: Callable[[], bool], what: str,
                  seen: Callable[[], str] = lambda: "") -> None:
    """Wait for ``reached()``; a run that ended first, or that never got there, fails the test with
    what it said (the one clue once the suite is done), and ``seen()``: what the test saw meanwhile."""
    def check() -> bool:
        if run.poll() is not None:
            raise AssertionError(f"the backup ended (exit {run.returncode}) before {what}{seen()}: "
                                 f"{run.communicate()[1][-3000:]}")
        return reached()

    try:
        wait_until(check, 60, what)
    except AssertionError as exc:
        if run.poll() is None:
            run.kill()
            exc.args = (f"{exc.args[0]}{seen()}; the run said: {run.communicate()[1][-3000:]}",)
        raise


def lost_while_running(run: subprocess.Popen, ec2: Ec2Behind, requests: int) -> None:
    """Wait for ``requests`` of the run's to be lost in the partition."""
    while_running(run, lambda: ec2.proxy.dropped_requests >= requests, f"{requests} of the wait's requests lost",
                  seen=lambda: (f" ({ec2.proxy.dropped_requests} lost, requests through the proxy: "
                                f"{ec2.proxy.requests[-5:]})"))


def assert_succeeded_keeping_every_snapshot(scene: FaultCluster, ec2: Ec2Behind, snapshots: set[str]) -> None:
    [run_id] = scene.run_ids()
    manifest = scene.manifest(run_id)
    assert manifest["status"] == "succeeded" and manifest["snapshots_completed"]
    made = {r["snapshots"][0]["snapshot_id"] for r in manifest["nodes"].values()}
    assert made == snapshots == ec2.snapshots()  # nothing deleted
    assert_released_by(scene, run_id)


def test_a_network_outage_while_the_snapshots_upload_is_waited_out(scene: FaultCluster, ec2: Ec2Behind) -> None:
    run = scene.popen("backup", "--no-prune", inventory=aws_inventory(scene, ec2))
    snapshots = partitioned_while_waiting(scene, ec2)
    # Past one call's two attempts: without asking again, the run would have given up by now.
    lost_while_running(run, ec2, 4)
    ec2.completed(snapshots)
    ec2.proxy.heal()
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == 0, stderr
    assert "cloud unreachable, polling again" in stderr and "no answer from EC2" in stderr
    assert_succeeded_keeping_every_snapshot(scene, ec2, snapshots)


def test_an_outage_that_outlasts_the_wait_fails_the_run_keeping_what_it_could_not_delete(
        scene: FaultCluster, ec2: Ec2Behind) -> None:
    run = scene.popen("backup", "--no-prune", inventory=aws_inventory(scene, ec2, policy={"wait_timeout_s": "3s"}))
    snapshots = partitioned_while_waiting(scene, ec2)
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == ExitCode.RUN_FAILED, stderr
    said = "the cloud could not be reached when the wait for the snapshots ran out (policy.wait_timeout_s 3s)"
    assert said in stderr and "no answer from EC2" in stderr
    assert "snapctl gc" in stderr and "check network access to the EC2 endpoint" in stderr  # where to look
    [run_id] = scene.run_ids()
    manifest = scene.manifest(run_id)
    assert manifest["status"] == "failed" and said in manifest["error"]
    assert_released_by(scene, run_id)
    # The rollback's search met the same silence, so it tried no delete: on record for gc, still there.
    [leftovers] = [d for d in manifest["degradations"] if d.startswith("snapshots not deleted")]
    assert all(s in leftovers for s in snapshots) and ec2.snapshots() == snapshots
    assert leftovers.count("not tried, the cloud could not be reached") == len(NODES)


class FailingDescribes:
    """EC2's front end answering every DescribeSnapshots with 503 ``Unavailable`` while ``failing``,
    once the run's creates have come through: from then on only the wait's polls and the
    rollback's search ask, never the provider's check of its credentials before the holds."""

    def __init__(self) -> None:
        self.failing = False
        self.creates = 0  # CreateSnapshot requests passed on
        self.failed = 0  # requests answered 503
        self._lock = threading.Lock()

    def __call__(self, path: str, body: bytes) -> Answer | None:
        with self._lock:
            if b"Action=CreateSnapshot&" in body:
                self.creates += 1
            if not (self.failing and self.creates >= len(NODES) and b"Action=DescribeSnapshots&" in body):
                return None
            self.failed += 1
        return 503, "text/xml", ec2_error_body("Unavailable", "The service is unavailable. Please try again shortly.")


@pytest.fixture
def front(ec2: Ec2Behind) -> Iterator[tuple[str, FailingDescribes]]:
    """The URL of a front end in front of moto, and its faults."""
    failing = FailingDescribes()
    with serving(in_front_of(ec2.moto.endpoint_url, failing)) as url:
        yield url, failing


def test_server_errors_while_the_snapshots_upload_are_waited_out(scene: FaultCluster, ec2: Ec2Behind, front) -> None:
    url, describes = front
    describes.failing = True
    run = scene.popen("backup", "--no-prune", inventory=aws_inventory(scene, ec2, endpoint_url=url))
    snapshots = released_with_snapshots(scene, ec2)
    # Past one call's two attempts: without asking again, the run would have rolled back by now.
    while_running(run, lambda: describes.failed >= 4, "four of the wait's polls answered 503")
    ec2.completed(snapshots)
    describes.failing = False
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == 0, stderr
    assert "cloud server error, polling again" in stderr and "aws DescribeSnapshots: Unavailable" in stderr
    assert_succeeded_keeping_every_snapshot(scene, ec2, snapshots)


def test_server_errors_that_outlast_the_wait_fail_the_run_keeping_what_it_could_not_delete(
        scene: FaultCluster, ec2: Ec2Behind, front) -> None:
    url, describes = front
    describes.failing = True
    run = scene.popen("backup", "--no-prune",
                      inventory=aws_inventory(scene, ec2, policy={"wait_timeout_s": "3s"}, endpoint_url=url))
    _, stderr = run.communicate(timeout=120)
    snapshots = ec2.snapshots()

    assert run.returncode == ExitCode.RUN_FAILED, stderr
    said = "the cloud answered with a server error when the wait for the snapshots ran out (policy.wait_timeout_s 3s)"
    [error] = [line for line in stderr.splitlines() if line.startswith("snapctl: error:")]  # on one line
    assert said in error and "aws DescribeSnapshots: Unavailable" in error, stderr
    assert "snapctl gc" in stderr and "outage in the region on the AWS Health Dashboard" in stderr  # where to look
    [run_id] = scene.run_ids()
    manifest = scene.manifest(run_id)
    assert manifest["status"] == "failed" and said in manifest["error"]
    assert_released_by(scene, run_id)
    # The rollback's search met the same 503, so it tried no delete: on record for gc, still there.
    [leftovers] = [d for d in manifest["degradations"] if d.startswith("snapshots not deleted")]
    assert len(snapshots) == len(NODES) and all(s in leftovers for s in snapshots)
    assert leftovers.count("not tried, the cloud answered with a server error") == len(NODES)
