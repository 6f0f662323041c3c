"""A backup's wait for its snapshots to complete (step 8), ridden through the cloud throttling its
polls, not answering them at all, or answering them with server errors (5xx); and, before it, the
provider's work that needs no hold (``after_release``).

By then every node is released and the snapshots' point in time fixed: only the deadline
(``policy.wait_timeout_s``) ends the wait, never a rollback that deletes good snapshots because
the cloud said "slow down", had a bad minute (5xx) or a network blip cut a poll short; a wait may
last hours. A snapshot whose own state says it failed is no such error and still fails the wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from snapctl.errors import CLOUD_OUTAGE, ProviderThrottled, ProviderUnavailable, ProviderUnreachable
from snapctl.events import Reporter
from snapctl.providers import Provider, SnapshotRef

T = TypeVar("T")
MAX_PAUSE_S = 60.0
# Each kind of outage: what the error says of it, the remedy when the provider gave none, the progress line.
_OUTAGES = {
    ProviderUnreachable: ("the cloud could not be reached", "check network access to the cloud", "cloud unreachable"),
    ProviderUnavailable: ("the cloud answered with a server error", "look for an outage on the cloud's status page",
                          "cloud server error"),
}


async def wait_out_transient(provider: Provider, refs: list[SnapshotRef], deadline: float, reporter: Reporter,
                             wait_timeout_s: float) -> list[SnapshotRef]:
    """``provider.wait``, asked again after a poll throttled, unanswered or answered with a server
    error past one call's retries."""
    for attempt in itertools.count():
        try:
            return await _in_a_thread_left_at_exit(provider.wait, refs, deadline, reporter.snapshot_progress)
        except ProviderThrottled as exc:
            pause = exc.retry_after if exc.retry_after is not None else _backoff(attempt)
            if time.monotonic() + pause >= deadline:
                raise
            reporter.step("wait", f"throttled, polling again in {pause:.1f}s: {exc.message}")
        except CLOUD_OUTAGE as exc:
            kind = ProviderUnreachable if isinstance(exc, ProviderUnreachable) else ProviderUnavailable
            what, remedy, said = _OUTAGES[kind]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise kind(
                    f"{what} when the wait for the snapshots ran out (policy.wait_timeout_s "
                    f"{wait_timeout_s:g}s): {exc.message}",
                    hint="the snapshots may still complete, but the run is failed: those its rollback could not "
                         f"delete are named in the manifest for `snapctl gc`; {exc.hint or remedy}, or raise "
                         "policy.wait_timeout_s to ride out longer outages") from exc
            # Cut short at the deadline rather than skipped: one last look then may find them done.
            pause = min(_backoff(attempt), remaining)
            reporter.step("wait", f"{said}, polling again in {pause:.1f}s: {exc.message}")
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def after_release(provider: Provider, refs: list[SnapshotRef], reporter: Reporter) -> None:
    """The provider's optional ``after_release`` (``Provider``), once every node is released:
    in a thread left at exit as the wait's is (a stop ends the run at once; what it leaves undone,
    say a tag, the provider can do without). Its failure is a warning: the snapshots are good."""
    hook = getattr(provider, "after_release", None)
    if hook is None or not refs:
        return
    reporter.step("provider", f"{provider.name}: finishing {len(refs)} snapshots, every node released")
    try:
        await _in_a_thread_left_at_exit(hook, refs)
    except Exception as exc:  # noqa: BLE001 - best effort by contract; Ctrl-C and SIGTERM still stop the run
        logging.getLogger(f"snapctl.providers.{provider.name}").warning(
            "after every node was released, %s's after_release failed (the snapshots are kept): %s",
            provider.name, exc)


async def _in_a_thread_left_at_exit(fn: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread``, but in a daemon thread of its own: a backup stopped while it waits
    (Ctrl-C, SIGTERM) ends at once, where joining the thread at exit, as asyncio's executor does,
    kept it until the wait ended by itself, hours later with a cloud's. A wait only reads (polls,
    a local snapshot's fsyncs), so leaving one behind at exit is harmless."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if outcome.done():  # given up on: the run was stopped
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(result)  # type: ignore[arg-type]

    def call() -> None:
        result, error = None, None
        try:
            result = context.run(fn, *args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task as it is
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop has closed: nobody waits for this any more

    threading.Thread(target=call, name="snapctl-wait", daemon=True).start()
    return await outcome


def _backoff(attempt: int) -> float:
    return min(MAX_PAUSE_S, 2.0 ** min(attempt, 16))  # 2.0 ** 1024 overflows: a day-long wait gets there
