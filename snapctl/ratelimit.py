"""Client-side pacing shared by the providers: a thread-safe token bucket and Retry-After parsing.

Cloud APIs meter calls per account and region with token buckets of their own. Pacing our calls
with the same arithmetic on our side means a run over many nodes spreads its calls instead of
bursting into throttling errors and retry storms.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` tokens per second.

    ``acquire`` reserves its tokens at once (the balance may go negative) and then sleeps outside
    the lock until the reservation is covered, so waiting threads are served in arrival order and
    never spin. ``clock`` and ``sleep`` are injectable so the arithmetic is testable without time.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be greater than zero")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now

    @property
    def available(self) -> float:
        """Tokens in the bucket now (negative while reservations are outstanding)."""
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def reserve(self, tokens: float = 1.0, *, max_wait: float | None = None) -> float | None:
        """Take ``tokens`` and return how long the caller must wait before using them, or None
        (taking nothing) when that wait would exceed ``max_wait``."""
        if tokens > self.burst:
            raise ValueError(f"cannot take {tokens} tokens from a bucket of {self.burst}")
        with self._lock:
            self._refill(self._clock())
            wait = max(0.0, (tokens - self._tokens) / self.rate)
            if max_wait is not None and wait > max_wait:
                return None
            self._tokens -= tokens
            return wait

    def acquire(self, tokens: float = 1.0, *, max_wait: float | None = None) -> bool:
        """Block until ``tokens`` are ours; False (nothing taken) if that would take over ``max_wait``."""
        wait = self.reserve(tokens, max_wait=max_wait)
        if wait is None:
            return False
        if wait > 0:
            self._sleep(wait)
        return True

    def pause(self, seconds: float) -> None:
        """Empty the bucket so that no call goes out for ``seconds``: a server's Retry-After
        applies to every thread sharing this bucket, not only to the one that was told."""
        if seconds <= 0:
            return
        with self._lock:
            self._refill(self._clock())
            self._tokens = min(self._tokens, -seconds * self.rate)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date. None if absent
    or unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now())
