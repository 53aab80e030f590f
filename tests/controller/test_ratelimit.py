"""The token-bucket limiter as pure logic, on a hand-driven clock."""

from __future__ import annotations

import pytest

from controller.ratelimit import RateLimiter, Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.wait_time("ak") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_time("ak") == pytest.approx(0.5)
    clock.now += 0.25  # half a token back: still refused, and the wait shrinks
    assert limiter.wait_time("ak") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.wait_time("ak") == 0.0
    assert limiter.wait_time("ak") > 0


def test_refill_never_exceeds_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=2, clock=clock)
    limiter.wait_time("ak")
    clock.now += 3600.0
    assert [limiter.wait_time("ak") == 0.0 for _ in range(3)] == [True, True, False]


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.wait_time("a") == 0.0
    assert limiter.wait_time("a") > 0
    assert limiter.wait_time("b") == 0.0


def test_zero_rate_is_unlimited() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=Clock())
    assert all(limiter.wait_time("ak") == 0.0 for _ in range(1000))


def test_check_raises_throttled_with_whole_seconds() -> None:
    limiter = RateLimiter(rate=4.0, burst=1, clock=Clock())
    limiter.check("ak")
    with pytest.raises(Throttled) as info:
        limiter.check("ak")
    err = info.value
    assert (err.status, err.code, err.retry_after) == (429, "APIGW.0308", 1)
    assert err.headers() == {"Retry-After": "1"}
    assert err.body()["error_code"] == "APIGW.0308"
    slow = RateLimiter(rate=0.1, burst=1, clock=Clock())
    slow.check("ak")
    with pytest.raises(Throttled) as info:
        slow.check("ak")
    assert info.value.retry_after == 10
