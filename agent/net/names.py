"""Kernel object names derived from controller ids.

Pure functions. Linux device names are at most 15 characters and ipset names at most 31, so every name is a
short prefix plus `<id11>`: the id without dashes, lower-cased, first 11 characters. Every labcloud object
starts with `lc`, which is how teardown finds them.
"""

from __future__ import annotations

import re

ID_CHARS = 11
_ID_RE = re.compile(r"^[0-9a-z]+$")

# Devices in the host namespace.
BRIDGE_PREFIX = "lcb"  # one Linux bridge per VPC
TAP_PREFIX = "lct"  # a guest NIC (created by libvirt, enslaved to the bridge)
ROUTER_PORT_PREFIX = "lcr"  # bridge side of the veth whose other end is the router's gw0
HOST_UPLINK_PREFIX = "lch"  # host side of the veth whose other end is the router's up0
VXLAN_PREFIX = "lcx"  # the VPC's VXLAN device (VTEP), a port of its bridge

# nftables tables (bridge family) filtering what may cross a VPC's VXLAN port (the distributed gateway).
OVERLAY_TABLE_PREFIX = "lc-overlay-"
# nftables table (bridge family) with the layer-2 anti-spoofing of every guest port (`antispoof`).
ANTISPOOF_TABLE = "lc-antispoof"

# Devices inside a router namespace (fixed: one router per namespace).
ROUTER_GATEWAY_DEV = "gw0"  # carries every subnet's gateway address; dnsmasq listens here
ROUTER_UPLINK_DEV = "up0"  # link-local hop back to the host namespace

# iptables chains (filter table). Chain names may be 28 characters long.
FORWARD_CHAIN = "lc-FORWARD"  # the one jump from FORWARD lands here
EGRESS_DISPATCH_CHAIN = "lc-EGRESS"  # picks the lco- chain of the port a frame comes from
INGRESS_DISPATCH_CHAIN = "lc-INGRESS"  # picks the lci- chain of the port a frame goes to
EGRESS_ALLOWED_CHAIN = "lc-EGRESS-OK"  # where a sender's group lets a frame out: on to the receiver's check
INGRESS_CHAIN_PREFIX = "lci-"  # traffic to the guest
EGRESS_CHAIN_PREFIX = "lco-"  # traffic from the guest
GROUP_INGRESS_CHAIN_PREFIX = (
    "lcgi-"  # one security group's ingress rules, jumped to from its ports' lci- chains
)
GROUP_EGRESS_CHAIN_PREFIX = (
    "lcge-"  # one security group's egress rules, jumped to from its ports' lco- chains
)
CHAIN_PREFIXES = (
    "lc-",
    INGRESS_CHAIN_PREFIX,
    EGRESS_CHAIN_PREFIX,
    GROUP_INGRESS_CHAIN_PREFIX,
    GROUP_EGRESS_CHAIN_PREFIX,
)

# ipsets: members of a security group (for remote_group_id), plus a staging set to swap in atomically.
GROUP_SET_PREFIX = "lcg-"
STAGING_SET_PREFIX = "lcn-"
SET_PREFIXES = (GROUP_SET_PREFIX, STAGING_SET_PREFIX)


def id11(resource_id: str) -> str:
    """The id without dashes, lower-cased, first 11 characters; ValueError if that is not alphanumeric."""
    short = resource_id.replace("-", "").lower()[:ID_CHARS]
    if not _ID_RE.match(short):
        raise ValueError(f"id {resource_id!r} cannot name a kernel object (need letters, digits, dashes)")
    return short


def bridge_name(vpc_id: str) -> str:
    return BRIDGE_PREFIX + id11(vpc_id)


def tap_name(port_id: str) -> str:
    return TAP_PREFIX + id11(port_id)


def vxlan_name(vpc_id: str) -> str:
    return VXLAN_PREFIX + id11(vpc_id)


def overlay_table(vpc_id: str) -> str:
    return OVERLAY_TABLE_PREFIX + id11(vpc_id)


def router_port_name(vpc_id: str) -> str:
    return ROUTER_PORT_PREFIX + id11(vpc_id)


def host_uplink_name(vpc_id: str) -> str:
    return HOST_UPLINK_PREFIX + id11(vpc_id)


def ingress_chain(port_id: str) -> str:
    return INGRESS_CHAIN_PREFIX + id11(port_id)


def egress_chain(port_id: str) -> str:
    return EGRESS_CHAIN_PREFIX + id11(port_id)


def group_ingress_chain(group_id: str) -> str:
    return GROUP_INGRESS_CHAIN_PREFIX + id11(group_id)


def group_egress_chain(group_id: str) -> str:
    return GROUP_EGRESS_CHAIN_PREFIX + id11(group_id)


def group_set(group_id: str) -> str:
    return GROUP_SET_PREFIX + id11(group_id)


def staging_set(group_set_name: str) -> str:
    """The scratch set that a group set's new members are loaded into before the two are swapped."""
    return STAGING_SET_PREFIX + group_set_name.removeprefix(GROUP_SET_PREFIX)


def dhcp_tag(subnet_id: str) -> str:
    """dnsmasq tag that ties a subnet's dhcp-range to its options: the whole id, as tags have no length limit
    and two subnets of one VPC sharing a tag would get each other's router and MTU."""
    tag = subnet_id.replace("-", "").lower()
    if not _ID_RE.match(tag):
        raise ValueError(f"subnet id {subnet_id!r} cannot be a dnsmasq tag (need letters, digits, dashes)")
    return "s" + tag


def is_owned_chain(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIXES)


def is_owned_set(name: str) -> bool:
    return name.startswith(SET_PREFIXES)
