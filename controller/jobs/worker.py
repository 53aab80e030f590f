"""Worker threads that run job handlers. Each job step is idempotent, so a resumed job converges."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from controller.jobs import queue
from controller.jobs.registry import HANDLERS, JobFailed
from controller.logs import request_id_var
from controller.models.job import FAIL, SUCCESS, Job

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    job: Job
    ctx: ControllerContext

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    def session(self) -> Session:
        return Session(self.ctx.engine, expire_on_commit=False)


class JobWorkers:
    def __init__(self, ctx: ControllerContext, threads: int, lease_seconds: float, max_attempts: int) -> None:
        self.ctx = ctx
        self.owner = f"controller-{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._wake = threading.Condition()
        self._pending = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"job-worker-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    def kick(self) -> None:
        """Wake the workers now (a job was just enqueued by this process)."""
        with self._wake:
            self._pending += 1
            self._wake.notify()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = queue.claim_next(self.ctx.engine, list(HANDLERS), self.owner, self.lease_seconds)
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with self._wake:
                    if self._pending == 0:
                        self._wake.wait(timeout=1.0)
                    self._pending = max(0, self._pending - 1)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        handler = HANDLERS[job.kind]
        jctx = JobContext(job=job, ctx=self.ctx)
        token = request_id_var.set(job.request_id or job.id)
        renewer = _LeaseRenewer(self, job.id)
        renewer.start()
        try:
            if job.attempts > self.max_attempts:
                raise JobFailed(
                    "Ecs.0010",
                    f"gave up after {self.max_attempts} attempts: the job was interrupted "
                    "each time (controller restart or crash)",
                )
            log.info("job %s (%s) attempt %d started", job.id, job.kind, job.attempts)
            entities = handler.run(jctx) or {}
            queue.finish(self.ctx.engine, job.id, self.owner, status=SUCCESS, entities=entities)
            log.info("job %s (%s) succeeded", job.id, job.kind)
        except Exception as exc:
            code, reason = (
                (exc.code, exc.reason) if isinstance(exc, JobFailed) else ("Ecs.0010", _describe(exc))
            )
            if not isinstance(exc, JobFailed):
                log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            else:
                log.warning("job %s (%s) failed: %s %s", job.id, job.kind, code, reason)
            self._fail(jctx, handler.on_fail, code, reason)
        finally:
            renewer.stop()
            request_id_var.reset(token)

    def _fail(self, jctx: JobContext, on_fail: Any, code: str, reason: str) -> None:
        try:
            if on_fail is not None:
                on_fail(jctx, code, reason)
        except Exception:
            log.exception("cleanup after failed job %s raised", jctx.job.id)
        queue.finish(
            self.ctx.engine, jctx.job.id, self.owner, status=FAIL, error_code=code, fail_reason=reason
        )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 500 else text[:497] + "..."


class _LeaseRenewer:
    """Keeps a running job's lease fresh so no other worker takes it over."""

    def __init__(self, workers: JobWorkers, job_id: str) -> None:
        self.workers = workers
        self.job_id = job_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)

    def _loop(self) -> None:
        interval = self.workers.lease_seconds / 3
        while not self._done.wait(interval):
            try:
                queue.renew_lease(
                    self.workers.ctx.engine, self.job_id, self.workers.owner, self.workers.lease_seconds
                )
            except Exception:
                log.exception("renewing the lease of job %s failed", self.job_id)
