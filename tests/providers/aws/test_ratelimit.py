"""The token bucket's arithmetic with an injected clock, and Retry-After parsing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from snapctl.ratelimit import TokenBucket, parse_retry_after


class FakeTime:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)


def bucket(rate: float, burst: float, t: FakeTime) -> TokenBucket:
    return TokenBucket(rate, burst, clock=t.clock, sleep=t.sleep)


def test_a_full_bucket_serves_its_burst_without_waiting_then_paces_at_the_rate():
    t = FakeTime()
    b = bucket(5, 100, t)

    for _ in range(100):
        assert b.acquire()
    assert t.slept == []

    b.acquire()
    b.acquire()
    # Reservations queue up: the 101st waits 1/5 s, the 102nd 2/5 s (both counted from now).
    assert t.slept == pytest.approx([0.2, 0.4])


def test_tokens_refill_with_time_up_to_the_burst():
    t = FakeTime()
    b = bucket(10, 20, t)
    for _ in range(20):
        b.acquire()
    assert b.available == pytest.approx(0)

    t.now += 0.5
    assert b.available == pytest.approx(5)
    t.now += 3600
    assert b.available == pytest.approx(20)


def test_max_wait_refuses_without_taking_tokens():
    t = FakeTime()
    b = bucket(1, 2, t)
    b.acquire()
    b.acquire()

    assert b.acquire(max_wait=0.5) is False
    assert b.available == pytest.approx(0)
    assert b.acquire(max_wait=1.0) is True
    assert t.slept == pytest.approx([1.0])


def test_pause_holds_every_caller_back_for_the_given_time():
    t = FakeTime()
    b = bucket(5, 100, t)

    b.pause(3)
    b.acquire()

    assert t.slept == pytest.approx([3 + 1 / 5])


def test_concurrent_callers_never_take_more_than_burst_plus_refill():
    t = FakeTime()
    b = bucket(5, 10, t)
    threads = [threading.Thread(target=b.acquire) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # 10 free, then 20 reservations queued 0.2 s apart: 0.2, 0.4, ... 4.0.
    assert sorted(t.slept) == pytest.approx([0.2 * i for i in range(1, 21)])


def test_invalid_buckets_are_refused():
    with pytest.raises(ValueError):
        TokenBucket(0, 10)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)
    with pytest.raises(ValueError):
        TokenBucket(1, 2).acquire(3)


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), (" 1.5 ", 1.5), ("-3", 0.0), (None, None), ("", None), ("soon", None),
])
def test_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date():
    when = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(format_datetime(when, usegmt=True), now=lambda: now) == pytest.approx(30)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=lambda: now + 60) == 0.0
