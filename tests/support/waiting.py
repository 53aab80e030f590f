"""Waiting for something a test started to happen, with a generous deadline (never a speed assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what} after {timeout} s"
        time.sleep(interval)
