"""``run``: ``asyncio.run`` for coroutines that return large results (manifests, status reports).

``asyncio.run`` installs a SIGINT handler that refers to its main task; restoring the old handler
at exit converts it through an enum, which formats the task's repr, and a finished task's repr
includes its result. For a 1000-node manifest that repr costs 10-50 ms of pure waste per command.
Keeping the result out of the task avoids it; behaviour is otherwise ``asyncio.run``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    result: list[T] = []

    async def main() -> None:
        result.append(await coro)

    asyncio.run(main())
    return result[0]
