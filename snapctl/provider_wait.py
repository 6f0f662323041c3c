"""A backup's wait for its snapshots to complete (step 8), ridden through the cloud throttling its
polls or not answering them at all.

By then every node is released and the snapshots' point in time fixed: only the deadline
(``policy.wait_timeout_s``) ends the wait, never a rollback that deletes good snapshots because
the cloud said "slow down" or a network blip cut a poll short; a wait may last hours.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from snapctl.errors import ProviderThrottled, ProviderUnreachable
from snapctl.events import Reporter
from snapctl.providers import Provider, SnapshotRef

MAX_PAUSE_S = 60.0


async def wait_out_transient(provider: Provider, refs: list[SnapshotRef], deadline: float, reporter: Reporter,
                             wait_timeout_s: float) -> list[SnapshotRef]:
    """``provider.wait``, asked again after a poll throttled or unanswered past one call's retries."""
    for attempt in itertools.count():
        try:
            return await asyncio.to_thread(provider.wait, refs, deadline, reporter.snapshot_progress)
        except ProviderThrottled as exc:
            pause = exc.retry_after if exc.retry_after is not None else _backoff(attempt)
            if time.monotonic() + pause >= deadline:
                raise
            reporter.step("wait", f"throttled, polling again in {pause:.1f}s: {exc.message}")
        except ProviderUnreachable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderUnreachable(
                    f"the cloud could not be reached when the wait for the snapshots ran out (policy.wait_timeout_s "
                    f"{wait_timeout_s:g}s): {exc.message}",
                    hint="the snapshots may still complete, but the run is failed: those its rollback could not "
                         "delete are named in the manifest for `snapctl gc`; "
                         f"{exc.hint or 'check network access to the cloud'}, or raise policy.wait_timeout_s to ride "
                         "out longer outages") from exc
            # Cut short at the deadline rather than skipped: one last look then may find them done.
            pause = min(_backoff(attempt), remaining)
            reporter.step("wait", f"cloud unreachable, polling again in {pause:.1f}s: {exc.message}")
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


def _backoff(attempt: int) -> float:
    return min(MAX_PAUSE_S, 2.0 ** min(attempt, 16))  # 2.0 ** 1024 overflows: a day-long wait gets there
