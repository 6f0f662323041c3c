"""AzureProvider.restore that fails once its disk PUT was sent deletes the disk: the real SDK
against the local ARM, which made the disk."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from snapctl.errors import BadInputError, Interrupted, ProviderError, ProviderUnavailable, ProviderUnreachable
from snapctl.providers import TAG_CLUSTER, RestoreTarget, snapshot_tags
from tests.fakes.json_http import DROP, Fault
from tests.providers.stopped_restore import stopped_while_making

RG = "rg-snapctl"  # conftest's resource group
DISK = "/disks/restored-data"


def completed_snapshot(provider, volumes):
    return provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]


def restored(azure) -> list[str]:
    return sorted(name for name in azure.disks() if name not in ("pgdata", "pgwal"))


def test_a_drills_stop_ends_a_restore_whose_put_runs_on_and_deletes_the_disk(azure, make_provider, volumes):
    # A drill restores in threads of its own, which Ctrl-C never reaches: it sets their stop event.
    # The restore waited on the PUT's poller until it ended, the timeout (15 min) at most.
    provider = make_provider(operation_timeout_s=120)
    ref = completed_snapshot(provider, volumes)
    azure.op_polls = 10**6  # the PUT's operation runs on...
    ended = stopped_while_making(lambda: provider.restore(ref, RestoreTarget(name="restored-data")),
                                 lambda: bool(azure.requests_to("PUT", DISK)),
                                 lambda: setattr(azure, "op_polls", 2))  # ...and ends a second after the stop
    assert isinstance(ended, Interrupted) and str(ended).startswith("azure create disk restored-data from snapshot")
    assert restored(azure) == [] and azure.requests_to("DELETE", DISK)


def test_a_put_that_outlasts_the_timeout_has_its_disk_deleted_once_made(azure, make_provider, volumes):
    provider = make_provider(operation_timeout_s=1)
    ref = completed_snapshot(provider, volumes)
    azure.op_polls = 10**6  # the PUT's operation runs on past the restore's timeout...
    finish = threading.Timer(4, setattr, (azure, "op_polls", 2))  # ...and ends 3 s later
    finish.start()
    try:
        with pytest.raises(ProviderError, match="create disk restored-data .*: still running after 1s"):
            provider.restore(ref, RestoreTarget(name="restored-data"))
    finally:
        finish.cancel()

    assert restored(azure) == [] and azure.requests_to("DELETE", DISK)


def test_a_put_whose_answers_are_lost_has_its_disk_deleted(azure, make_provider, volumes):
    provider = make_provider(max_retries=1)
    ref = completed_snapshot(provider, volumes)
    # ARM makes the disk, and the connection drops before each answer: the retry's too.
    azure.inject(Fault(DROP[0], times=2, method="PUT", path_contains=DISK, after_commit=True))

    with pytest.raises(ProviderUnreachable):
        provider.restore(ref, RestoreTarget(name="restored-data"))

    assert len(azure.requests_to("PUT", DISK)) == 2
    assert restored(azure) == [] and azure.requests_to("DELETE", DISK)


def test_ctrl_c_while_the_put_runs_deletes_the_disk(azure, make_provider, volumes):
    provider = make_provider()
    ref = completed_snapshot(provider, volumes)
    azure.op_polls = 10**6
    ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))  # while restore waits for the PUT
    finish = threading.Timer(3, setattr, (azure, "op_polls", 2))
    ctrl_c.start()
    finish.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            provider.restore(ref, RestoreTarget(name="restored-data"))
    finally:
        ctrl_c.cancel()
        finish.cancel()

    assert azure.requests_to("PUT", DISK) and restored(azure) == []


def test_a_put_refused_before_it_landed_deletes_nothing(azure, make_provider, volumes):
    provider = make_provider(max_retries=1)
    ref = completed_snapshot(provider, volumes)
    azure.inject(Fault(503, times=2, method="PUT", path_contains=DISK, message="backend unavailable"))

    with pytest.raises(ProviderUnavailable):
        provider.restore(ref, RestoreTarget(name="restored-data"))

    # Looked for (404: done), not deleted: the error is the PUT's own.
    assert azure.requests_to("GET", DISK)[-1].status == 404
    assert restored(azure) == [] and not azure.requests_to("DELETE")


def test_a_name_given_that_a_disk_has_is_refused_before_the_put(azure, make_provider, volumes):
    provider = make_provider()
    ref = completed_snapshot(provider, volumes)
    # An earlier restore's disk of this cluster, by the name given again: someone may be using it.
    azure.add_disk(RG, "restored-data", tags={TAG_CLUSTER: provider.cluster, "snapctl-restored-from": ref.snapshot_id})

    with pytest.raises(BadInputError, match="a disk named restored-data already exists in resource group rg-snapctl"):
        provider.restore(ref, RestoreTarget(name="restored-data"))

    assert restored(azure) == ["restored-data"] and not azure.requests_to("PUT", DISK)
    assert not azure.requests_to("DELETE")


def test_a_put_denied_made_nothing_and_is_not_looked_for(azure, make_provider, volumes):
    # A 4xx is ARM refusing the PUT outright: no disk to look for, and no delete that a restore-only
    # role may not be allowed (a warning for nothing), as gcp's insert denied.
    provider = make_provider()
    ref = completed_snapshot(provider, volumes)
    azure.inject(Fault(403, times=1, method="PUT", path_contains=DISK, message="not allowed"))

    with pytest.raises(ProviderError, match="not allowed"):
        provider.restore(ref, RestoreTarget(name="restored-data"))

    assert restored(azure) == [] and not azure.requests_to("DELETE")
    assert len(azure.requests_to("GET", DISK)) == 1  # the name's check before the PUT, nothing after
