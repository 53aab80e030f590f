"""Projects (tenants) and their AK/SK credentials, as the admin API manages them.

A new project starts like the admin project: the default quotas (no Quota row) and a "default" security group.
A project can be deleted only when it owns nothing: every table with a `project_id` (or an image `owner`) is
counted, skipping rows that are soft-deleted (`deleted_at` set, or status deleted), so resource kinds added later
block the delete without changes here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from sqlalchemy import Table, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col
from sqlmodel import select as sm_select

import controller.models  # noqa: F401  (every table, for the ownership walk)
from controller.bootstrap import ADMIN_PROJECT, new_access_key, new_secret_key
from controller.errors import BadRequest, Conflict, NotFound
from controller.models.common import iso_z, utcnow
from controller.models.network import SecurityGroup, SecurityGroupRule
from controller.models.project import Credential, Project
from controller.models.quota import ClientToken, Quota
from controller.models.view_stamp import ViewStamp
from controller.services.networks import ensure_default_security_group

log = logging.getLogger(__name__)

PROJECT_NOT_FOUND = "Ecs.0000"  # as the quota admin API already answers for an unknown project
CREDENTIAL_NOT_FOUND = "Ecs.0000"
PROJECT_CONFLICT = "Ecs.0104"
MAX_NAME, MAX_DESCRIPTION = 64, 255
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Rows that belong to a project without being resources of it: they go with the project.
_BOOKKEEPING = {"project", "credential", "quota", "clienttoken", "job", "view_stamp"}
_DELETED_STATUSES = ("DELETED", "deleted")


def check_name(name: str) -> str:
    if not 1 <= len(name) <= MAX_NAME or not _NAME.match(name):
        raise BadRequest(
            f"Invalid project name {name!r}: 1 to {MAX_NAME} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_description(description: str | None) -> str:
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"Invalid description: at most {MAX_DESCRIPTION} characters")
    return description or ""


def create_project(session: Session, name: str, description: str | None = None) -> Project:
    """A new project with its default security group; 409 if the name is taken."""
    check_name(name)
    project = Project(name=name, description=check_description(description))
    if session.exec(sm_select(Project).where(Project.name == name)).first() is not None:
        raise Conflict(f"A project named {name!r} already exists", code=PROJECT_CONFLICT)
    try:
        with session.begin_nested():
            session.add(project)
    except IntegrityError:  # a concurrent create took the name
        raise Conflict(f"A project named {name!r} already exists", code=PROJECT_CONFLICT) from None
    ensure_default_security_group(session, project.id)
    session.flush()
    log.info("created project %s (%s)", project.id, name)
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.exec(sm_select(Project).order_by(col(Project.name))).all())


def get_project(session: Session, ref: str) -> Project:
    """A project by id, or by name."""
    project = session.get(Project, ref) or session.exec(sm_select(Project).where(Project.name == ref)).first()
    if project is None:
        raise NotFound(f"Project {ref} does not exist", code=PROJECT_NOT_FOUND)
    return project


def owned_resources(session: Session, project_id: str) -> dict[str, int]:
    """What the project still owns, per table (only tables with live rows)."""
    default_group_ids = list(
        session.exec(sm_select(SecurityGroup.id).where(SecurityGroup.default_of == project_id)).all()
    )
    owned: dict[str, int] = {}
    for table in _resource_tables():
        owner = table.c.get("project_id") if "project_id" in table.c else table.c.get("owner")
        if owner is None:
            continue
        stmt = select(func.count()).select_from(table).where(owner == project_id)
        if "deleted_at" in table.c:
            stmt = stmt.where(table.c.deleted_at.is_(None))
        elif "status" in table.c:
            stmt = stmt.where(table.c.status.not_in(_DELETED_STATUSES))
        # The default group and its rules come with the project and go with it.
        if table.name == SecurityGroup.__tablename__:
            stmt = stmt.where(table.c.default_of.is_(None))
        if table.name == SecurityGroupRule.__tablename__ and default_group_ids:
            stmt = stmt.where(table.c.security_group_id.not_in(default_group_ids))
        count = int(session.execute(stmt).scalar_one())
        if count:
            owned[table.name] = count
    return owned


def _resource_tables() -> Iterable[Table]:
    return (t for t in SQLModel.metadata.sorted_tables if t.name not in _BOOKKEEPING)


def delete_project(session: Session, project_id: str, caller_project_id: str) -> list[str]:
    """Delete an empty project with its credentials, quotas and default group; the access keys it had."""
    project = get_project(session, project_id)
    if project.id == caller_project_id or project.name == ADMIN_PROJECT:
        raise Conflict(
            f"Project {project.id} is the admin project and cannot be deleted", code=PROJECT_CONFLICT
        )
    owned = owned_resources(session, project.id)
    if owned:
        what = ", ".join(f"{n} {table}" for table, n in sorted(owned.items()))
        raise Conflict(f"Project {project.id} still owns resources: {what}", code=PROJECT_CONFLICT)
    keys = list(
        session.exec(sm_select(Credential.access_key).where(Credential.project_id == project.id)).all()
    )
    groups = list(
        session.exec(sm_select(SecurityGroup.id).where(SecurityGroup.project_id == project.id)).all()
    )
    session.execute(delete(SecurityGroupRule).where(col(SecurityGroupRule.security_group_id).in_(groups)))
    # The view stamp goes too (on PostgreSQL the deferred bump of the group deletes leaves one counter row).
    for table in (SecurityGroup, ClientToken, Quota, Credential, ViewStamp):
        session.execute(delete(table).where(col(table.project_id) == project.id))
    session.delete(project)
    session.flush()
    log.info("deleted project %s (%s) and its credentials %s", project.id, project.name, keys)
    return keys


def project_view(project: Project) -> dict[str, object]:
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description,
        "created_at": iso_z(project.created_at),
    }


# --- credentials ---


def issue_credential(session: Session, project_id: str, description: str | None = None) -> Credential:
    """A new (non-admin) AK/SK for the project; the secret is only ever shown in the answer to this call."""
    project = get_project(session, project_id)
    cred = Credential(
        access_key=new_access_key(),
        secret_key=new_secret_key(),
        project_id=project.id,
        description=check_description(description),
    )
    session.add(cred)
    session.flush()
    log.info("issued credential %s for project %s", cred.access_key, project.id)
    return cred


def list_credentials(session: Session, project_id: str | None = None) -> list[Credential]:
    stmt = sm_select(Credential).order_by(col(Credential.created_at), col(Credential.access_key))
    if project_id is not None:
        stmt = stmt.where(Credential.project_id == get_project(session, project_id).id)
    return list(session.exec(stmt).all())


def revoke_credential(session: Session, access_key: str) -> Credential:
    """Revoke an access key (again is a no-op); the last working admin key cannot be revoked (409)."""
    cred = session.get(Credential, access_key)
    if cred is None:
        raise NotFound(f"Credential {access_key} does not exist", code=CREDENTIAL_NOT_FOUND)
    if cred.revoked_at is not None:
        return cred
    if cred.is_admin:
        admins = session.exec(
            sm_select(func.count(col(Credential.access_key))).where(
                Credential.is_admin == True,  # noqa: E712  (SQL expression)
                col(Credential.revoked_at).is_(None),
            )
        ).one()
        if admins <= 1:
            raise Conflict(
                f"Credential {access_key} is the last admin credential and cannot be revoked",
                code=PROJECT_CONFLICT,
            )
    cred.revoked_at = utcnow()
    session.add(cred)
    session.flush()
    log.info("revoked credential %s of project %s", access_key, cred.project_id)
    return cred


def credential_view(cred: Credential, *, secret: bool = False) -> dict[str, object]:
    """IAM's access-key shape (`access`, `status`, `create_time`), plus the project and, once, the secret."""
    view: dict[str, object] = {
        "access": cred.access_key,
        "project_id": cred.project_id,
        "user_id": cred.user_id,
        "is_admin": cred.is_admin,
        "description": cred.description,
        "status": "inactive" if cred.revoked_at else "active",
        "create_time": iso_z(cred.created_at),
        "revoked_at": iso_z(cred.revoked_at) if cred.revoked_at else None,
    }
    if secret:
        view["secret"] = cred.secret_key
    return view
