"""The default network a server gets when none is given: find or create it, so `server create` just works.

VPC "labcloud-default" 10.77.0.0/16, subnet 10.77.0.0/24 (gateway 10.77.0.1) and security group "labcloud-ssh"
that lets SSH and ping in from anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.cli.client import ApiClient
from controller.cli.errors import CliError

log = logging.getLogger(__name__)

DEFAULT_VPC_NAME = "labcloud-default"
DEFAULT_VPC_CIDR = "10.77.0.0/16"
DEFAULT_SUBNET_NAME = "labcloud-default"
DEFAULT_SUBNET_CIDR = "10.77.0.0/24"
DEFAULT_GATEWAY = "10.77.0.1"
DEFAULT_SG_NAME = "labcloud-ssh"
READY_TIMEOUT_S = 120.0

# (protocol, port_range_min, port_range_max) allowed in from 0.0.0.0/0
DEFAULT_INGRESS = (("tcp", 22, 22), ("icmp", None, None))


@dataclass(frozen=True)
class Placement:
    vpc_id: str
    subnet_id: str
    security_group_id: str | None


def default_network(client: ApiClient) -> Placement:
    vpc = ensure_vpc(client)
    subnet = ensure_subnet(client, vpc["id"])
    group = ensure_ssh_group(client)
    return Placement(vpc["id"], subnet["id"], group["id"])


def ensure_vpc(client: ApiClient) -> dict[str, Any]:
    p = client.project_id
    vpcs = client.get(f"/v1/{p}/vpcs").get("vpcs") or []
    vpc = next((v for v in vpcs if v.get("name") == DEFAULT_VPC_NAME), None)
    if vpc is None:
        vpc = client.post(
            f"/v1/{p}/vpcs",
            {
                "vpc": {
                    "name": DEFAULT_VPC_NAME,
                    "cidr": DEFAULT_VPC_CIDR,
                    "description": "created by the labcloud CLI",
                }
            },
        )["vpc"]
        log.info("created VPC %s", vpc["id"])
    return _wait_ready(lambda: client.get(f"/v1/{p}/vpcs/{vpc['id']}")["vpc"], ("OK",), "VPC")


def ensure_subnet(client: ApiClient, vpc_id: str) -> dict[str, Any]:
    p = client.project_id
    subnets = client.get(f"/v1/{p}/subnets", [("vpc_id", vpc_id)]).get("subnets") or []
    ours = [s for s in subnets if s.get("vpc_id", vpc_id) == vpc_id]
    subnet = next((s for s in ours if s.get("cidr") == DEFAULT_SUBNET_CIDR), None)
    if subnet is None:
        subnet = client.post(
            f"/v1/{p}/subnets",
            {
                "subnet": {
                    "name": DEFAULT_SUBNET_NAME,
                    "cidr": DEFAULT_SUBNET_CIDR,
                    "gateway_ip": DEFAULT_GATEWAY,
                    "vpc_id": vpc_id,
                    "dhcp_enable": True,
                }
            },
        )["subnet"]
        log.info("created subnet %s", subnet["id"])
    return _wait_ready(lambda: client.get(f"/v1/{p}/subnets/{subnet['id']}")["subnet"], ("ACTIVE",), "subnet")


def ensure_ssh_group(client: ApiClient) -> dict[str, Any]:
    p = client.project_id
    groups = client.get(f"/v1/{p}/security-groups").get("security_groups") or []
    group = next((g for g in groups if g.get("name") == DEFAULT_SG_NAME), None)
    if group is None:
        group = client.post(
            f"/v1/{p}/security-groups",
            {
                "security_group": {
                    "name": DEFAULT_SG_NAME,
                    "description": "SSH and ping from anywhere (labcloud CLI)",
                }
            },
        )["security_group"]
        log.info("created security group %s", group["id"])
    rules = group.get("security_group_rules") or []
    for protocol, low, high in DEFAULT_INGRESS:
        if not any(_is_rule(r, protocol, low, high) for r in rules):
            rule: dict[str, Any] = {
                "security_group_id": group["id"],
                "direction": "ingress",
                "ethertype": "IPv4",
                "protocol": protocol,
                "remote_ip_prefix": "0.0.0.0/0",
            }
            if low is not None:
                rule.update(port_range_min=low, port_range_max=high)
            client.post(f"/v1/{p}/security-group-rules", {"security_group_rule": rule})
    return group


def _is_rule(rule: dict[str, Any], protocol: str, low: int | None, high: int | None) -> bool:
    return (
        rule.get("direction") == "ingress"
        and rule.get("protocol") == protocol
        and rule.get("port_range_min") == low
        and rule.get("port_range_max") == high
        and rule.get("remote_ip_prefix") in ("0.0.0.0/0", None)
        and not rule.get("remote_group_id")
    )


def _wait_ready(fetch: Callable[[], dict[str, Any]], ready: tuple[str, ...], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        item = fetch()
        status = item.get("status")
        if status is None or status in ready:
            return item
        if status == "ERROR":
            raise CliError(what.lower(), f"{what} {item.get('id')} is in ERROR")
        if time.monotonic() >= deadline:
            raise CliError(
                "timeout", f"{what} {item.get('id')} is still {status} after {READY_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.5)
