"""How a failed run is told: the hint that says best what to do."""

from __future__ import annotations

from datetime import UTC, datetime

from snapctl.errors import ProviderThrottled, RunFailed
from snapctl.manifest import Manifest, NodeRecord
from snapctl.provider_wait import MAX_PAUSE_S, _backoff
from snapctl.run_failure import run_failure

TIMED_OUT = "node {}: snapshot calls did not return within 1.0s (max freeze 1s, snapshot timeout 60s)"
FREEZE_HINT = "check the provider; raise policy.max_freeze_s if this volume is just slow"
THROTTLED_HINT = "lower create_rate: the cloud throttles this project's snapshot creates"


def _manifest(**errors: str) -> Manifest:
    return Manifest(cluster="c", run_id="r1", provider="gcp", snapctl_version="0", owner="u@h:1",
                    started_at=datetime(2026, 12, 6, tzinfo=UTC),
                    nodes={n: NodeRecord(name=n, error=e) for n, e in errors.items()})


def test_a_call_throttled_past_the_freeze_gives_its_hint_when_a_call_queued_behind_it_timed_out_first():
    # The cloud's Retry-After on node2's call held up node1's too, which ran out of freeze first: the
    # run's cause is node1's timeout, and "raise max_freeze_s" would only freeze the databases longer.
    cause = RunFailed(TIMED_OUT.format("node1"), hint=FREEZE_HINT)
    manifest = _manifest(node1=cause.message, node2=TIMED_OUT.format("node2") + "; the call then failed: 429")
    late = ProviderThrottled("gcp create snapshot of disk node2-disk: 429 rate limit exceeded", hint=THROTTLED_HINT)
    failure = run_failure(manifest, cause, None, {"node1": None, "node2": late})
    assert failure.hint == THROTTLED_HINT
    assert failure.message.startswith(f"backup run r1 failed and was rolled back: {cause.message} (node2: ")


def test_the_causes_own_late_failure_comes_first_and_a_cause_that_is_no_timeout_keeps_its_hint():
    cause = RunFailed(TIMED_OUT.format("node1"), hint=FREEZE_HINT)
    own = ProviderThrottled("gcp create snapshot of disk node1-disk: 429", hint="node1's own hint")
    other = ProviderThrottled("gcp create snapshot of disk node2-disk: 429", hint="node2's hint")
    manifest = _manifest(node1=cause.message, node2=TIMED_OUT.format("node2"))
    assert run_failure(manifest, cause, None, {"node2": other, "node1": own}).hint == "node1's own hint"
    refused = RunFailed("node node3: prepare refused", hint="the agent's own hint")
    manifest = _manifest(node2=TIMED_OUT.format("node2"), node3=refused.message)
    assert run_failure(manifest, refused, None, {"node2": other}).hint == "the agent's own hint"


def test_the_waits_backoff_stays_at_its_ceiling_however_long_the_wait():
    # 2.0 ** 1024 overflows: a wait throttled for a day would have failed the run on an OverflowError.
    assert [_backoff(n) for n in (0, 1, 5)] == [1.0, 2.0, 32.0]
    assert _backoff(6) == _backoff(1024) == _backoff(10**6) == MAX_PAUSE_S
