"""GcpProvider.restore that fails once its disk insert was sent deletes the disk: the real SDK
against the local Compute API, which made the disk."""

from __future__ import annotations

import threading
import time

import pytest
from snapctl_gcp.client import GcpApi
from snapctl_gcp.labels import encode_label

from snapctl.errors import Interrupted, ProviderError, ProviderUnavailable, ProviderUnreachable
from snapctl.providers import RestoreTarget, snapshot_tags
from tests.fakes.json_http import DROP, Fault
from tests.providers.stopped_restore import stopped_while_making

RESTORE_ZONE = "europe-west1-c"
INSERT = f"/zones/{RESTORE_ZONE}/disks"  # the insert's path (a disk's own paths go on with /NAME)


def ready_snapshot(provider, volumes):
    ref = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]
    return provider.wait([ref], time.monotonic() + 30)[0]


def restored(gcp) -> list[str]:
    return sorted(name for zone, name in gcp.disks if zone == RESTORE_ZONE)


def test_an_insert_that_outlasts_the_timeout_has_its_disk_deleted_once_made(gcp, make_provider, volumes):
    provider = make_provider(operation_timeout_s=1)
    ref = ready_snapshot(provider, volumes)
    gcp.op_running_polls = 10**6  # the insert runs on past the restore's timeout...
    finish = threading.Timer(4, setattr, (gcp, "op_running_polls", 2))  # ...and ends 3 s later
    finish.start()
    try:
        # Said as the timeout it is: the last wait, cut to the deadline's milliseconds, timed out
        # in the client and read "no answer from the compute api (ConnectionError)", a network fault.
        with pytest.raises(ProviderError, match=f"^gcp create disk restored-data from snapshot {ref.snapshot_id}: "
                                                r"operation \S+ still running after the timeout") as caught:
            provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data"))
        assert not isinstance(caught.value, ProviderUnreachable)
    finally:
        finish.cancel()

    assert restored(gcp) == []
    assert gcp.requests_to("DELETE", f"{INSERT}/restored-data")


def test_an_insert_whose_answers_are_lost_has_its_disk_deleted(gcp, make_provider, volumes):
    provider = make_provider(max_retries=1)
    ref = ready_snapshot(provider, volumes)
    # GCP makes the disk, and the connection drops before each answer: the retry's too.
    gcp.inject(Fault(DROP[0], times=2, method="POST", path_contains=INSERT, after_commit=True))

    with pytest.raises(ProviderUnreachable, match="no answer from the compute api"):
        provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data"))

    assert len(gcp.requests_to("POST", INSERT)) == 2
    assert restored(gcp) == [] and gcp.requests_to("DELETE", f"{INSERT}/restored-data")


def test_ctrl_c_while_the_insert_runs_deletes_the_disk(gcp, make_provider, volumes):
    from snapctl_gcp import GcpSettings

    provider = make_provider()
    ref = ready_snapshot(provider, volumes)
    interrupted = []

    def sleep(seconds: float) -> None:  # where the SIGINT lands: the restore's sleep between polls
        if not interrupted:
            interrupted.append(seconds)
            raise KeyboardInterrupt
        time.sleep(seconds)

    settings = GcpSettings.model_validate({**provider.settings.model_dump(), "type": "gcp"})
    provider.api = GcpApi(settings, sleep=sleep)
    gcp.op_running_polls = 3

    with pytest.raises(KeyboardInterrupt):
        provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data"))

    assert interrupted and restored(gcp) == []


def test_a_drills_stop_ends_a_restore_whose_insert_runs_on_and_deletes_the_disk(gcp, make_provider, volumes):
    # A drill restores in threads of its own, which Ctrl-C never reaches: it sets their stop event.
    # The restore waited on with operations.wait until the insert ended, the timeout (15 min) at most.
    provider = make_provider(operation_timeout_s=120, poll_interval_s=0.05)
    ref = ready_snapshot(provider, volumes)
    gcp.op_running_polls = 10**6  # the insert runs on...
    ended = stopped_while_making(lambda: provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data")),
                                 lambda: bool(gcp.requests_to("POST", INSERT)),
                                 lambda: setattr(gcp, "op_running_polls", 2))  # ...and ends a second after the stop
    assert isinstance(ended, Interrupted) and str(ended).startswith("gcp create disk restored-data from snapshot")
    assert restored(gcp) == [] and gcp.requests_to("DELETE", f"{INSERT}/restored-data")


def test_an_insert_refused_before_it_landed_deletes_nothing(gcp, make_provider, volumes):
    provider = make_provider(max_retries=1)
    ref = ready_snapshot(provider, volumes)
    gcp.inject(Fault(503, times=2, method="POST", path_contains=INSERT, message="backend unavailable"))

    with pytest.raises(ProviderUnavailable, match="backend unavailable"):
        provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data"))

    # Looked for (404: done), not deleted: the error is the insert's own.
    assert gcp.requests_to("GET", f"{INSERT}/restored-data")[-1].status == 404
    assert restored(gcp) == [] and not gcp.requests_to("DELETE")


def test_an_insert_refused_as_the_name_is_taken_leaves_that_disk_alone(gcp, make_provider, volumes):
    provider = make_provider()
    ref = ready_snapshot(provider, volumes)
    # An earlier restore's disk of this cluster, by the name given again: someone may be using it.
    labels = {"snapctl-cluster": encode_label(provider.cluster), "snapctl-restored-from": ref.snapshot_id}
    gcp.add_disk(RESTORE_ZONE, "restored-data", labels=labels)

    with pytest.raises(ProviderError, match="already exists"):
        provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data"))

    assert restored(gcp) == ["restored-data"] and not gcp.requests_to("DELETE")


def test_an_insert_denied_made_nothing_and_is_not_looked_for(gcp, make_provider, volumes):
    provider = make_provider()
    ref = ready_snapshot(provider, volumes)
    gcp.deny("compute.disks.create", method="POST", path_contains=INSERT)

    with pytest.raises(ProviderError, match="lack compute.disks.create"):
        provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name="restored-data"))

    # A restore-only role may lack compute.disks.get: a look would only warn of a failed delete.
    assert not gcp.requests_to("GET", f"{INSERT}/restored-data") and not gcp.requests_to("DELETE")
