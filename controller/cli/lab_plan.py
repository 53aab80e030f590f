"""The shape of a multi-host lab (pure): its namespaces, underlay addresses, homes and availability zones.

    [external ns] ext0 10.254.0.1 ─┐
    [controller ns] ul0 10.254.0.2 ─┼── bridge `fabric` (MTU 1550) in the fabric ns ── the underlay
    [host ns h1] ul0 10.254.0.11 ───┤      every member joins it by a veth: ul0 (member) <-> p-<member> (fabric)
    [host ns h2] ul0 10.254.0.12 ───┘

Every lab has a short random id; its namespaces are `lcl-<id>-<member>`, so several labs (and the tests' clouds)
live side by side, and all of them are easy to spot in `ip netns list`. The underlay MTU is 1550 so a VXLAN port
keeps 1500 bytes (guests get 1450 by DHCP either way).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

NS_PREFIX = "lcl-"
UNDERLAY = ipaddress.IPv4Network("10.254.0.0/24")
UNDERLAY_MTU = 1550
EXTERNAL_ADDR = "10.254.0.1"
CONTROLLER_ADDR = "10.254.0.2"
FIRST_HOST_OCTET = 11
# The fabric is also the external network (the external namespace at .1 stands for the LAN / internet and is its
# gateway): each host's external namespace gets .50+n on a macvlan of its ul0, EIPs come from .100-.199.
EXTERNAL_HOST_OCTET = 50
EXTERNAL_POOL = "10.254.0.100-10.254.0.199"
MAX_HOSTS = 16
CONTROLLER_PORT = 8778
AGENT_PORT = 8779
FABRIC_BRIDGE = "fabric"
MEMBER_DEV = "ul0"  # the underlay device in every member namespace
ZONE_PREFIX = "lab-1"  # zones lab-1a, lab-1b, …
_ID = re.compile(r"^[0-9a-f]{4,8}$")

CONTROLLER, HOST, EXTERNAL = "controller", "host", "external"


@dataclass(frozen=True)
class Member:
    """One namespace on the fabric."""

    name: str  # ctl, ext, h1, h2, …
    role: str
    ns: str
    address: str
    home: Path | None  # LABCLOUD_HOME of what runs there (None for the external namespace)
    zone: str | None = None
    external_ip: str | None = None  # a host's address on the external network (shared SNAT leaves with it)

    @property
    def fabric_port(self) -> str:
        return f"p-{self.name}"


@dataclass(frozen=True)
class LabPlan:
    lab_id: str
    root: Path
    fabric_ns: str
    controller: Member
    external: Member
    hosts: tuple[Member, ...]

    @property
    def members(self) -> tuple[Member, ...]:
        return (self.external, self.controller, *self.hosts)

    @property
    def namespaces(self) -> list[str]:
        return [self.fabric_ns, *(m.ns for m in self.members)]

    @property
    def controller_url(self) -> str:
        return f"http://{self.controller.address}:{CONTROLLER_PORT}"

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)


def zone_name(index: int) -> str:
    return ZONE_PREFIX + chr(ord("a") + index)


def plan(lab_id: str, root: Path, hosts: int, azs: int = 1) -> LabPlan:
    """The lab with `hosts` hypervisor hosts spread round-robin over `azs` zones (ValueError if impossible)."""
    if not _ID.match(lab_id):
        raise ValueError(f"lab id {lab_id!r} must be 4-8 lowercase hex digits")
    if not 1 <= hosts <= MAX_HOSTS:
        raise ValueError(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}")
    if not 1 <= azs <= hosts:
        raise ValueError(f"{azs} availability zones need at least as many hosts (have {hosts})")

    def ns(name: str) -> str:
        return f"{NS_PREFIX}{lab_id}-{name}"

    host_members = tuple(
        Member(
            name=f"h{n}",
            role=HOST,
            ns=ns(f"h{n}"),
            address=str(UNDERLAY.network_address + FIRST_HOST_OCTET + n - 1),
            home=root / f"h{n}",
            zone=zone_name((n - 1) % azs),
            external_ip=str(UNDERLAY.network_address + EXTERNAL_HOST_OCTET + n),
        )
        for n in range(1, hosts + 1)
    )
    return LabPlan(
        lab_id=lab_id,
        root=root,
        fabric_ns=ns("fab"),
        controller=Member("ctl", CONTROLLER, ns("ctl"), CONTROLLER_ADDR, root / "controller"),
        external=Member("ext", EXTERNAL, ns("ext"), EXTERNAL_ADDR, None),
        hosts=host_members,
    )
