"""`GET /v1/{project_id}/jobs/{job_id}`: the async job model shared by ECS, EVS and IMS."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session

from controller.auth.deps import ProjectCaller
from controller.errors import NotFound
from controller.jobs.queue import children_of
from controller.models.common import iso_z
from controller.models.job import Job

router = APIRouter()


def job_view(job: Job, children: list[Job] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "status": job.status,
        "job_id": job.id,
        "job_type": job.kind,
        "begin_time": iso_z(job.begin_time or job.created_at, millis=True),
        "end_time": iso_z(job.end_time, millis=True) or "",
        "error_code": job.error_code or "",
        "fail_reason": job.fail_reason or "",
        "entities": dict(job.entities),
    }
    if children is not None:
        view["entities"]["sub_jobs_total"] = len(children)
        view["entities"]["sub_jobs"] = [job_view(c) for c in children]
    if job.status == "FAIL":
        view["code"] = job.error_code
        view["message"] = job.fail_reason
    return view


@router.get("/v1/{project_id}/jobs/{job_id}")
def show_job(project_id: str, job_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with Session(request.app.state.ctx.engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.project_id != caller.project_id:
            raise NotFound(f"Job[{job_id}] could not be found.", code="Ecs.0015")
        children = children_of(session, job.id)
        return job_view(job, children if children else ([] if job.parent_id is None else None))
