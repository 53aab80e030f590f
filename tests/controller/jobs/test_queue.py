"""The durable job queue on real databases (SQLite and PostgreSQL): claims, leases, resume after a crash,
parent roll-up."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import Session

from controller.config import Settings
from controller.db import create_schema, make_engine, session_scope
from controller.jobs import queue
from controller.jobs.registry import HANDLERS, JobFailed, job_handler
from controller.jobs.worker import JobContext, JobWorkers
from controller.models.common import utcnow
from controller.models.job import FAIL, INIT, RUNNING, SUCCESS, Job
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()

KIND = "testOnlyEcho"  # a job kind that exists only in these tests


@pytest.fixture
def engine(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def echo_handler():  # type: ignore[no-untyped-def]
    runs: list[str] = []

    def run(jctx: JobContext) -> dict[str, str]:
        if jctx.job.payload.get("fail"):
            raise JobFailed("Ecs.9999", "asked to fail")
        runs.append(jctx.job.id)
        return {"echo": jctx.job.payload.get("text", "")}

    failed: list[tuple[str, str]] = []
    job_handler(KIND, on_fail=lambda jctx, code, reason: failed.append((code, reason)))(run)
    yield runs, failed
    HANDLERS.pop(KIND, None)


def _add(engine, job: Job) -> str:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        session.add(job)
    return job.id


def test_a_job_is_claimed_once(engine) -> None:  # type: ignore[no-untyped-def]
    job_id = _add(engine, queue.new_job("p", KIND))
    first = queue.claim_next(engine, [KIND], "a", 30)
    assert first is not None and first.id == job_id and first.status == RUNNING and first.attempts == 1
    assert queue.claim_next(engine, [KIND], "b", 30) is None


def test_an_expired_lease_is_claimed_again(engine) -> None:  # type: ignore[no-untyped-def]
    job_id = _add(engine, queue.new_job("p", KIND))
    assert queue.claim_next(engine, [KIND], "dead-controller", 30) is not None
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_until = utcnow() - timedelta(seconds=1)
        session.add(job)
    again = queue.claim_next(engine, [KIND], "new-controller", 30)
    assert again is not None and again.lease_owner == "new-controller" and again.attempts == 2


def test_parent_follows_children(engine) -> None:  # type: ignore[no-untyped-def]
    parent = queue.new_job("p", "parentOnly")
    _add(engine, parent)
    a = _add(engine, queue.new_job("p", KIND, parent_id=parent.id))
    b = _add(engine, queue.new_job("p", KIND, parent_id=parent.id))
    for _ in range(2):
        assert queue.claim_next(engine, [KIND], "w", 30) is not None
    queue.finish(engine, a, "w", status=SUCCESS)
    with Session(engine) as session:
        assert session.get(Job, parent.id).status == RUNNING  # type: ignore[union-attr]
    queue.finish(engine, b, "w", status=FAIL, error_code="Ecs.1", fail_reason="boom")
    with Session(engine) as session:
        done = session.get(Job, parent.id)
        assert done is not None and done.status == FAIL and done.fail_reason == "boom"


def _wait_finished(engine, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            if job is not None and job.status in (SUCCESS, FAIL):
                return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


class _Ctx:
    """The part of ControllerContext the workers use."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.settings = Settings()


def test_workers_run_jobs_and_report_failures(engine, echo_handler) -> None:  # type: ignore[no-untyped-def]
    runs, failed = echo_handler
    workers = JobWorkers(_Ctx(engine), threads=2, lease_seconds=5, max_attempts=3)  # type: ignore[arg-type]
    workers.start()
    try:
        ok = _add(engine, queue.new_job("p", KIND, payload={"text": "hi"}))
        bad = _add(engine, queue.new_job("p", KIND, payload={"fail": True}))
        workers.kick()
        assert _wait_finished(engine, ok).entities == {"echo": "hi"}
        done = _wait_finished(engine, bad)
        assert (done.status, done.error_code, done.fail_reason) == (FAIL, "Ecs.9999", "asked to fail")
        assert failed == [("Ecs.9999", "asked to fail")]
        assert runs == [ok]
    finally:
        workers.stop()


def test_a_job_interrupted_too_often_fails_with_a_reason(engine, echo_handler) -> None:  # type: ignore[no-untyped-def]
    job = queue.new_job("p", KIND)
    job.status, job.attempts, job.lease_until = RUNNING, 3, utcnow() - timedelta(seconds=1)
    job_id = _add(engine, job)
    workers = JobWorkers(_Ctx(engine), threads=1, lease_seconds=5, max_attempts=3)  # type: ignore[arg-type]
    workers.start()
    try:
        done = _wait_finished(engine, job_id)
        assert done.status == FAIL and "gave up after 3 attempts" in (done.fail_reason or "")
    finally:
        workers.stop()


def test_claims_race_between_threads(engine) -> None:  # type: ignore[no-untyped-def]
    ids = {_add(engine, queue.new_job("p", KIND)) for _ in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def grab(owner: str) -> None:
        while (job := queue.claim_next(engine, [KIND], owner, 30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    assert INIT not in {j for j in claimed}


def test_two_controllers_on_one_database_run_each_of_100_jobs_once(  # type: ignore[no-untyped-def]
    engine, database_url: str, echo_handler
) -> None:
    """Two JobWorkers with their own engines (two controller processes sharing the database) drain one queue."""
    runs, _ = echo_handler
    other = make_engine(database_url)
    pools = [
        JobWorkers(_Ctx(e), threads=3, lease_seconds=30, max_attempts=3)  # type: ignore[arg-type]
        for e in (engine, other)
    ]
    try:
        for workers in pools:
            workers.start()
        ids = [_add(engine, queue.new_job("p", KIND, payload={"text": str(n)})) for n in range(100)]
        for workers in pools:
            workers.kick()
        done = [_wait_finished(engine, job_id) for job_id in ids]
        assert sorted(runs) == sorted(ids)  # every job ran, none twice
        assert {(j.status, j.attempts) for j in done} == {(SUCCESS, 1)}
    finally:
        for workers in pools:
            workers.stop()
        other.dispose()
