"""`publicip` in a server create: an existing EIP (`publicip.id`) or a new one (`publicip.eip`) for each server.

The request is checked with the rest of the create, and a new EIP is allocated in the create's own transaction,
so a full pool, the EIP quota or an EIP already in use fail the request at once, and a dry run or any other
failure allocates nothing. The EIP is bound to the server's first port by the create job, in the same
transaction that makes the server ACTIVE (its host is known by then, and must have an external network). If
the create fails, an EIP allocated for it is released; an existing EIP stays the project's, unbound.

What the job needs rides in its payload: `{"publicip_id": …, "allocated": bool, "delete_on_termination": bool}`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from controller.config import Settings
from controller.errors import BadRequest
from controller.models.eip import Eip
from controller.models.network import Port
from controller.services import eips

log = logging.getLogger(__name__)

SHARE_TYPES = {"PER": "PER", "WHOLE": "WHOLE"}


@dataclass(frozen=True)
class NewEip:
    iptype: str
    size: int | None
    share_type: str


@dataclass(frozen=True)
class PublicipRequest:
    eip_id: str | None  # an existing EIP of the project
    new: NewEip | None  # or one to allocate per server
    delete_on_termination: bool


def parse(raw: dict[str, Any]) -> PublicipRequest:
    """The `publicip` object of a create body; 400 unless it names exactly one of `id` and `eip`."""
    eip_id, spec = raw.get("id"), raw.get("eip")
    if (eip_id is None) == (spec is None):
        raise BadRequest("Invalid publicip: give either id (an existing EIP) or eip (a new one), not both")
    delete = raw.get("delete_on_termination", False)
    if not isinstance(delete, bool):
        raise BadRequest("Invalid publicip.delete_on_termination: it must be true or false")
    if eip_id is not None:
        if not isinstance(eip_id, str) or not eip_id:
            raise BadRequest("Invalid publicip.id: it must be the id of one of your EIPs")
        return PublicipRequest(eip_id=eip_id, new=None, delete_on_termination=delete)
    if not isinstance(spec, dict):
        raise BadRequest("Invalid publicip.eip: it must be an object with iptype and bandwidth")
    iptype, bandwidth = spec.get("iptype"), spec.get("bandwidth")
    if not isinstance(iptype, str) or iptype not in eips.TYPES:
        raise BadRequest(f"Invalid publicip.eip.iptype {iptype!r}: use one of {', '.join(eips.TYPES)}")
    if not isinstance(bandwidth, dict):
        raise BadRequest("Invalid publicip.eip.bandwidth: it is required (size, sharetype)")
    share = bandwidth.get("sharetype")
    if share not in SHARE_TYPES:
        raise BadRequest(f"Invalid publicip.eip.bandwidth.sharetype {share!r}: use PER or WHOLE")
    size = bandwidth.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise BadRequest(f"Invalid publicip.eip.bandwidth.size {size!r}: it must be an integer (Mbit/s)")
    return PublicipRequest(
        eip_id=None, new=NewEip(iptype=iptype, size=size, share_type=share), delete_on_termination=delete
    )


def check_existing(session: Session, project_id: str, req: PublicipRequest, count: int) -> None:
    """An existing EIP must be the project's, unbound, and go to a single server."""
    if req.eip_id is None:
        return
    if count > 1:
        raise BadRequest("publicip.id names one EIP: it cannot go to more than one server (count > 1)")
    eip = session.get(Eip, req.eip_id)
    if eip is None or eip.project_id != project_id:
        raise BadRequest(f"Invalid publicip.id: EIP {req.eip_id} does not exist")
    if eip.port_id is not None:
        raise BadRequest(f"Invalid publicip.id: EIP {eip.public_ip_address} is already bound to a port")


def reserve(session: Session, settings: Settings, project_id: str, req: PublicipRequest) -> dict[str, Any]:
    """In the create's transaction: allocate a new EIP for one server (quota and pool checked), or keep the
    existing one's id; returns the create job's payload entry."""
    keep = {"delete_on_termination": req.delete_on_termination}
    if req.new is None:
        assert req.eip_id is not None
        return {"publicip_id": req.eip_id, "allocated": False, **keep}
    eip = eips.create_eip(
        session,
        settings,
        project_id,
        type_=req.new.iptype,
        ip_address=None,
        ip_version=4,
        alias=None,
        bandwidth_name=None,
        bandwidth_size=req.new.size,
        share_type=req.new.share_type,
    )
    return {"publicip_id": eip.id, "allocated": True, **keep}


def bind_to_server(session: Session, project_id: str, server_id: str, entry: dict[str, Any]) -> str:
    """Bind the reserved EIP to the server's first port (ApiError if it cannot be); returns the address."""
    eip = eips.get_eip(session, project_id, entry["publicip_id"])
    port = session.exec(
        select(Port).where(Port.server_id == server_id).order_by(col(Port.created_at), col(Port.id))
    ).first()
    if port is None:
        raise BadRequest(f"Server {server_id} has no port to bind EIP {eip.public_ip_address} to")
    if eip.port_id != port.id:
        eips.bind(session, project_id, eip, port.id)
    eip.delete_on_termination = bool(entry.get("delete_on_termination"))
    session.add(eip)
    return eip.public_ip_address


def release_reserved(session: Session, project_id: str, entry: dict[str, Any] | None) -> None:
    """After a failed create: delete an EIP allocated for it, unless bound (then it goes with its server); an
    existing EIP is left to its project."""
    if not entry or not entry.get("allocated"):
        return
    eip = session.get(Eip, entry["publicip_id"])
    if eip is None or eip.project_id != project_id or eip.port_id is not None:
        return
    session.delete(eip)
    session.flush()
    log.info("EIP %s (%s) allocated for a failed create released", eip.id, eip.public_ip_address)
