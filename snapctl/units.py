"""Byte counts as people read them, for messages and tables alike: the core's messages (a drill's
cleanup, a store's space check) must not import the render package to say a size."""

from __future__ import annotations


def human_bytes(value: float | None, *, unit: str = "B") -> str:
    """``1536`` -> ``1.5 KiB``; ``None`` (unknown) -> ``-``; ``unit`` names the bytes below a KiB."""
    if value is None:
        return "-"
    for prefix in (unit, "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {prefix}" if prefix == unit else f"{value:.1f} {prefix}"
        value /= 1024
    return f"{value:.1f} TiB"
