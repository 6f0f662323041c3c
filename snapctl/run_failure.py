"""How a failed backup run is told: one line naming the cause, each node's own error once, and the
hint that says best what to do."""

from __future__ import annotations

import asyncio

from node_agent.models import LOST_ON_ENGINE, LOST_WITH_AGENT
from snapctl.errors import AgentError, AgentUnauthorized, AgentUnreachable, Interrupted, RunFailed, SnapctlError
from snapctl.manifest import Manifest
from snapctl.redact import redact

NOT_DELETED = "snapshots not deleted (snapctl gc finds them): "  # how a rollback's record names what it left
LEFT_HELD_DOC = "docs/agent.md, 'an engine left held'"  # what a node's record cites where a hold may remain


def run_failure(manifest: Manifest, exc: BaseException, unrecorded: str | None,
                timed_out: dict[str, SnapctlError | None]) -> BaseException:
    """The error a failed run raises, its cause ``exc`` (an interrupt: ``Interrupted``); ``unrecorded``:
    why the catalog could not record the failure; ``timed_out``: node -> how its snapshot call,
    which outlasted the freeze, ended later."""
    cause = reason(exc)
    # Each node once: its record's error less the "node <name>: " its message starts with, and not
    # the cause again.
    failed = [f"{n}: {r.error.removeprefix(cause + '; ').removeprefix(f'node {n}: ')}"
              for n, r in manifest.nodes.items() if r.error and r.error != cause]
    if unrecorded:
        failed.append(f"the catalog could not record the failure: {unrecorded}")
    detail = f" ({'; '.join(failed)})" if failed else ""
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return rolled_back_on_interrupt(manifest, detail)
    hint = exc.hint if isinstance(exc, SnapctlError) else None
    # A call that outlasted the freeze and then failed says better what to do than "raise
    # max_freeze_s": the cause's own, else another's (a cloud's Retry-After on one node's call
    # also holds up the calls queued behind it, and one of those may have timed out first).
    if any((manifest.nodes[n].error or "").startswith(cause) for n in timed_out):
        late_hints = sorted(timed_out, key=lambda n: not (manifest.nodes[n].error or "").startswith(cause))
        hint = next((late.hint for n in late_hints if (late := timed_out[n]) is not None and late.hint), hint)
    left = [n for n, r in manifest.nodes.items() if LEFT_HELD_DOC in (r.error or "")]
    if left:  # the cause's hint is about the run; an engine left held outlasts it, and is the operator's now
        hint = joined(hint, f"{', '.join(left)} may still be held: see {LEFT_HELD_DOC}")
    return RunFailed(f"backup run {manifest.run_id} failed and was rolled back: {cause}{detail}", hint=hint)


def rolled_back_on_interrupt(manifest: Manifest, detail: str) -> Interrupted:
    """A run stopped (Ctrl-C, SIGTERM) before its snapshots were all recorded, and rolled back:
    said bare, "interrupted" left the operator to find out from the catalog whether a backup was
    kept, and what the rollback could not delete."""
    outcome = f"backup {manifest.run_id} was rolled back{detail}"
    left = next((d for d in manifest.degradations if d.startswith(NOT_DELETED)), None)
    if left is None:
        return Interrupted(outcome=outcome)
    return Interrupted(outcome=f"{outcome}; {left}",
                       hint="`snapctl gc` lists them; `snapctl gc --delete` deletes those no manifest owns")


def hold_ended_before_complete(node: str, ended: str | None) -> RunFailed:
    """A node whose agent answered the run's complete ``released: false``, and how the agent says
    its hold had ended (``CompleteResponse.ended``; None from an agent before that field)."""
    if ended == LOST_ON_ENGINE:
        why = ("the engine dropped it before complete: it restarted, or someone released its hold by hand",
               "check why the engine restarted on that node (its log), then run the backup again")
    elif ended == LOST_WITH_AGENT:
        why = ("its agent was killed while it held (SIGKILL, the OOM killer, a crash), and the agent started "
               "since released the hold", "find out why the agent died (its log, `journalctl -u snapctl-agent`, "
               "the kernel's OOM messages), then run the backup again")
    elif ended == "expired":
        why = ("its lease expired: snapctl did not renew it in time",
               "raise policy.lease_ttl_s if snapctl stalls (a slow or stopped control host)")
    elif ended == "completed":
        why = ("another caller completed it", "if nobody else should hold the agent's token, rotate it")
    else:
        why = (ended, ("raise policy.lease_ttl_s if snapctl stalls; if nobody else should hold the agent's token, "
                       "rotate it"))
    return RunFailed(f"node {node}: its hold had already ended when the run completed it"
                     + (f" ({why[0]})" if why[0] else "") + ", so the snapshot may not be consistent", hint=why[1])


def rollback_complete_failed(exc: BaseException, lease_ttl_s: float) -> str:
    """What a node's record says of a rollback's complete that failed with ``exc``: whether a hold
    of the run may remain there, and until when."""
    if isinstance(exc, AgentUnreachable) and not exc.delivered:  # nothing listens: no lease to wait for
        return (f"complete could not be sent ({exc.reason}): no agent runs there now ({LEFT_HELD_DOC})")
    if isinstance(exc, AgentUnauthorized):
        # An agent process keeps the token it started with, so one that refuses ours accepted no
        # prepare with it: telling the operator to wait for a lease would send them after nothing.
        return (f"complete refused ({exc.reason}): an agent that refuses snapctl's token holds nothing of this run "
                f"(one restarted with another token meanwhile may have left its engine held: {LEFT_HELD_DOC})")
    return f"complete failed ({node_reason(exc)}); its lease expires within {lease_ttl_s:g}s"


def reason(exc: BaseException) -> str:
    if isinstance(exc, SnapctlError):
        return exc.message
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return "interrupted"
    return redact(f"{type(exc).__name__}: {exc}")


def node_reason(exc: BaseException) -> str:
    """``exc``'s reason where its node is named already: without "node N: " and the hint."""
    return exc.reason if isinstance(exc, AgentError) else reason(exc)


def joined(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second
