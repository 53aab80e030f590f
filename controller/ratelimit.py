"""Per-credential rate limiting: one token bucket per access key, in this controller process's memory.

Each request signed by an access key takes a token; a bucket holds at most `burst` tokens and refills at
`rate` tokens per second. An empty bucket answers 429 with `Retry-After` in the API gateway's error shape
(`APIGW.0308`), before any work is done, so load turns into refusals instead of 5xx. Buckets are keyed by
access keys whose signature was verified, so their number is bounded by the credentials that exist. With
several controllers behind a load balancer each keeps its own buckets: the effective limit is per process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.errors import ApiError
from controller.logs import request_id_var

THROTTLED = "APIGW.0308"


class Throttled(ApiError):
    status = 429
    code = THROTTLED

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            "The throttling threshold has been reached: too many requests for this access key; "
            f"retry after {self.retry_after} s"
        )

    def body(self) -> dict[str, Any]:
        # Throttling comes from Huawei's API gateway, whose errors are flat (the SDK parses either shape).
        return {"error_code": self.code, "error_msg": self.message, "request_id": request_id_var.get()}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key; `rate <= 0` turns limiting off."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def wait_time(self, key: str) -> float:
        """Take a token for `key`: 0.0 if one was there, else the seconds until one will be (none taken)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def check(self, key: str) -> None:
        """Take a token for `key` or raise `Throttled`."""
        wait = self.wait_time(key)
        if wait > 0:
            raise Throttled(wait)
