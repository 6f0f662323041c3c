"""What the agent answers (409) when a call names a run that does not hold the engine, or the
engine is held by another run or still being released: each message names the holder, so that
snapctl and the operator see who holds the node, and says what to do about it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapctl.errors import EngineBusy, LeaseConflict

if TYPE_CHECKING:
    from node_agent.service import _Lease


def held_by_another(lease: _Lease | None, message: str) -> LeaseConflict:
    if lease is not None and lease.releasing:
        return LeaseConflict(f"{message}, whose lease expired; the engine would not release ({lease.release_error})",
                             holder=lease.run_id, hint="the agent retries the release until the engine answers")
    return LeaseConflict(message, holder=lease.run_id if lease else None,
                         hint="wait until that run completes or its lease expires")


def releasing(node: str, lease: _Lease, verb: str) -> LeaseConflict:
    return LeaseConflict(f"cannot {verb}: the lease of run {lease.run_id} on node {node} expired; the "
                         f"agent is releasing the engine, which would not release yet ({lease.release_error})",
                         holder=lease.run_id, hint="start a new run once the engine is released")


def not_holding(node: str, lease: _Lease | None, ended: str | None, run_id: str, verb: str) -> LeaseConflict:
    """``ended``: how the run's own hold ended, if this agent saw it end."""
    past = f" (its hold already {ended})" if ended else ""
    if lease is None:
        # A run this agent never heard of may be one a previous agent process held for: its
        # engine may still be held (a Tarantool pin), which this agent cannot know of.
        hint = None if ended else ("if this agent was restarted while that run held the engine, the engine "
                                   "may still be held: docs/agent.md, 'an engine left held'")
        return LeaseConflict(f"cannot {verb}: run {run_id} does not hold node {node}{past}; nothing is held",
                             hint=hint)
    return LeaseConflict(f"cannot {verb}: node {node} is held by run {lease.run_id}, not by run {run_id}{past}",
                         holder=lease.run_id)


def behind_trigger(run_id: str, under_way_s: float) -> EngineBusy:
    """A prepare that found a trigger keeping the engine busy: refused, not queued behind it."""
    return EngineBusy(f"the engine's own snapshot (a trigger) is still under way, for {under_way_s:.0f}s now: "
                      f"prepare of run {run_id} refused: nothing is held",
                      hint="it cannot be stopped and ends by itself: back up again once it is done (snapctl status "
                           "no longer shows the node busy); if it was the backup's own --trigger, raise "
                           "policy.trigger_timeout_s above how long the engine's snapshots take")
