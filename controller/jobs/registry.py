"""Job kinds and their handlers. A handler module registers itself with `@job_handler(kind)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.jobs.worker import JobContext

RunFn = Callable[["JobContext"], "dict[str, Any] | None"]
FailFn = Callable[["JobContext", str, str], None]


class JobFailed(Exception):
    """A defined failure: the job ends FAIL with this code and reason, without retries."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class JobHandler:
    run: RunFn
    on_fail: FailFn | None = None  # puts the resource in a defined state (ERROR with a reason) and cleans up


HANDLERS: dict[str, JobHandler] = {}


def job_handler(kind: str, *, on_fail: FailFn | None = None) -> Callable[[RunFn], RunFn]:
    def register(fn: RunFn) -> RunFn:
        HANDLERS[kind] = JobHandler(run=fn, on_fail=on_fail)
        return fn

    return register
