"""EVS quotas: `GET /v2/{project_id}/os-quota-sets/{target_project_id}?usage=true` (`CinderListQuotasRequest`).

A project sees its own quota set; an admin credential may name any project. The answer always has the detail
form (`{"in_use", "limit", "reserved"}` per resource), the only one the SDK's model reads.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session, col, func, select

from controller.auth.deps import ProjectCaller
from controller.context import ControllerContext
from controller.errors import NotFound
from controller.models.project import Project
from controller.models.volume import VOLUME_TYPES, Volume
from controller.services import quotas
from controller.services.volume_state import DELETED

router = APIRouter()

UNLIMITED = {"in_use": 0, "limit": -1, "reserved": 0}


@router.get("/v2/{project_id}/os-quota-sets/{target_project_id}")
def show_quota_set(
    project_id: str, target_project_id: str, caller: ProjectCaller, request: Request, usage: str | None = None
) -> dict[str, Any]:
    ctx: ControllerContext = request.app.state.ctx
    with Session(ctx.engine) as session:
        known = session.get(Project, target_project_id) is not None
        if not known or (target_project_id != caller.project_id and not caller.is_admin):
            raise NotFound(f"Project {target_project_id} could not be found.", code="EVS.2025")
        limits = quotas.get_limits(session, ctx.settings, target_project_id)
        used = quotas.get_usage(session, target_project_id)
        by_type = _usage_by_type(session, target_project_id)

    def detail(in_use: int, limit: int) -> dict[str, int]:
        return {"in_use": in_use, "limit": limit, "reserved": 0}

    quota_set: dict[str, Any] = {
        "id": target_project_id,
        "volumes": detail(used.volumes, limits.volumes),
        "gigabytes": detail(used.gigabytes, limits.gigabytes),
        "per_volume_gigabytes": UNLIMITED,
        # Snapshots and backups have no quota in labcloud (yet): unlimited, usage not counted here.
        "snapshots": UNLIMITED,
        "backups": UNLIMITED,
        "backup_gigabytes": UNLIMITED,
    }
    for volume_type in ("SATA", "SAS", "SSD"):
        count, size = by_type.get(volume_type, (0, 0))
        quota_set[f"volumes_{volume_type}"] = detail(count, -1)
        quota_set[f"gigabytes_{volume_type}"] = detail(size, -1)
        quota_set[f"snapshots_{volume_type}"] = UNLIMITED
    return {"quota_set": quota_set}


def _usage_by_type(session: Session, project_id: str) -> dict[str, tuple[int, int]]:
    rows = session.exec(
        select(Volume.volume_type, func.count(col(Volume.id)), func.coalesce(func.sum(Volume.size), 0))
        .where(Volume.project_id == project_id, Volume.status != DELETED)
        .group_by(col(Volume.volume_type))
    ).all()
    return {t: (int(n), int(size)) for t, n, size in rows if t in VOLUME_TYPES}
