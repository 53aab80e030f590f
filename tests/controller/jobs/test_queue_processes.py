"""Two real controller processes (the job workers of each, `tests/support/queue_worker.py`) drain one
PostgreSQL job queue: every job runs exactly once, and both processes take part (`FOR UPDATE SKIP LOCKED`
claims with leases, `controller/jobs/queue.py`)."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session, col, func, select

from controller.db import create_schema, make_engine, session_scope
from controller.jobs import queue
from controller.models.job import SUCCESS, Job
from tests.support.queue_worker import KIND

log = logging.getLogger(__name__)

JOBS = 300
WAIT_S = 300.0  # only bounds a hang: a loaded machine


def _wait(what: str, check, timeout: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what} after {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_two_controller_processes_run_each_job_once(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    create_schema(engine)
    runs = tmp_path / "runs.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(2):
            ready = tmp_path / f"ready-{n}"
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.support.queue_worker", database_url, str(runs), str(ready)],
                    cwd=Path(__file__).resolve().parents[3],
                    stdout=(tmp_path / f"worker-{n}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        for n, proc in enumerate(procs):
            _wait(
                f"worker {n} to start",
                lambda n=n, p=proc: (tmp_path / f"ready-{n}").exists() or p.poll() is not None,
            )
            assert proc.poll() is None, (tmp_path / f"worker-{n}.log").read_text()
        started = time.monotonic()
        with session_scope(engine) as session:
            session.add_all(queue.new_job("p", KIND, payload={"n": n}) for n in range(JOBS))

        def finished() -> bool:
            with Session(engine) as session:
                done = select(func.count()).select_from(Job).where(col(Job.status).in_(("SUCCESS", "FAIL")))
                return int(session.exec(done).one()) == JOBS

        _wait("every job to finish", finished)
        log.info("two processes ran %d jobs in %.1f s", JOBS, time.monotonic() - started)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0], [
        (tmp_path / f"worker-{n}.log").read_text() for n in (0, 1)
    ]

    with Session(engine) as session:
        jobs = session.exec(select(Job)).all()
    engine.dispose()
    assert {(j.status, j.attempts) for j in jobs} == {(SUCCESS, 1)}
    lines = [line.split() for line in runs.read_text().splitlines()]
    per_job = collections.Counter(job_id for _, job_id in lines)
    assert sorted(per_job) == sorted(j.id for j in jobs) and set(per_job.values()) == {1}  # each ran once
    per_process = collections.Counter(pid for pid, _ in lines)
    log.info("jobs run per process: %s", dict(per_process))
    assert per_process.keys() == {str(p.pid) for p in procs}, per_process  # both took part
    assert {j.entities["pid"] for j in jobs} == {str(p.pid) for p in procs}  # and recorded it in the job
