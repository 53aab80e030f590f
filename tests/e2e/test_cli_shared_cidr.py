"""`labcloud ssh` to servers of two VPCs with the same CIDR on one host: each lands on the server it names.

The CLI's default VPC is 10.77.0.0/16; a second VPC with the very same CIDR and subnet gets a server too, and both
servers get the lowest free address, 10.77.0.10. The host routes 10.77.0.0/16 into the first VPC only, so
`labcloud ssh` must reach the second server from its VPC's router namespace; `hostname` inside says where it
landed (both servers share the key pair, so a wrong landing would log in without complaint).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e import journey
from tests.support.cloud import Cloud

pytestmark = pytest.mark.e2e

SSH_WAIT_S = 300.0


def _ssh_hostname(cloud: Cloud, name: str) -> str:
    """`labcloud ssh NAME -- hostname`, retried while the guest boots."""
    deadline = time.monotonic() + SSH_WAIT_S
    while True:
        done = cloud.cli("ssh", name, "--", "hostname")
        if done.returncode == 0:
            return str(done.stdout).strip()
        assert time.monotonic() < deadline, f"labcloud ssh {name} kept failing: {done.stderr}"
        time.sleep(2)


def test_ssh_reaches_the_named_server_when_two_vpcs_share_a_cidr(cloud: Cloud) -> None:
    cloud.run("keypair", "create", "shared")
    cloud.run("server", "create", "--name", "first", "--key", "shared", "--wait", timeout=600)
    vpc_id, subnet_id, sg_id = journey.create_network(
        cloud.vpc(), name="twin", cidr="10.77.0.0/16", subnet_cidr="10.77.0.0/24", gateway="10.77.0.1"
    )
    cloud.run(
        "server", "create", "--name", "second", "--key", "shared", "--vpc", vpc_id, "--subnet", subnet_id,
        "--security-group", sg_id, "--wait", timeout=600,
    )  # fmt: skip
    listed = {line.split()[1]: line.split()[3] for line in cloud.run("server", "list").splitlines()[1:]}
    assert listed == {"first": "10.77.0.10", "second": "10.77.0.10"}

    assert _ssh_hostname(cloud, "first") == "first"
    assert _ssh_hostname(cloud, "second") == "second"

    for name in ("first", "second"):
        cloud.run("server", "delete", name, "--wait", timeout=600)
