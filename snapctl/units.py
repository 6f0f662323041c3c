"""Byte counts as people read them, for messages and tables alike: the core's messages (a drill's
cleanup, a store's space check) must not import the render package to say a size. And the
ceiling of every duration, which the command line's flags share with the configs (this module
imports nothing: `snapctl --help` loads it)."""

from __future__ import annotations

# Every duration feeds a timer, a deadline or a date: past this one overflows somewhere (asyncio's
# deadline slots, threading's TIMEOUT_MAX, datetime + timedelta), and no timeout or age is meant
# to be longer. The inventory's, the agent config's engine blocks' and the CLI's flags' alike.
MAX_DURATION_S = 3650 * 86400.0
MAX_DURATION_WORDS = "3650d (ten years)"


def human_bytes(value: float | None, *, unit: str = "B") -> str:
    """``1536`` -> ``1.5 KiB``; ``None`` (unknown) -> ``-``; ``unit`` names the bytes below a KiB."""
    if value is None:
        return "-"
    for prefix in (unit, "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {prefix}" if prefix == unit else f"{value:.1f} {prefix}"
        value /= 1024
    return f"{value:.1f} TiB"
