"""IP and MAC address management: ports (NICs) with a fixed IP from a subnet and a unique MAC.

The database is the arbiter. Each allocation first writes to its subnet row (a no-op update): on SQLite that
takes the database write lock, on PostgreSQL the row lock, so allocations in one subnet queue up instead of
colliding. The unique constraints on (subnet_id, ip_address) and mac_address stay the final word: an insert
that still loses a race is rolled back to its savepoint and retried with a fresh choice.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.errors import BadRequest, Conflict, NotFound
from controller.models.network import Port, Subnet

log = logging.getLogger(__name__)

MAC_PREFIX = "fa:16:3e"
AUTO_OFFSET = 10  # automatic addresses start at .10 (the first few are left for the gateway and services)
MAX_ATTEMPTS = 20


def random_mac() -> str:
    return MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(3))


def allocate_port(
    session: Session,
    *,
    project_id: str,
    subnet: Subnet,
    ip_address: str | None,
    security_group_ids: list[str],
    server_id: str | None,
    device_owner: str = "compute:lab-1a",
) -> Port:
    """A new port in `subnet`, flushed in the caller's transaction (committed with it, rolled back with it).

    `ip_address` None picks the lowest free address from .10 up. A requested address must lie inside the
    subnet, not be its network, broadcast or gateway address, and be free; otherwise BadRequest.
    """
    network = ipaddress.IPv4Network(subnet.cidr)
    requested = _check_requested(subnet, network, ip_address) if ip_address is not None else None
    _lock_subnet(session, subnet.id)
    for _ in range(MAX_ATTEMPTS):
        ip = requested or _lowest_free(session, subnet, network)
        if requested is not None and _ip_in_use(session, subnet.id, requested):
            raise BadRequest(f"IP address {requested} is already in use in subnet {subnet.id}")
        port = Port(
            project_id=project_id,
            vpc_id=subnet.vpc_id,
            subnet_id=subnet.id,
            ip_address=ip,
            mac_address=random_mac(),
            server_id=server_id,
            device_owner=device_owner,
            security_group_ids=list(security_group_ids),
        )
        try:
            with session.begin_nested():
                session.add(port)
        except IntegrityError:
            # Another transaction took the same IP (or, very rarely, MAC) first: choose again.
            log.debug("port insert lost a race in subnet %s (ip %s); retrying", subnet.id, ip)
            continue
        log.info(
            "allocated port %s ip %s mac %s in subnet %s for %s",
            port.id,
            ip,
            port.mac_address,
            subnet.id,
            server_id,
        )
        return port
    raise Conflict(
        f"Could not allocate an address in subnet {subnet.id} after {MAX_ATTEMPTS} attempts; retry",
        code="VPC.0209",
    )


def release_ports(session: Session, server_id: str) -> list[Port]:
    """Delete every port of a server (its IPs and MACs become free when the caller commits)."""
    ports = list(session.exec(select(Port).where(Port.server_id == server_id)).all())
    for port in ports:
        session.delete(port)
    session.flush()
    if ports:
        log.info("released ports %s of server %s", [p.id for p in ports], server_id)
    return ports


def usable_range(network: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last host address (as ints) of a subnet, excluding network and broadcast."""
    return int(network.network_address) + 1, int(network.broadcast_address) - 1


def _check_requested(subnet: Subnet, network: ipaddress.IPv4Network, ip_address: str) -> str:
    try:
        ip = ipaddress.IPv4Address(ip_address)
    except ValueError:
        raise BadRequest(f"ip_address {ip_address!r} is not a valid IPv4 address") from None
    if ip not in network:
        raise BadRequest(f"IP address {ip} is not inside subnet {subnet.id} ({subnet.cidr})")
    if ip in (network.network_address, network.broadcast_address):
        raise BadRequest(f"IP address {ip} is the network or broadcast address of subnet {subnet.cidr}")
    if str(ip) == subnet.gateway_ip:
        raise BadRequest(f"IP address {ip} is the gateway of subnet {subnet.id}")
    return str(ip)


def _lock_subnet(session: Session, subnet_id: str) -> None:
    stmt = update(Subnet).where(col(Subnet.id) == subnet_id).values(updated_at=Subnet.updated_at)
    if session.exec(stmt).rowcount != 1:  # type: ignore[call-overload]
        raise NotFound(f"Subnet {subnet_id} does not exist", code="VPC.0202")


def _ip_in_use(session: Session, subnet_id: str, ip: str) -> bool:
    stmt = select(Port.id).where(Port.subnet_id == subnet_id, Port.ip_address == ip)
    return session.exec(stmt).first() is not None


def _lowest_free(session: Session, subnet: Subnet, network: ipaddress.IPv4Network) -> str:
    used = {
        int(ipaddress.IPv4Address(ip))
        for ip in session.exec(select(Port.ip_address).where(Port.subnet_id == subnet.id)).all()
    }
    used.add(int(ipaddress.IPv4Address(subnet.gateway_ip)))
    first, last = usable_range(network)
    # Tiny subnets (/29, /30) have no .10: start right after the network address there.
    start = int(network.network_address) + AUTO_OFFSET if network.num_addresses > AUTO_OFFSET + 2 else first
    for value in range(start, last + 1):
        if value not in used:
            return str(ipaddress.IPv4Address(value))
    raise Conflict(f"Subnet {subnet.id} ({subnet.cidr}) has no free IP address left", code="VPC.0208")
