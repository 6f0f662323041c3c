"""snapctl.runner.run: asyncio.run's result and errors, without the task holding the result."""

from __future__ import annotations

import pytest

from snapctl.errors import RunFailed
from snapctl.runner import run


async def _answer(value):
    return value


async def _fail():
    raise RunFailed("backup run r1 failed")


class _CountsRepr:
    calls = 0

    def __repr__(self) -> str:
        type(self).calls += 1
        return "big"


def test_run_returns_the_result_and_never_formats_it():
    result = _CountsRepr()
    assert run(_answer(result)) is result
    assert _CountsRepr.calls == 0


def test_run_raises_what_the_coroutine_raised():
    with pytest.raises(RunFailed, match="backup run r1 failed"):
        run(_fail())
