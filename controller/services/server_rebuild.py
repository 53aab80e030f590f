"""Reinstall (`os-reinstall`) and change OS (`os-change`): a new root disk from the server's image or another one.

The server keeps its id, ports (so its IPs), security groups and data volumes; it gets a new key pair or admin
password if the request names one (else it keeps its key pair), and cloud-init runs again from a new seed. The
old root disk is gone once the host has replaced it. The row takes the new image, key pair and user data only
when the job succeeds (`jobs/handlers/server_rebuild.py`), so a failed rebuild never claims what is not there.
"""

from __future__ import annotations

import base64
import binascii
import logging

from sqlalchemy import update
from sqlmodel import Session, col

from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import ApiError, BadRequest, Conflict
from controller.jobs.queue import new_job
from controller.models.image import ACTIVE as IMAGE_ACTIVE
from controller.models.image import Image
from controller.models.server import Server
from controller.models.server_change import WITH_STOP_SERVER, ReinstallOptionIn
from controller.services import flavors, image_store, keypairs
from controller.services.servers import SERVER_BUSY, begin_transition, get_server
from controller.state import ACTIVE

log = logging.getLogger(__name__)

REINSTALL_JOB, CHANGE_OS_JOB = "reinstallServer", "changeServerOs"
USER_DATA_MAX = 32 * 1024  # bytes once decoded, as for create


def rebuild_server(
    ctx: ControllerContext,
    project_id: str,
    server_id: str,
    option: ReinstallOptionIn,
    request_id: str,
    *,
    image_id: str | None = None,
    cloud_init: bool = True,
) -> str:
    """Start a reinstall (`image_id` None: the server's own image) or a change of OS; returns the job id."""
    if option.adminpass is not None and option.keyname is not None:
        raise BadRequest("Give either adminpass or keyname, not both")
    user_data = option.metadata.user_data if option.metadata is not None else None
    if user_data is not None and not cloud_init:
        raise BadRequest("metadata.user_data needs the cloud-init API (the /v2 path)")
    if user_data is not None:
        _check_user_data(user_data)
    with session_scope(ctx.engine) as session:
        server = get_server(session, project_id, server_id)
        image = check_image(session, server, image_id or server.image_id)
        key_name = server.key_name
        if option.keyname is not None:
            key_name = _known_keypair(session, project_id, option.keyname)
        elif option.adminpass is not None:
            key_name = None  # the new system is reached with the password
        if server.status == ACTIVE and option.mode != WITH_STOP_SERVER:
            raise Conflict(
                f"Instance[{server.id}] is running: stop it first, or pass mode {WITH_STOP_SERVER} to have "
                "it stopped for the reinstall",
                code=SERVER_BUSY,
            )
        from_status = server.status  # read before the update below refreshes the row
        begin_transition(session, [server], "rebuild")
        session.exec(  # type: ignore[call-overload]
            update(Server).where(col(Server.id) == server.id).values(admin_pass=option.adminpass)
        )
        kind = REINSTALL_JOB if image_id is None else CHANGE_OS_JOB
        payload = {
            "server_id": server.id,
            "from_status": from_status,
            "image_id": image.id,
            "key_name": key_name,
            "user_data": user_data if user_data is not None else server.user_data,
        }
        job = new_job(
            project_id, kind, payload=payload, entities={"server_id": server.id}, request_id=request_id
        )
        session.add(job)
    log.info("server %s: %s from image %s (job %s)", server_id, kind, image.id, job.id)
    ctx.kick_jobs()
    return job.id


def check_image(session: Session, server: Server, image_id: str) -> Image:
    """The image to install, visible to the project, active, and fitting the server's root disk and flavor."""
    image = image_store.get_image(session, server.project_id, image_id)
    if image.status != IMAGE_ACTIVE:
        raise BadRequest(f"Image {image.id} is {image.status}, not active")
    if image.min_disk > server.root_volume_size:
        raise BadRequest(
            f"Image {image.id} needs a {image.min_disk} GiB root disk; Instance[{server.id}] has "
            f"{server.root_volume_size} GiB"
        )
    flavor = flavors.get_flavor(session, server.flavor_id, include_disabled=True)
    if image.min_ram > flavor.ram_mib:
        raise BadRequest(f"Image {image.id} needs {image.min_ram} MiB of memory; flavor {flavor.id} has less")
    return image


def _known_keypair(session: Session, project_id: str, name: str) -> str:
    try:
        return keypairs.get_keypair(session, project_id, name).name
    except ApiError as exc:
        raise BadRequest(f"Invalid keyname {name!r}: {exc.message}") from None


def _check_user_data(value: str) -> None:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("metadata.user_data must be base64") from None
    if len(decoded) > USER_DATA_MAX:
        raise BadRequest(
            f"metadata.user_data is {len(decoded)} bytes once decoded; the limit is {USER_DATA_MAX}"
        )
