"""The durable job queue: enqueue, claim with a lease, finish, and roll sub-job results up into their parent.

Claims are compare-and-swap updates on (status, lease), so two workers (threads or controller processes sharing one
database) never run the same job at once, and a job whose runner died is claimed again once its lease expires.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.db import session_scope
from controller.models.common import utcnow
from controller.models.job import FAIL, FINISHED, INIT, RUNNING, SUCCESS, Job


def new_job(
    project_id: str,
    kind: str,
    *,
    payload: dict[str, Any] | None = None,
    parent_id: str | None = None,
    entities: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> Job:
    return Job(
        project_id=project_id,
        kind=kind,
        payload=payload or {},
        parent_id=parent_id,
        entities=entities or {},
        request_id=request_id,
    )


def claim_next(
    engine: Engine, kinds: list[str], owner: str, lease_seconds: float, limit: int = 8
) -> Job | None:
    """Claim one runnable job (INIT, or RUNNING with an expired lease) for `owner`, or return None."""
    now = utcnow()
    with Session(engine, expire_on_commit=False) as session:
        candidates = session.exec(
            select(Job.id, Job.status)
            .where(col(Job.kind).in_(kinds))
            .where(or_(col(Job.status) == INIT, (col(Job.status) == RUNNING) & (col(Job.lease_until) < now)))
            .order_by(col(Job.created_at))
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: controllers skip each other's candidates
        ).all()
        for job_id, status in candidates:
            stmt = (
                update(Job)
                .where(col(Job.id) == job_id, col(Job.status) == status)
                .where(or_(col(Job.lease_until).is_(None), col(Job.lease_until) < now))
                .values(
                    status=RUNNING,
                    lease_owner=owner,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    attempts=Job.attempts + 1,
                )
            )
            if session.exec(stmt).rowcount == 1:  # type: ignore[call-overload]
                job = session.get(Job, job_id)
                assert job is not None
                if job.begin_time is None:
                    job.begin_time = now
                    session.add(job)
                session.commit()
                if job.parent_id:
                    _mark_parent_running(session, job.parent_id)
                session.refresh(job)
                return job
            session.rollback()
    return None


def renew_lease(engine: Engine, job_id: str, owner: str, lease_seconds: float) -> bool:
    with session_scope(engine) as session:
        stmt = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.lease_owner) == owner, col(Job.status) == RUNNING)
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]


def finish(
    engine: Engine,
    job_id: str,
    owner: str,
    *,
    status: str,
    entities: dict[str, Any] | None = None,
    error_code: str | None = None,
    fail_reason: str | None = None,
) -> None:
    """Record the outcome of a job this owner holds, then update its parent."""
    assert status in FINISHED
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.status in FINISHED:
            return
        job.status = status
        job.end_time = utcnow()
        job.lease_owner = None
        job.lease_until = None
        if entities:
            job.entities = {**job.entities, **entities}
        job.error_code = error_code
        job.fail_reason = fail_reason
        session.add(job)
        session.flush()
        if job.parent_id:
            rollup_parent(session, job.parent_id)


def _mark_parent_running(session: Session, parent_id: str) -> None:
    parent = session.get(Job, parent_id)
    if parent is not None and parent.status == INIT:
        parent.status = RUNNING
        parent.begin_time = utcnow()
        session.add(parent)
        session.commit()


def rollup_parent(session: Session, parent_id: str) -> None:
    """A parent succeeds when every child did, fails when all are done and one failed."""
    parent = session.get(Job, parent_id)
    if parent is None:
        return
    children = session.exec(select(Job).where(Job.parent_id == parent_id)).all()
    if children and all(c.status in FINISHED for c in children):
        failed = [c for c in children if c.status == FAIL]
        parent.status = FAIL if failed else SUCCESS
        parent.end_time = utcnow()
        if failed:
            parent.error_code = failed[0].error_code
            parent.fail_reason = failed[0].fail_reason
        session.add(parent)
    elif parent.status == INIT and any(c.status != INIT for c in children):
        parent.status = RUNNING
        parent.begin_time = parent.begin_time or utcnow()
        session.add(parent)


def children_of(session: Session, parent_id: str) -> list[Job]:
    return list(
        session.exec(select(Job).where(Job.parent_id == parent_id).order_by(col(Job.created_at))).all()
    )
