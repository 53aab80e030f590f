"""VPCs, subnets and security groups: validation, lifecycle, and the specs agents receive.

Every function takes the caller's session first and raises `controller.errors` types. Lookups are scoped to
a project: another project's id answers 404, exactly like an unknown one. Error codes follow Huawei's VPC
service where documented (VPC.0002 invalid parameter, VPC.0003 VPC not found) and stay consistent where not.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import and_, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from agent.schemas import NetworkSpec, RuleSpec, SecurityGroupSpec, SubnetSpec
from controller.errors import BadRequest, Conflict, NotFound
from controller.models.common import utcnow
from controller.models.network import IdCounter, Port, SecurityGroup, SecurityGroupRule, Subnet, Vpc
from controller.services import overlay

if TYPE_CHECKING:
    from sqlmodel.sql.expression import SelectOfScalar

    from controller.context import ControllerContext

log = logging.getLogger(__name__)

BAD = "VPC.0002"
VPC_NOT_FOUND = "VPC.0003"
SUBNET_NOT_FOUND = "VPC.0202"
SG_NOT_FOUND = "VPC.0602"
RULE_NOT_FOUND = "VPC.0702"
VPC_IN_USE = "VPC.0103"
SUBNET_IN_USE = "VPC.0204"
SG_IN_USE = "VPC.0604"
RULE_EXISTS = "VPC.0703"

DEFAULT_VPC_CIDR = "192.168.0.0/16"
DEFAULT_SG_NAME = "default"
MTU = 1450  # VXLAN's 50 bytes of overhead under a 1500-byte underlay
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MAX_VPC_PREFIX = 24
MAX_SUBNET_PREFIX = 29
PROTOCOLS = ("tcp", "udp", "icmp")
DIRECTIONS = ("ingress", "egress")
ETHERTYPES = ("IPv4", "IPv6")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

M = TypeVar("M", bound=SQLModel)


# --- validation ---


def check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise BadRequest(
            f"Invalid {what} name {value!r}: use 1-64 letters, digits, '_', '-' or '.'", code=BAD
        )
    return value


def check_description(value: str | None) -> str:
    value = value or ""
    if len(value) > 255 or "<" in value or ">" in value:
        raise BadRequest("Invalid description: at most 255 characters, without '<' or '>'", code=BAD)
    return value


def parse_cidr(value: str, what: str) -> ipaddress.IPv4Network:
    """A canonical IPv4 network: `10.0.1.0/24`, not `10.0.1.5/24` (a host address is almost always a typo)."""
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise BadRequest(f"Invalid {what} {value!r}: {exc}", code=BAD) from None


def parse_ip(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise BadRequest(f"Invalid {what} {value!r}: not an IPv4 address", code=BAD) from None


def check_vpc_cidr(value: str) -> ipaddress.IPv4Network:
    net = parse_cidr(value, "VPC cidr")
    if not any(net.subnet_of(r) for r in PRIVATE_RANGES) or net.prefixlen > MAX_VPC_PREFIX:
        raise BadRequest(
            f"Invalid VPC cidr {value}: use 10.0.0.0/8-24, 172.16.0.0/12-24 or 192.168.0.0/16-24", code=BAD
        )
    return net


# --- paging ---


def page(
    session: Session,
    stmt: SelectOfScalar[M],
    model: type[M],
    project_id: str,
    *,
    marker: str | None,
    limit: int | None,
) -> list[M]:
    """Rows in creation order, starting after the row `marker` (an id in the same project)."""
    created, ident = col(model.created_at), col(model.id)  # type: ignore[attr-defined]
    if marker:
        anchor = session.get(model, marker)
        if anchor is None or anchor.project_id != project_id:  # type: ignore[attr-defined]
            raise BadRequest(f"Invalid marker {marker!r}: no such resource", code=BAD)
        a_created, a_id = anchor.created_at, anchor.id  # type: ignore[attr-defined]
        stmt = stmt.where(or_(created > a_created, and_(created == a_created, ident > a_id)))
    stmt = stmt.order_by(created, ident)
    if limit:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


# --- VPCs ---


def get_vpc(session: Session, project_id: str, vpc_id: str) -> Vpc:
    vpc = session.get(Vpc, vpc_id)
    if vpc is None or vpc.project_id != project_id:
        raise NotFound(f"VPC {vpc_id} does not exist", code=VPC_NOT_FOUND)
    return vpc


def list_vpcs(
    session: Session,
    project_id: str,
    *,
    vpc_id: str | None = None,
    marker: str | None = None,
    limit: int | None = None,
) -> list[Vpc]:
    stmt = select(Vpc).where(Vpc.project_id == project_id)
    if vpc_id:
        stmt = stmt.where(Vpc.id == vpc_id)
    return page(session, stmt, Vpc, project_id, marker=marker, limit=limit)


def create_vpc(
    session: Session, project_id: str, *, name: str | None, cidr: str | None, description: str | None = None
) -> Vpc:
    net = check_vpc_cidr(cidr or DEFAULT_VPC_CIDR)
    vpc = Vpc(
        project_id=project_id, name="", cidr=str(net), description=check_description(description), vni=0
    )
    vpc.name = check_name(name, "VPC") if name else f"vpc-{vpc.id[:4]}"
    vpc.vni = next_value(session, "vni")
    session.add(vpc)
    session.flush()
    log.info("created VPC %s (%s, vni %s) in project %s", vpc.id, vpc.cidr, vpc.vni, project_id)
    return vpc


def update_vpc(
    session: Session,
    project_id: str,
    vpc_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    cidr: str | None = None,
) -> Vpc:
    vpc = lock_vpc(session, get_vpc(session, project_id, vpc_id))
    if name is not None:
        vpc.name = check_name(name, "VPC")
    if description is not None:
        vpc.description = check_description(description)
    if cidr is not None:
        net = check_vpc_cidr(cidr)
        outside = [
            s.cidr for s in subnets_of(session, vpc.id) if not ipaddress.IPv4Network(s.cidr).subnet_of(net)
        ]
        if outside:
            raise BadRequest(f"VPC cidr {net} would not contain its subnets {', '.join(outside)}", code=BAD)
        vpc.cidr = str(net)
    vpc.updated_at = utcnow()
    session.add(vpc)
    session.flush()
    return vpc


def delete_vpc(session: Session, project_id: str, vpc_id: str) -> None:
    vpc = get_vpc(session, project_id, vpc_id)
    if subnets_of(session, vpc.id):
        raise Conflict(f"VPC {vpc_id} still has subnets; delete them first", code=VPC_IN_USE)
    session.delete(vpc)
    session.flush()
    log.info("deleted VPC %s", vpc_id)


def lock_vpc(session: Session, vpc: Vpc) -> Vpc:
    """Serialize changes to a VPC's address plan (subnet overlap, cidr) with a no-op write to its row: the
    database write lock on SQLite, a row lock on PostgreSQL. Returns the VPC re-read under the lock."""
    stmt = update(Vpc).where(col(Vpc.id) == vpc.id).values(updated_at=Vpc.updated_at)
    session.exec(stmt)  # type: ignore[call-overload]
    session.refresh(vpc)
    return vpc


def next_value(session: Session, name: str) -> int:
    """The next value of a monotonic counter (1, 2, 3 …), taken inside the caller's transaction."""
    for _ in range(5):
        stmt = (
            update(IdCounter)
            .where(col(IdCounter.name) == name)
            .values(value=IdCounter.value + 1)
            .returning(col(IdCounter.value))
        )
        value = session.exec(stmt).scalar_one_or_none()  # type: ignore[call-overload]
        if value is not None:
            return int(value)
        try:
            with session.begin_nested():
                session.add(IdCounter(name=name, value=1))
            return 1
        except IntegrityError:
            continue  # another transaction created the counter first
    raise Conflict(f"could not allocate the next {name}; retry", code=BAD)


# --- subnets ---


def get_subnet(session: Session, project_id: str, subnet_id: str) -> Subnet:
    subnet = session.get(Subnet, subnet_id)
    if subnet is None or subnet.project_id != project_id:
        raise NotFound(f"Subnet {subnet_id} does not exist", code=SUBNET_NOT_FOUND)
    return subnet


def subnets_of(session: Session, vpc_id: str) -> list[Subnet]:
    stmt = select(Subnet).where(Subnet.vpc_id == vpc_id).order_by(col(Subnet.created_at), col(Subnet.id))
    return list(session.exec(stmt).all())


def list_subnets(
    session: Session,
    project_id: str,
    *,
    vpc_id: str | None = None,
    marker: str | None = None,
    limit: int | None = None,
) -> list[Subnet]:
    stmt = select(Subnet).where(Subnet.project_id == project_id)
    if vpc_id:
        stmt = stmt.where(Subnet.vpc_id == vpc_id)
    return page(session, stmt, Subnet, project_id, marker=marker, limit=limit)


def _dns_servers(
    primary: str | None, secondary: str | None, dns_list: list[str] | None
) -> tuple[str | None, ...]:
    servers = list(dns_list) if dns_list else [d for d in (primary, secondary) if d]
    if secondary and not primary and not dns_list:
        raise BadRequest("secondary_dns needs a primary_dns", code=BAD)
    if len(servers) > 2:
        raise BadRequest("At most two DNS servers (dnsList) are supported", code=BAD)
    checked = [str(parse_ip(s, "DNS server")) for s in servers]
    return (checked[0] if checked else None, checked[1] if len(checked) > 1 else None)


def create_subnet(
    session: Session,
    project_id: str,
    *,
    vpc_id: str,
    name: str,
    cidr: str,
    gateway_ip: str,
    dhcp_enable: bool = True,
    primary_dns: str | None = None,
    secondary_dns: str | None = None,
    dns_list: list[str] | None = None,
    availability_zone: str | None = None,
    description: str | None = None,
) -> Subnet:
    check_name(name, "subnet")
    net = parse_cidr(cidr, "subnet cidr")
    gateway = parse_ip(gateway_ip, "gateway_ip")
    vpc = lock_vpc(session, get_vpc(session, project_id, vpc_id))
    if not net.subnet_of(ipaddress.IPv4Network(vpc.cidr)):
        raise BadRequest(f"Subnet cidr {net} is not inside the cidr {vpc.cidr} of VPC {vpc.id}", code=BAD)
    if net.prefixlen > MAX_SUBNET_PREFIX:
        raise BadRequest(
            f"Subnet cidr {net} is too small: the longest prefix is /{MAX_SUBNET_PREFIX}", code=BAD
        )
    if gateway not in net or gateway in (net.network_address, net.broadcast_address):
        raise BadRequest(f"gateway_ip {gateway} must be a host address inside {net}", code=BAD)
    for other in subnets_of(session, vpc.id):
        if net.overlaps(ipaddress.IPv4Network(other.cidr)):
            raise BadRequest(
                f"Subnet cidr {net} overlaps subnet {other.id} ({other.cidr}) of VPC {vpc.id}", code=BAD
            )
    primary, secondary = _dns_servers(primary_dns, secondary_dns, dns_list)
    subnet = Subnet(
        project_id=project_id,
        vpc_id=vpc.id,
        name=name,
        description=check_description(description),
        cidr=str(net),
        gateway_ip=str(gateway),
        dhcp_enable=dhcp_enable,
        primary_dns=primary,
        secondary_dns=secondary,
        availability_zone=availability_zone,
    )
    session.add(subnet)
    session.flush()
    log.info("created subnet %s (%s) in VPC %s", subnet.id, subnet.cidr, vpc.id)
    return subnet


def update_subnet(
    session: Session,
    project_id: str,
    vpc_id: str,
    subnet_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    dhcp_enable: bool | None = None,
    primary_dns: str | None = None,
    secondary_dns: str | None = None,
    dns_list: list[str] | None = None,
) -> Subnet:
    subnet = _subnet_in_vpc(session, project_id, vpc_id, subnet_id)
    if name is not None:
        subnet.name = check_name(name, "subnet")
    if description is not None:
        subnet.description = check_description(description)
    if dhcp_enable is not None:
        subnet.dhcp_enable = dhcp_enable
    if primary_dns is not None or secondary_dns is not None or dns_list is not None:
        subnet.primary_dns, subnet.secondary_dns = _dns_servers(primary_dns, secondary_dns, dns_list)
    subnet.updated_at = utcnow()
    session.add(subnet)
    session.flush()
    return subnet


def delete_subnet(session: Session, project_id: str, vpc_id: str, subnet_id: str) -> None:
    subnet = _subnet_in_vpc(session, project_id, vpc_id, subnet_id)
    if session.exec(select(Port.id).where(Port.subnet_id == subnet.id)).first() is not None:
        raise Conflict(f"Subnet {subnet_id} still has ports (servers); delete them first", code=SUBNET_IN_USE)
    session.delete(subnet)
    session.flush()
    log.info("deleted subnet %s", subnet_id)


def _subnet_in_vpc(session: Session, project_id: str, vpc_id: str, subnet_id: str) -> Subnet:
    get_vpc(session, project_id, vpc_id)
    subnet = get_subnet(session, project_id, subnet_id)
    if subnet.vpc_id != vpc_id:
        raise NotFound(f"Subnet {subnet_id} does not exist in VPC {vpc_id}", code=SUBNET_NOT_FOUND)
    return subnet


# --- security groups ---


def get_security_group(session: Session, project_id: str, group_id: str) -> SecurityGroup:
    group = session.get(SecurityGroup, group_id)
    if group is None or group.project_id != project_id:
        raise NotFound(f"Security group {group_id} does not exist", code=SG_NOT_FOUND)
    return group


def list_security_groups(
    session: Session,
    project_id: str,
    *,
    vpc_id: str | None = None,
    marker: str | None = None,
    limit: int | None = None,
) -> list[SecurityGroup]:
    stmt = select(SecurityGroup).where(SecurityGroup.project_id == project_id)
    if vpc_id:
        stmt = stmt.where(SecurityGroup.vpc_id == vpc_id)
    return page(session, stmt, SecurityGroup, project_id, marker=marker, limit=limit)


def create_security_group(
    session: Session, project_id: str, *, name: str, description: str | None = None, vpc_id: str | None = None
) -> SecurityGroup:
    """A new group with the usual starting rules: all egress, and ingress from members of the group itself."""
    check_name(name, "security group")
    if name == DEFAULT_SG_NAME:
        raise BadRequest("The name 'default' is reserved for the project's default security group", code=BAD)
    if vpc_id:
        get_vpc(session, project_id, vpc_id)
    group = SecurityGroup(
        project_id=project_id, name=name, description=check_description(description), vpc_id=vpc_id or None
    )
    session.add(group)
    session.add_all(_starting_rules(group))
    session.flush()
    log.info("created security group %s (%s) in project %s", group.id, name, project_id)
    return group


def ensure_default_security_group(session: Session, project_id: str) -> SecurityGroup:
    """The project's "default" group, created with its starting rules on the first call."""
    stmt = select(SecurityGroup).where(SecurityGroup.default_of == project_id)
    group = session.exec(stmt).first()
    if group is not None:
        return group
    group = SecurityGroup(
        project_id=project_id,
        name=DEFAULT_SG_NAME,
        description="Default security group",
        default_of=project_id,
    )
    try:
        with session.begin_nested():
            session.add(group)
            session.add_all(_starting_rules(group))
    except IntegrityError:
        # A concurrent first request created it: use theirs.
        existing = session.exec(stmt).first()
        if existing is None:
            raise
        return existing
    log.info("created default security group %s for project %s", group.id, project_id)
    return group


def _starting_rules(group: SecurityGroup) -> list[SecurityGroupRule]:
    return [
        SecurityGroupRule(project_id=group.project_id, security_group_id=group.id, direction="egress"),
        SecurityGroupRule(
            project_id=group.project_id,
            security_group_id=group.id,
            direction="ingress",
            remote_group_id=group.id,
        ),
    ]


def delete_security_group(session: Session, project_id: str, group_id: str) -> None:
    group = get_security_group(session, project_id, group_id)
    if group.default_of is not None:
        raise Conflict("The default security group cannot be deleted", code=SG_IN_USE)
    users = ports_in_groups(session, [group])
    if users[group.id]:
        raise Conflict(
            f"Security group {group_id} is in use by {len(users[group.id])} port(s)", code=SG_IN_USE
        )
    referring = session.exec(
        select(SecurityGroupRule.security_group_id).where(
            SecurityGroupRule.remote_group_id == group.id, SecurityGroupRule.security_group_id != group.id
        )
    ).first()
    if referring is not None:
        raise Conflict(
            f"Security group {group_id} is the remote group of a rule in group {referring}", code=SG_IN_USE
        )
    for rule in rules_of(session, [group.id])[group.id]:
        session.delete(rule)
    session.flush()
    session.delete(group)
    session.flush()
    log.info("deleted security group %s", group_id)


def rules_of(session: Session, group_ids: Iterable[str]) -> dict[str, list[SecurityGroupRule]]:
    ids = list(dict.fromkeys(group_ids))
    result: dict[str, list[SecurityGroupRule]] = {gid: [] for gid in ids}
    if ids:
        stmt = (
            select(SecurityGroupRule)
            .where(col(SecurityGroupRule.security_group_id).in_(ids))
            .order_by(col(SecurityGroupRule.created_at), col(SecurityGroupRule.id))
        )
        for rule in session.exec(stmt).all():
            result[rule.security_group_id].append(rule)
    return result


def ports_in_groups(session: Session, groups: list[SecurityGroup]) -> dict[str, list[Port]]:
    """Ports per group. Membership is a JSON list on the port, so it is matched here rather than in SQL."""
    result: dict[str, list[Port]] = {g.id: [] for g in groups}
    projects = {g.project_id for g in groups}
    if projects:
        for port in session.exec(select(Port).where(col(Port.project_id).in_(projects))).all():
            for gid in port.security_group_ids:
                if gid in result:
                    result[gid].append(port)
    return result


# --- security group rules ---


def get_rule(session: Session, project_id: str, rule_id: str) -> SecurityGroupRule:
    rule = session.get(SecurityGroupRule, rule_id)
    if rule is None or rule.project_id != project_id:
        raise NotFound(f"Security group rule {rule_id} does not exist", code=RULE_NOT_FOUND)
    return rule


def list_rules(
    session: Session,
    project_id: str,
    *,
    security_group_id: str | None = None,
    remote_ip_prefix: str | None = None,
    marker: str | None = None,
    limit: int | None = None,
) -> list[SecurityGroupRule]:
    stmt = select(SecurityGroupRule).where(SecurityGroupRule.project_id == project_id)
    if security_group_id:
        stmt = stmt.where(SecurityGroupRule.security_group_id == security_group_id)
    if remote_ip_prefix:
        stmt = stmt.where(SecurityGroupRule.remote_ip_prefix == remote_ip_prefix)
    return page(session, stmt, SecurityGroupRule, project_id, marker=marker, limit=limit)


def create_rule(
    session: Session,
    project_id: str,
    *,
    security_group_id: str,
    direction: str,
    ethertype: str | None = None,
    protocol: str | None = None,
    port_range_min: int | None = None,
    port_range_max: int | None = None,
    remote_ip_prefix: str | None = None,
    remote_group_id: str | None = None,
    description: str | None = None,
) -> SecurityGroupRule:
    if direction not in DIRECTIONS:
        raise BadRequest(f"Invalid direction {direction!r}: use ingress or egress", code=BAD)
    ethertype = ethertype or "IPv4"
    if ethertype not in ETHERTYPES:
        raise BadRequest(f"Invalid ethertype {ethertype!r}: use IPv4 or IPv6", code=BAD)
    protocol = protocol.lower() if protocol else None
    if protocol is not None and protocol not in PROTOCOLS:
        raise BadRequest(
            f"Invalid protocol {protocol!r}: use tcp, udp or icmp, or leave it out for any", code=BAD
        )
    port_range_min, port_range_max = _port_range(protocol, port_range_min, port_range_max)
    if remote_ip_prefix and remote_group_id:
        raise BadRequest("Give remote_ip_prefix or remote_group_id, not both", code=BAD)
    prefix = _remote_prefix(remote_ip_prefix, ethertype) if remote_ip_prefix else None
    group = get_security_group(session, project_id, security_group_id)
    if remote_group_id:
        get_security_group(session, project_id, remote_group_id)
    rule = SecurityGroupRule(
        project_id=project_id,
        security_group_id=group.id,
        direction=direction,
        ethertype=ethertype,
        protocol=protocol,
        port_range_min=port_range_min,
        port_range_max=port_range_max,
        remote_ip_prefix=prefix,
        remote_group_id=remote_group_id or None,
        description=check_description(description),
    )
    for existing in rules_of(session, [group.id])[group.id]:
        if _rule_key(existing) == _rule_key(rule):
            raise Conflict(f"Security group rule already exists: {existing.id}", code=RULE_EXISTS)
    session.add(rule)
    session.flush()
    log.info("created rule %s in security group %s", rule.id, group.id)
    return rule


def delete_rule(session: Session, project_id: str, rule_id: str) -> str:
    """Delete a rule; returns its security group id (to push the group to agents)."""
    rule = get_rule(session, project_id, rule_id)
    session.delete(rule)
    session.flush()
    log.info("deleted rule %s of security group %s", rule_id, rule.security_group_id)
    return rule.security_group_id


def _port_range(protocol: str | None, low: int | None, high: int | None) -> tuple[int | None, int | None]:
    if low is None and high is None:
        return None, None
    if protocol not in ("tcp", "udp"):
        raise BadRequest("port_range_min/port_range_max need protocol tcp or udp", code=BAD)
    if low is None:
        raise BadRequest("port_range_max needs port_range_min", code=BAD)
    high = low if high is None else high
    if not (1 <= low <= 65535 and 1 <= high <= 65535) or low > high:
        raise BadRequest(f"Invalid port range {low}-{high}: ports are 1-65535 and min <= max", code=BAD)
    return low, high


def _remote_prefix(value: str, ethertype: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise BadRequest(f"Invalid remote_ip_prefix {value!r}", code=BAD) from None
    if (net.version == 4) != (ethertype == "IPv4"):
        raise BadRequest(f"remote_ip_prefix {value} does not match ethertype {ethertype}", code=BAD)
    return str(net)


def _rule_key(rule: SecurityGroupRule) -> tuple[Any, ...]:
    return (
        rule.direction,
        rule.ethertype,
        rule.protocol,
        rule.port_range_min,
        rule.port_range_max,
        rule.remote_ip_prefix,
        rule.remote_group_id,
    )


# --- specs for agents ---


def network_spec(session: Session, vpc_id: str, host_id: str | None = None) -> NetworkSpec:
    """The VPC as `host_id` sees it, with its overlay view (the other hosts of the VPC and their ports)."""
    vpc = session.get(Vpc, vpc_id)
    if vpc is None:
        raise NotFound(f"VPC {vpc_id} does not exist", code=VPC_NOT_FOUND)
    subnets = [
        SubnetSpec(
            id=s.id, cidr=s.cidr, gateway_ip=s.gateway_ip, dhcp_enable=s.dhcp_enable, dns=s.dns, mtu=MTU
        )
        for s in subnets_of(session, vpc.id)
    ]
    return NetworkSpec(
        vpc_id=vpc.id,
        vni=vpc.vni,
        cidr=vpc.cidr,
        subnets=subnets,
        overlay=overlay.overlay_spec(session, vpc.id, host_id),
    )


def security_group_specs(session: Session, group_ids: Iterable[str]) -> list[SecurityGroupSpec]:
    """The groups asked for, then every group their rules name as remote_group_id (so the agent can resolve
    remote-group members); each with its rules and `member_ips`, the fixed IPs of every port in it."""
    wanted = list(dict.fromkeys(group_ids))
    groups = {
        g.id: g for g in session.exec(select(SecurityGroup).where(col(SecurityGroup.id).in_(wanted))).all()
    }
    missing = [gid for gid in wanted if gid not in groups]
    if missing:
        raise NotFound(f"Security groups {', '.join(missing)} do not exist", code=SG_NOT_FOUND)
    rules = rules_of(session, wanted)
    remote = [r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id]
    extra = [gid for gid in dict.fromkeys(remote) if gid not in groups]
    if extra:
        for g in session.exec(select(SecurityGroup).where(col(SecurityGroup.id).in_(extra))).all():
            groups[g.id] = g
        rules.update(rules_of(session, [gid for gid in extra if gid in groups]))
    ordered = [groups[gid] for gid in [*wanted, *extra] if gid in groups]
    members = ports_in_groups(session, ordered)
    return [
        SecurityGroupSpec(
            id=g.id,
            # Validated against the wire schema's literals (direction, ethertype) rather than cast.
            rules=[RuleSpec.model_validate(r, from_attributes=True) for r in rules[g.id]],
            member_ips=sorted({p.ip_address for p in members[g.id]}, key=ipaddress.IPv4Address),
        )
        for g in ordered
    ]


def notify_security_groups(ctx: ControllerContext, group_ids: Iterable[str]) -> None:
    """Push changed groups to the agents hosting their servers, through the servers service when it exists.

    Best effort: the change is already committed, and the reconciler repairs an agent that missed it.
    """
    ids = list(dict.fromkeys(group_ids))
    if not ids:
        return
    try:
        from controller.services.servers import push_security_groups  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        log.debug("no servers service yet; security groups %s not pushed", ids)
        return
    try:
        push_security_groups(ctx, ids)
    except Exception:
        log.exception("pushing security groups %s to agents failed; the reconciler will retry", ids)
