"""A CreateVolume that failed without a refusal is followed by a search for the volume it may have
made, by its token tag; EC2 lists a new volume (and its tags) only after a while, so a search that
finds nothing is made again until the grace after the create is over (``VolumesNotListedYet``
answers so, moto listing at once). Still nothing, the restore's error names the token to look
for; a drill's stop or a second Ctrl-C ends the search at once."""

from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Any

import pytest
from snapctl_aws.restore import TAG_RESTORE_TOKEN
from snapctl_aws.snapshots import NOT_FOUND_GRACE_S

from snapctl.errors import ProviderUnavailable
from snapctl.providers import RestoreTarget, stoppable_by
from tests.providers.aws.conftest import ZONE
from tests.providers.aws.faults import FailFirst, VolumesNotListedYet, inject
from tests.providers.aws.test_restore_create_lost import restored_volumes, snapshot_of

FIND_IT = f"aws ec2 describe-volumes --filters Name=tag:{TAG_RESTORE_TOKEN},Values="


@pytest.fixture
def slow_provider(make_provider) -> Any:
    """The aws provider, its clock moved on only by its own sleeps, which ``slow_provider.slept`` lists."""
    provider = make_provider(poll_interval_s=5, max_attempts=1)
    provider.slept = []
    provider._clock = lambda: sum(provider.slept)
    provider._sleep = provider.slept.append
    return provider


def tokens_sent(provider) -> list[str]:
    """The ClientToken of each CreateVolume the provider sends, as it sends it."""
    sent: list[str] = []

    def record(request, **_):
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        sent.extend(urllib.parse.parse_qs(body)["ClientToken"])

    provider.client.meta.events.register("before-send.ec2.CreateVolume", record)
    return sent


def unanswered_create(provider) -> None:
    """Every CreateVolume fails with a 5xx and makes nothing."""
    inject(provider, "CreateVolume", FailFirst(100, 500, "InternalError", "An internal error has occurred"))


def test_a_volume_an_interrupted_create_made_is_deleted_once_ec2_lists_it(slow_provider, ec2, volume):
    ref = snapshot_of(slow_provider, volume)

    def ctrl_c(**_):
        raise KeyboardInterrupt  # Ctrl-C while CreateVolume ran: it landed, its answer unread

    slow_provider.client.meta.events.register("after-call.ec2.CreateVolume", ctrl_c)
    unlisted = inject(slow_provider, "DescribeVolumes", VolumesNotListedYet(TAG_RESTORE_TOKEN, times=3))

    with pytest.raises(KeyboardInterrupt):
        slow_provider.restore(ref, RestoreTarget(zone=ZONE))

    assert unlisted.calls == 3  # searched again until EC2 listed it, in short polls
    assert slow_provider.slept == [1.0, 1.0, 1.0]
    assert restored_volumes(ec2) == [], "a volume the interrupted create made was left behind"


def test_a_create_that_made_nothing_names_its_token_once_the_grace_is_over(slow_provider, ec2, volume):
    ref = snapshot_of(slow_provider, volume)
    sent = tokens_sent(slow_provider)
    unanswered_create(slow_provider)

    with pytest.raises(ProviderUnavailable) as caught:
        slow_provider.restore(ref, RestoreTarget(zone=ZONE))

    assert NOT_FOUND_GRACE_S <= sum(slow_provider.slept) <= NOT_FOUND_GRACE_S + 1
    assert max(slow_provider.slept) <= 1.0
    message = caught.value.message
    assert message.startswith("aws CreateVolume: InternalError")
    assert (f"EC2 listed no volume CreateVolume may have made (tag {TAG_RESTORE_TOKEN}={sent[0]}) within "
            f"{NOT_FOUND_GRACE_S:.0f}s of the call" in message)
    assert f"{FIND_IT}{sent[0]}` and delete it" in caught.value.hint


def test_a_drills_stop_ends_the_search_at_once_naming_the_token(slow_provider, ec2, volume):
    ref = snapshot_of(slow_provider, volume)
    sent = tokens_sent(slow_provider)
    unanswered_create(slow_provider)
    searches = inject(slow_provider, "DescribeVolumes", VolumesNotListedYet(TAG_RESTORE_TOKEN, times=10**6))
    stop = threading.Event()
    stop.set()  # the drill was interrupted while CreateVolume ran

    with stoppable_by(stop), pytest.raises(ProviderUnavailable) as caught:
        slow_provider.restore(ref, RestoreTarget(zone=ZONE))

    assert searches.calls == 1 and slow_provider.slept == []
    assert (f"the search for the volume CreateVolume may have made (tag {TAG_RESTORE_TOKEN}={sent[0]}) was stopped"
            in caught.value.message)
    assert f"{FIND_IT}{sent[0]}`" in caught.value.hint


def test_a_second_ctrl_c_ends_the_search_at_once_and_a_warning_names_the_token(slow_provider, ec2, volume,
                                                                              caplog):
    ref = snapshot_of(slow_provider, volume)
    sent = tokens_sent(slow_provider)
    unanswered_create(slow_provider)

    def ctrl_c(seconds):
        raise KeyboardInterrupt  # pressed again while the search waited

    slow_provider._sleep = ctrl_c

    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt) as caught:
        slow_provider.restore(ref, RestoreTarget(zone=ZONE))

    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (f"restore: the search for the volume CreateVolume may have made "
                       f"(tag {TAG_RESTORE_TOKEN}={sent[0]}) was interrupted")
    create_error = caught.value.__context__
    assert isinstance(create_error, ProviderUnavailable) and sent[0] in create_error.message
