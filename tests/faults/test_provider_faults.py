"""Provider faults during a real run: the GCP provider (the real SDK over HTTP) against the local
Compute Engine API in tests/fakes, agents as real processes, the real CLI. A throttling storm is
ridden out (or, past the retries, rolled back); a snapshot that ends in error rolls the run back;
a create call that timed out after the cloud accepted it is retried with the same request id, so
no duplicate snapshot survives, and when every answer is lost the run's tags find what was made.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.fakes.gcp_compute import FakeGcpCompute
from tests.fakes.json_http import DROP, Fault, Reply
from tests.faults.harness import NODES, FaultCluster

ZONE = "europe-west1-b"


class StallingGcp(FakeGcpCompute):
    """Acts on the next ``stall_creates`` createSnapshot calls, then answers too late for the client."""

    stall_creates = 0
    stall_s = 2.5

    def start(self) -> StallingGcp:
        super().start()
        self._server.handle_error = lambda request, address: None  # the late answer meets a closed socket
        return self

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes):
        reply = super().handle(method, raw_path, headers, raw_body)
        if "createSnapshot" in raw_path:
            with self.lock:
                stall, self.stall_creates = self.stall_creates > 0, max(0, self.stall_creates - 1)
            if stall:
                time.sleep(self.stall_s)
        return reply


@pytest.fixture
def gcp() -> Iterator[StallingGcp]:
    with StallingGcp(op_running_polls=2, creating_polls=1, uploading_polls=1) as fake:
        for node in NODES:
            fake.add_disk(ZONE, f"{node}-disk")
        yield fake


def gcp_inventory(cluster: FaultCluster, gcp: StallingGcp, policy: dict | None = None, **settings) -> Path:
    provider = {"type": "gcp", "project": gcp.project, "api_endpoint": gcp.url, "anonymous": True,
                "poll_interval_s": 0.02, "max_backoff_s": 2, "request_timeout_s": 1.0, **settings}
    return cluster.write_inventory(cluster.directory / "gcp.yaml", provider=provider, policy=policy,
                                   volumes=lambda node: [{"disk": f"{node}-disk", "zone": ZONE, "name": "data"}])


def live_snapshots(gcp: StallingGcp) -> Counter:
    """Snapshots not being deleted, per source disk."""
    with gcp.lock:
        return Counter(s["sourceDisk"].rsplit("/", 1)[-1] for s in gcp.snapshots.values() if s["status"] != "DELETING")


def assert_released_by(cluster: FaultCluster, run_id: str) -> None:
    assert cluster.held() == set()
    assert {cluster.released_by(n, run_id) for n in NODES} == {"completed"}


def assert_rolled_back(cluster: FaultCluster, gcp: StallingGcp, result, message: str) -> dict:
    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    [run_id] = cluster.run_ids()
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "failed" and message in manifest["error"]
    assert live_snapshots(gcp) == Counter()  # every snapshot the run made is deleted
    assert_released_by(cluster, run_id)
    return manifest


def test_a_throttling_storm_is_ridden_out_with_one_snapshot_per_disk(scene: FaultCluster, gcp: StallingGcp) -> None:
    gcp.throttle(times=12, retry_after=0.2)  # every kind of call, from every thread
    result = scene.snapctl("backup", "--no-prune", "-o", "json", inventory=gcp_inventory(scene, gcp))
    assert result.returncode == 0, result.stderr
    manifest = result.json["data"]
    assert manifest["status"] == "succeeded" and manifest["snapshots_completed"]
    assert len([r for r in gcp.requests if r.status == 429]) == 12
    assert live_snapshots(gcp) == Counter({f"{node}-disk": 1 for node in NODES})
    assert_released_by(scene, manifest["run_id"])


def test_a_storm_past_the_retries_rolls_the_run_back(scene: FaultCluster, gcp: StallingGcp) -> None:
    gcp.throttle(times=10_000, retry_after=0.05, path_contains="/disks/node2-disk/createSnapshot")
    result = scene.snapctl("backup", "--no-prune", inventory=gcp_inventory(scene, gcp, max_retries=2))
    assert_rolled_back(scene, gcp, result, "rate limit exceeded")
    assert "create_rate" in result.stderr  # the hint says what to change


def test_a_snapshot_that_ends_in_error_rolls_the_run_back(scene: FaultCluster, gcp: StallingGcp) -> None:
    gcp.fail_next_snapshot("the disk was detached while the snapshot was taken")
    result = scene.snapctl("backup", "--no-prune", inventory=gcp_inventory(scene, gcp))
    assert_rolled_back(scene, gcp, result, "the disk was detached while the snapshot was taken")


def test_a_create_whose_answer_timed_out_is_retried_without_a_duplicate(scene: FaultCluster, gcp: StallingGcp) -> None:
    gcp.stall_creates = 1  # the cloud takes the first create, its answer never reaches snapctl
    result = scene.snapctl("backup", "--no-prune", "-o", "json", inventory=gcp_inventory(scene, gcp))
    assert result.returncode == 0, result.stderr
    assert result.json["data"]["status"] == "succeeded"
    assert live_snapshots(gcp) == Counter({f"{node}-disk": 1 for node in NODES})
    creates = gcp.requests_to("POST", "createSnapshot")
    per_disk = Counter(r.path.split("/disks/")[1].split("/")[0] for r in creates)
    [(stalled, attempts)] = [(disk, n) for disk, n in per_disk.items() if n > 1]
    assert attempts == 2
    assert len({r.query["requestId"] for r in creates if f"/{stalled}/" in r.path}) == 1  # one request id: one act


def test_when_every_create_answer_is_lost_the_runs_tags_find_what_was_made(scene: FaultCluster, gcp) -> None:
    gcp.stall_creates = 10_000
    result = scene.snapctl("backup", "--no-prune", inventory=gcp_inventory(scene, gcp, max_retries=1))
    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    made = {r.body["name"] for r in gcp.requests_to("POST", "createSnapshot")}
    assert made  # the cloud made snapshots that snapctl never heard of ...
    [run_id] = scene.run_ids()
    assert scene.manifest(run_id)["status"] == "failed"
    assert live_snapshots(gcp) == Counter()  # ... and the rollback found them by the run's tag
    assert_released_by(scene, run_id)


def test_a_snapshot_that_fails_while_uploading_rolls_back_after_every_node_was_released(scene: FaultCluster) -> None:
    failing = scene.write_inventory(scene.directory / "failing.yaml", provider={"fail_wait": "upload failed"})
    result = scene.snapctl("backup", "--no-prune", inventory=failing)
    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    assert "upload failed" in result.stderr
    [run_id] = scene.run_ids()
    manifest = scene.manifest(run_id)
    assert manifest["status"] == "failed" and all(r["complete_acked_at"] for r in manifest["nodes"].values())
    assert scene.snapshot_dirs(run_id) == []
    assert_released_by(scene, run_id)


class UploadPollFaults(StallingGcp):
    """Answers the next ``faulty_polls`` reads of a snapshot that is uploading with ``poll_fault()``:
    only the backup's wait reads one then, after its point in time was fixed and every node released."""

    faulty_polls = 0
    faulted = 0  # polls answered with the fault

    def poll_fault(self) -> Reply:
        raise NotImplementedError

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes):
        name = raw_path.split("?")[0].rsplit("/global/snapshots/", 1)[-1] if "/global/snapshots/" in raw_path else ""
        with self.lock:
            uploading = method == "GET" and self.snapshots.get(name, {}).get("status") == "UPLOADING"
            fault = uploading and self.faulted < self.faulty_polls
            self.faulted += fault
        if fault:
            return self.poll_fault()
        return super().handle(method, raw_path, headers, raw_body)


class ThrottledUploads(UploadPollFaults):
    def poll_fault(self) -> Reply:
        return self.fault_reply(Fault(429, retry_after=0.05, message="rate limit exceeded"))


class DroppedUploads(UploadPollFaults):
    """The connection ends without an answer: a network blip between snapctl and the cloud."""

    def poll_fault(self) -> Reply:
        return DROP


class FailingUploads(UploadPollFaults):
    """Compute Engine failing on its side: 503, as its front end answers in an outage."""

    def poll_fault(self) -> Reply:
        return self.fault_reply(Fault(503, message="the service is currently unavailable"))


def test_throttling_while_the_snapshots_upload_is_waited_out_not_rolled_back(scene: FaultCluster) -> None:
    """The wait polls for hours at most; a poll throttled past one call's retries is no reason to
    delete snapshots whose point in time was fixed and whose nodes were all released."""
    with ThrottledUploads(op_running_polls=1, creating_polls=1, uploading_polls=1) as gcp:
        for node in NODES:
            gcp.add_disk(ZONE, f"{node}-disk")
        gcp.faulty_polls = 6  # max_retries=1: two calls' worth per snapshot
        result = scene.snapctl("backup", "--no-prune", "-o", "json",
                               inventory=gcp_inventory(scene, gcp, max_retries=1))
        assert result.returncode == 0, result.stderr
        manifest = result.json["data"]
        assert manifest["status"] == "succeeded" and manifest["snapshots_completed"]
        assert gcp.faulted == 6
        assert live_snapshots(gcp) == Counter({f"{node}-disk": 1 for node in NODES})
        assert_released_by(scene, manifest["run_id"])


def test_a_snapshot_call_throttled_past_the_freeze_budget_names_the_throttling(scene: FaultCluster,
                                                                               gcp: StallingGcp) -> None:
    """The node is released when its freeze budget ends; the call, still waiting out the cloud's
    Retry-After, fails later: that failure is why, and the operator must read it, not only that
    the call "did not return", whose hint says to freeze the database longer."""
    gcp.throttle(times=10_000, retry_after=2, path_contains="/disks/node2-disk/createSnapshot")
    result = scene.snapctl("backup", "--no-prune",
                           inventory=gcp_inventory(scene, gcp, policy={"max_freeze_s": "1s"}, max_retries=1))
    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    [run_id] = scene.run_ids()
    node2 = scene.manifest(run_id)["nodes"]["node2"]["error"]
    assert "did not return within" in node2 and "429" in node2 and "rate limit exceeded" in node2
    assert "rate limit exceeded" in result.stderr
    assert "create_rate" in result.stderr and "max_freeze_s if" not in result.stderr  # the throttling's hint
    assert live_snapshots(gcp) == Counter()
    assert_released_by(scene, run_id)


def test_throttling_that_outlasts_the_wait_fails_the_run_saying_so(scene: FaultCluster) -> None:
    with ThrottledUploads(op_running_polls=1, creating_polls=1, uploading_polls=1) as gcp:
        for node in NODES:
            gcp.add_disk(ZONE, f"{node}-disk")
        gcp.faulty_polls = 10_000
        result = scene.snapctl("backup", "--no-prune", inventory=gcp_inventory(
            scene, gcp, policy={"wait_timeout_s": "2s"}, max_retries=1))
        assert result.returncode == ExitCode.RUN_FAILED and "rate limit exceeded" in result.stderr
        assert "create_rate" not in result.stderr and "max_retries" in result.stderr  # polls are no creates
        [run_id] = scene.run_ids()
        manifest = scene.manifest(run_id)
        assert manifest["status"] == "failed" and "rate limit exceeded" in manifest["error"]
        assert_released_by(scene, run_id)
        # Still throttled, the rollback could not read them to delete them: on record, for gc.
        [leftovers] = [d for d in manifest["degradations"] if d.startswith("snapshots not deleted")]
        assert all(s in leftovers for s in gcp.snapshots) and len(gcp.snapshots) == len(NODES)


def uploading_disks(fake: UploadPollFaults) -> UploadPollFaults:
    for node in NODES:
        fake.add_disk(ZONE, f"{node}-disk")
    return fake


@dataclass(frozen=True)
class Outage:
    """A cloud that fails the wait's polls, and what snapctl says of it."""

    fake: type[UploadPollFaults]
    polling_again: str  # the progress line of each poll asked again
    ran_out: str  # the error once policy.wait_timeout_s (2s) ran out
    said: tuple[str, ...]  # on the error's line: the cloud's own words
    hints: tuple[str, ...]  # in what follows: what is left, and where to look
    not_tried: str  # the rollback's record of each snapshot it did not ask the cloud to delete


NETWORK = Outage(DroppedUploads, "cloud unreachable, polling again",
                 "the cloud could not be reached when the wait for the snapshots ran out (policy.wait_timeout_s 2s)",
                 ("no answer from the compute api",), ("snapctl gc",), "not tried, the cloud could not be reached")
SERVER = Outage(FailingUploads, "cloud server error, polling again",
                "the cloud answered with a server error when the wait for the snapshots ran out "
                "(policy.wait_timeout_s 2s)",
                ("503", "the service is currently unavailable"), ("snapctl gc", "status.cloud.google.com"),
                "not tried, the cloud answered with a server error")


@pytest.mark.parametrize("outage", [NETWORK, SERVER], ids=["network", "server-errors"])
def test_an_outage_while_the_snapshots_upload_is_waited_out_not_rolled_back(scene: FaultCluster,
                                                                           outage: Outage) -> None:
    """A blip that outlasts one poll's retries, or a cloud failing on its side as long, is no
    reason to delete snapshots whose point in time was fixed and whose nodes were all released:
    the wait asks again."""
    with uploading_disks(outage.fake(op_running_polls=1, creating_polls=1, uploading_polls=1)) as gcp:
        gcp.faulty_polls = 4  # max_retries=1: two polls' worth, each failing the wait once
        result = scene.snapctl("backup", "--no-prune", inventory=gcp_inventory(scene, gcp, max_retries=1))
        assert result.returncode == 0, result.stderr
        [run_id] = scene.run_ids()
        manifest = scene.manifest(run_id)
        assert manifest["status"] == "succeeded" and manifest["snapshots_completed"]
        assert gcp.faulted == 4
        assert result.stderr.count(outage.polling_again) == 2  # each retry reported
        assert all(words in result.stderr for words in outage.said[1:])
        assert gcp.requests_to("DELETE") == []
        assert live_snapshots(gcp) == Counter({f"{node}-disk": 1 for node in NODES})
        assert_released_by(scene, run_id)


@pytest.mark.parametrize("outage", [NETWORK, SERVER], ids=["network", "server-errors"])
def test_an_outage_that_outlasts_the_wait_fails_the_run_saying_so(scene: FaultCluster, outage: Outage) -> None:
    with uploading_disks(outage.fake(op_running_polls=1, creating_polls=1, uploading_polls=1)) as gcp:
        gcp.faulty_polls = 10_000
        result = scene.snapctl("backup", "--no-prune", inventory=gcp_inventory(
            scene, gcp, policy={"wait_timeout_s": "2s"}, max_retries=1))
        assert result.returncode == ExitCode.RUN_FAILED, result.stderr
        [error] = [line for line in result.stderr.splitlines() if line.startswith("snapctl: error:")]
        assert outage.ran_out in error and all(words in error for words in outage.said)
        assert all(hint in result.stderr for hint in outage.hints)
        [run_id] = scene.run_ids()
        manifest = scene.manifest(run_id)
        assert manifest["status"] == "failed" and outage.ran_out in manifest["error"]
        assert_released_by(scene, run_id)
        # Still failing, the rollback's first delete could not read its snapshot, and it asked the
        # silent or failing cloud to delete no other: on record, for gc.
        [leftovers] = [d for d in manifest["degradations"] if d.startswith("snapshots not deleted")]
        assert all(s in leftovers for s in gcp.snapshots) and len(gcp.snapshots) == len(NODES)
        assert leftovers.count(outage.not_tried) == len(NODES) - 1
