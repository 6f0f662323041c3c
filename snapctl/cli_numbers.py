"""The command line's number flags (`trigger --timeout`, `status --watch`, `list --limit`): one
parser, which typer makes each flag's click type, so that every one refuses NaN, infinity and
values past its ceiling while the command line is parsed, in one line naming the flag with a hint.

`trigger --timeout 1e308` overflowed the transport's deadline (a 91-line OverflowError traceback,
and with `-o json` no document); `--limit nan` got click's three lines of usage and no hint.
"""

from __future__ import annotations

import math
from typing import Any

from snapctl.units import MAX_DURATION_S


class Number:
    """The parser of one number flag: ``kind`` (float or int) more than ``above`` (or at least
    ``at_least``), finite, and at most ``maximum`` (None: no ceiling), which ``maximum_words``
    follows in its error. ``problem`` follows
    "FLAG VALUE: " in the error of a value that is no such number; ``hint`` ends every error."""

    def __init__(self, flag: str, *, problem: str, hint: str, kind: type = float, above: float | None = 0.0,
                 at_least: float | None = None, maximum: float | None = MAX_DURATION_S,
                 maximum_words: str = "seconds (ten years)") -> None:
        self.flag, self.problem, self.hint, self.kind = flag, problem, hint, kind
        self.above, self.at_least, self.maximum, self.maximum_words = above, at_least, maximum, maximum_words
        self.__name__ = kind.__name__  # typer names the click type after it

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str):  # a default: the command's own, not the command line's
            return value
        from snapctl.errors import BadInputError  # here: `snapctl --help` parses no number

        try:
            number = self.kind(value)  # int() of 5000 digits is a ValueError too
        except ValueError:
            number = None
        if (number is None or not math.isfinite(number) or (self.above is not None and number <= self.above)
                or (self.at_least is not None and number < self.at_least)):
            raise BadInputError(f"{self.flag} {_shown(value)}: {self.problem}", hint=self.hint)
        if self.maximum is not None and number > self.maximum:
            raise BadInputError(f"{self.flag} {_shown(value)}: at most {self.maximum:.0f} {self.maximum_words}",
                                hint=self.hint)
        return number


def _shown(value: str) -> str:
    plain = value and value == value.strip() and value.isprintable() and len(value) <= 40
    return value if plain else repr(value[:37] + "..." if len(value) > 40 else value)
