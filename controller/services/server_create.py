"""`POST /v1[.1]/{project_id}/cloudservers`: validate everything, then write servers, ports and jobs at once.

Nothing is created unless the whole request is valid: checks of the body alone come first, then every
reference is resolved, then one transaction adds the Server rows, their ports (IPAM) and a `createServer` job
with one `createSingleServer` sub-job per server. The project's quota is checked in that transaction after
the rows are flushed (see `services.quotas`), and an `X-Client-Token` is recorded in it (see
`services.idempotency`). A dry run runs the very same transaction and rolls it back, so it also catches a
fixed IP that is already taken or a quota that is full.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import string
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.auth.deps import Caller
from controller.config import Settings
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import BadRequest
from controller.jobs.queue import new_job
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.image import ACTIVE as IMAGE_ACTIVE
from controller.models.image import Image
from controller.models.network import SecurityGroup, Subnet, Vpc
from controller.models.server import CreateServersIn, Server, ServerIn
from controller.services import (
    flavors,
    idempotency,
    image_store,
    ipam,
    keypairs,
    networks,
    quotas,
    server_groups,
    server_publicip,
)
from controller.state import transition

log = logging.getLogger(__name__)

CREATE_JOB = "createServer"
CREATE_ONE_JOB = "createSingleServer"

NAME_MAX = 64
DESCRIPTION_MAX = 85
USER_DATA_MAX = 32 * 1024  # bytes, before base64 (Huawei's limit)
ROOT_SIZE_MIN, ROOT_SIZE_MAX = 1, 1024
MAX_NICS = 12
MAX_TAGS = 10
VOLUME_TYPES = ("SATA", "SAS", "SSD", "GPSSD", "ESSD", "GPSSD2", "ESSD2")
PASSWORD_SPECIALS = "!@$%^-_=+[{}]:,./?~#*"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class CreateResult:
    job_id: str | None
    server_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Checked:
    """The body after the checks that need no database."""

    names: list[str]
    user_data: str | None  # base64 as received; validated
    root_size: int | None
    publicip: server_publicip.PublicipRequest | None = None


def create_servers(
    ctx: ControllerContext,
    caller: Caller,
    body: CreateServersIn,
    request_id: str,
    client_token: str | None = None,
) -> CreateResult:
    """Create the servers, or replay the answer an earlier create with the same `client_token` got."""
    req = body.server
    checked = _check_body(req, ctx.settings.max_servers_per_request)
    if client_token is None or body.dry_run:
        return _create(ctx, caller, body, checked, request_id, None)
    token = idempotency.check_token(client_token)
    digest = idempotency.body_digest(body)
    ttl = timedelta(hours=ctx.settings.client_token_hours)
    with Session(ctx.engine) as session:
        replay = idempotency.find(session, caller.project_id, token, digest, ttl)
    if replay is None:
        try:
            return _create(ctx, caller, body, checked, request_id, (token, digest))
        except IntegrityError:
            # A concurrent create with the same token won the primary key: answer as it did.
            with Session(ctx.engine) as session:
                replay = idempotency.find(session, caller.project_id, token, digest, ttl)
            if replay is None:
                raise
    return CreateResult(job_id=replay.job_id, server_ids=replay.server_ids)


def _create(
    ctx: ControllerContext,
    caller: Caller,
    body: CreateServersIn,
    checked: _Checked,
    request_id: str,
    token: tuple[str, str] | None,
) -> CreateResult:
    req = body.server
    with session_scope(ctx.engine) as session:
        refs = _resolve(session, caller.project_id, req, ctx.settings.default_availability_zone)
        if checked.publicip is not None:
            server_publicip.check_existing(session, caller.project_id, checked.publicip, len(checked.names))
        root_size = _root_size(checked.root_size, refs.image, refs.flavor)
        result = _insert(session, caller, req, checked, refs, root_size, request_id, ctx.settings)
        if req.scheduler_hints is not None and req.scheduler_hints.group is not None:
            server_groups.add_members(
                session, caller.project_id, req.scheduler_hints.group, result.server_ids
            )
        count = len(result.server_ids)
        quotas.check_servers_added(
            session,
            ctx.settings,
            caller.project_id,
            count=count,
            vcpus=refs.flavor.vcpus * count,
            ram_mib=refs.flavor.ram_mib * count,
        )
        if token is not None:
            assert result.job_id is not None
            idempotency.remember(
                session,
                caller.project_id,
                *token,
                idempotency.Replay(result.job_id, result.server_ids),
                timedelta(hours=ctx.settings.client_token_hours),
            )
        if body.dry_run:
            session.rollback()
            log.info(
                "dry run of creating %d servers in project %s passed", len(checked.names), caller.project_id
            )
            return CreateResult(job_id=None)
    log.info(
        "creating servers %s in project %s (job %s)", result.server_ids, caller.project_id, result.job_id
    )
    ctx.kick_jobs()
    return result


# --- checks of the body alone ---


def _check_body(req: ServerIn, max_count: int) -> _Checked:
    if not 1 <= req.count <= max_count:
        raise BadRequest(f"Invalid count {req.count}: it must be between 1 and {max_count}")
    names = _names(req.name, req.count, req.is_auto_rename)
    if req.data_volumes:
        raise BadRequest("data_volumes are not supported yet: create the server, then attach EVS volumes")
    publicip = server_publicip.parse(req.publicip) if req.publicip is not None else None
    charging = (req.extendparam or {}).get("chargingMode")
    if charging not in (None, "postPaid", 0, "0"):
        raise BadRequest("Only pay-per-use (chargingMode postPaid) servers are supported")
    if len(req.nics) > MAX_NICS:
        raise BadRequest(f"Invalid nics: at most {MAX_NICS} NICs per server")
    if req.count > 1 and any(nic.ip_address for nic in req.nics):
        raise BadRequest("A fixed ip_address cannot be used when creating more than one server (count > 1)")
    if req.description is not None and (
        len(req.description) > DESCRIPTION_MAX or set("<>") & set(req.description)
    ):
        raise BadRequest(f"Invalid description: at most {DESCRIPTION_MAX} characters, without '<' or '>'")
    if req.root_volume.volumetype not in VOLUME_TYPES:
        raise BadRequest(
            f"Invalid root_volume.volumetype {req.root_volume.volumetype!r}: "
            f"use one of {', '.join(VOLUME_TYPES)}"
        )
    size = req.root_volume.size
    if size is not None and not ROOT_SIZE_MIN <= size <= ROOT_SIZE_MAX:
        raise BadRequest(
            f"Invalid root_volume.size {size}: it must be between {ROOT_SIZE_MIN} and {ROOT_SIZE_MAX}"
        )
    _check_password(req.admin_pass)
    _check_user_data(req.user_data)
    _check_metadata(req.metadata)
    _check_tags(req)
    return _Checked(names=names, user_data=req.user_data, root_size=size, publicip=publicip)


def _names(name: str, count: int, auto_rename: bool) -> list[str]:
    names = [f"{name}-{i:04d}" for i in range(1, count + 1)] if count > 1 and auto_rename else [name] * count
    for candidate in (name, *names):
        if not candidate or len(candidate) > NAME_MAX or not _NAME.fullmatch(candidate):
            raise BadRequest(
                f"Invalid name {candidate!r}: use 1-{NAME_MAX} letters, digits, '-', '_' or '.'"
                + (" (including the -0001 suffix)" if candidate != name else "")
            )
    return names


def _check_password(password: str | None) -> None:
    if password is None:
        return
    classes = [
        any(c in string.ascii_uppercase for c in password),
        any(c in string.ascii_lowercase for c in password),
        any(c in string.digits for c in password),
        any(c in PASSWORD_SPECIALS for c in password),
    ]
    allowed = set(string.ascii_letters + string.digits + PASSWORD_SPECIALS)
    if not 8 <= len(password) <= 26 or sum(classes) < 3 or not set(password) <= allowed:
        raise BadRequest(
            "Invalid adminPass: 8-26 characters with at least three of upper case, lower case, digits and "
            f"special characters ({PASSWORD_SPECIALS})"
        )


def _check_user_data(user_data: str | None) -> None:
    if user_data is None:
        return
    try:
        raw = base64.b64decode("".join(user_data.split()), validate=True)  # line-wrapped base64 is fine
    except (binascii.Error, ValueError):
        raise BadRequest("Invalid user_data: it must be base64 encoded") from None
    if len(raw) > USER_DATA_MAX:
        raise BadRequest(f"Invalid user_data: {len(raw)} bytes, the limit is {USER_DATA_MAX} before encoding")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Invalid user_data: the decoded content must be UTF-8 text") from None


def _check_metadata(metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        if not 1 <= len(key) <= 255 or len(value) > 255:
            raise BadRequest(f"Invalid metadata {key!r}: keys are 1-255 characters, values up to 255")


def _check_tags(req: ServerIn) -> None:
    if len(req.server_tags) > MAX_TAGS:
        raise BadRequest(f"Invalid server_tags: at most {MAX_TAGS} tags")
    keys = [t.key for t in req.server_tags]
    if len(set(keys)) != len(keys):
        raise BadRequest("Invalid server_tags: a key appears twice")
    for tag in req.server_tags:
        if not 1 <= len(tag.key) <= 36 or len(tag.value) > 43 or "=" in tag.key or "," in tag.key + tag.value:
            raise BadRequest(
                f"Invalid server tag {tag.key!r}: keys are 1-36 characters, values up to 43, "
                "without ',' or '='"
            )


# --- references ---


@dataclass(frozen=True)
class _Refs:
    flavor: Flavor
    image: Image
    vpc: Vpc
    subnets: list[Subnet]
    groups: list[SecurityGroup]  # empty: the project's default group, resolved in the write transaction
    availability_zone: str
    zone_requested: bool


def _resolve(session: Session, project_id: str, req: ServerIn, default_zone: str) -> _Refs:
    flavor = flavors.get_flavor(session, req.flavor_ref)
    image = image_store.get_image(session, project_id, req.image_ref)
    if image.status != IMAGE_ACTIVE:
        raise BadRequest(f"Image {image.id} is {image.status}, not active: it cannot boot a server yet")
    if flavor.ram_mib < image.min_ram:
        raise BadRequest(
            f"Flavor {flavor.id} has {flavor.ram_mib} MiB of RAM; "
            f"image {image.id} needs at least {image.min_ram} MiB"
        )
    vpc = networks.get_vpc(session, project_id, req.vpcid)
    subnets = []
    for nic in req.nics:
        subnet = networks.get_subnet(session, project_id, nic.subnet_id)
        if subnet.vpc_id != vpc.id:
            raise BadRequest(f"Subnet {subnet.id} is not in VPC {vpc.id} (it belongs to VPC {subnet.vpc_id})")
        subnets.append(subnet)
    group_ids = list(dict.fromkeys(g.id for g in req.security_groups))
    groups = [networks.get_security_group(session, project_id, gid) for gid in group_ids]
    if req.key_name is not None:
        keypairs.get_keypair(session, project_id, req.key_name)
    zone = req.availability_zone or default_zone
    if req.availability_zone is not None:
        _check_zone(session, req.availability_zone, default_zone)
    return _Refs(flavor, image, vpc, subnets, groups, zone, req.availability_zone is not None)


def _check_zone(session: Session, zone: str, default_zone: str) -> None:
    known = {default_zone, *session.exec(select(Host.availability_zone).distinct()).all()}
    if zone not in known:
        raise BadRequest(f"Invalid availability_zone {zone!r}: known zones are {', '.join(sorted(known))}")


def _root_size(requested: int | None, image: Image, flavor: Flavor) -> int:
    floor = max(image.min_disk, flavor.disk_gib, ROOT_SIZE_MIN)
    if requested is None:
        return floor
    if requested < image.min_disk:
        raise BadRequest(
            f"root_volume.size {requested} GiB is smaller than the {image.min_disk} GiB "
            f"that image {image.id} needs"
        )
    return requested


# --- the write transaction ---


def _insert(
    session: Session,
    caller: Caller,
    req: ServerIn,
    checked: _Checked,
    refs: _Refs,
    root_size: int,
    request_id: str,
    settings: Settings,
) -> CreateResult:
    parent = new_job(caller.project_id, CREATE_JOB, request_id=request_id)
    session.add(parent)
    # Write first: pysqlite opens its transaction only at the first write, and a savepoint taken outside one
    # (ensure_default_security_group uses one) would commit on its own instead of rolling back with the rest.
    session.flush()
    groups = refs.groups or [networks.ensure_default_security_group(session, caller.project_id)]
    group_ids = [g.id for g in groups]
    build = transition("create")
    server_ids: list[str] = []
    for name in checked.names:
        server = Server(
            project_id=caller.project_id,
            user_id=caller.user_id,
            name=name,
            description=req.description or "",
            status=build.during or "BUILD",
            task_state=build.task_state,
            flavor_id=refs.flavor.id,
            image_id=refs.image.id,
            availability_zone=refs.availability_zone,
            key_name=req.key_name,
            vpc_id=refs.vpc.id,
            security_group_ids=group_ids,
            meta=dict(req.metadata),
            tags=[{"key": t.key, "value": t.value} for t in req.server_tags],
            root_volume_type=req.root_volume.volumetype,
            root_volume_size=root_size,
            user_data=checked.user_data,
            admin_pass=req.admin_pass,
        )
        session.add(server)
        session.flush()
        for nic, subnet in zip(req.nics, refs.subnets, strict=True):
            ipam.allocate_port(
                session,
                project_id=caller.project_id,
                subnet=subnet,
                ip_address=nic.ip_address,
                security_group_ids=group_ids,
                server_id=server.id,
                device_owner=f"compute:{refs.availability_zone}",
            )
        payload: dict[str, Any] = {"server_id": server.id, "zone_requested": refs.zone_requested}
        if checked.publicip is not None:  # an EIP for it: allocated now, bound by the job once it runs
            payload["publicip"] = server_publicip.reserve(
                session, settings, caller.project_id, checked.publicip
            )
        session.add(
            new_job(
                caller.project_id,
                CREATE_ONE_JOB,
                parent_id=parent.id,
                payload=payload,
                entities={"server_id": server.id},
                request_id=request_id,
            )
        )
        server_ids.append(server.id)
    session.flush()
    return CreateResult(job_id=parent.id, server_ids=server_ids)
