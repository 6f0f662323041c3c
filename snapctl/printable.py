"""What snapctl echoes of the operator's own input (paths, run ids) and says on one line: control
characters escaped, long values cut. A newline in `-i` or `--to` split an error or a progress line
in two, an ANSI escape in $SNAPCTL_INVENTORY recoloured the terminal, and a 100 KB run id was
repeated whole. The standard library only: the entry points and the renderers both use it."""

from __future__ import annotations

import re

# C0, DEL and C1: what a terminal acts on, or a log reader splits a line at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
SHOWN_PATH = 240  # characters of a path an error repeats: past that, the operator knows which it was


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with each control character written as its escape (``\\n``, ``\\x1b``), then cut
    to ``limit`` characters with a final "…"."""
    text = _CONTROL.sub(_escape, str(text))
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def quoted(text: str, limit: int = 80) -> str:
    """``text`` in quotes, as the operator gave it but printable and at most ``limit`` characters:
    for a value echoed in an error (a run id that matched nothing)."""
    return f"'{printable(text, limit)}'"
