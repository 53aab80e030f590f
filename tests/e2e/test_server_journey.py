"""The spine, for real: the official SDK creates a server in a namespace-contained cloud, we SSH in, power-cycle it
every way, delete it, and check independently (virsh, ip, iptables-save, the files) that nothing is left."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException

from tests.e2e import journey
from tests.support import ssh

pytestmark = pytest.mark.e2e


def _virsh_domains(cloud: Any) -> list[str]:
    uri = f"qemu:///system?socket={cloud.home}/libvirt/run/libvirt-sock"
    out = subprocess.run(
        ["virsh", "-c", uri, "list", "--all", "--name"], check=True, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def _in_ns(cloud: Any, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", cloud.ns, *argv], check=True, capture_output=True, text=True
    ).stdout


def _ssh_ok(cloud: Any, ip: str, key: Path) -> str:
    return ssh.wait_and_run(cloud.ns, ip, key, "hostname", timeout=240).strip()


def test_create_ssh_power_cycle_and_delete_with_the_sdk(cloud: Any, keypair: tuple[str, Path]) -> None:
    public_key, key_path = keypair
    ecs, vpc, ims = cloud.ecs(), cloud.vpc(), cloud.ims()
    with cloud.entered():
        journey.import_keypair(ecs, "e2e-key", public_key)
        vpc_id, subnet_id, sg_id = journey.create_network(
            vpc, name="e2e", cidr="10.31.0.0/16", subnet_cidr="10.31.1.0/24", gateway="10.31.1.1"
        )
        job_id, (server_id,) = journey.create_servers(
            ecs,
            name="web-1",
            image_id=journey.small_image_id(ims),
            flavor_id=journey.smallest_flavor_id(ecs),
            vpc_id=vpc_id,
            subnet_id=subnet_id,
            sg_id=sg_id,
            key_name="e2e-key",
        )
        job = journey.wait_job(ecs, job_id)
        assert job.status == "SUCCESS", job
        assert job.entities.sub_jobs[0].entities.server_id == server_id
        server = journey.show(ecs, server_id)
        assert server.status == "ACTIVE" and server.os_ext_st_spower_state == 1
        ip = journey.fixed_ip(server)
        assert ip.startswith("10.31.1.")

    assert _ssh_ok(cloud, ip, key_path) == "web-1"
    assert f"tinycloud: ready ip={ip}" in cloud.run("server", "console", "web-1")

    with cloud.entered():
        for kind in ("SOFT", "HARD"):
            assert journey.wait_job(ecs, journey.stop(ecs, [server_id], kind)).status == "SUCCESS"
            assert journey.show(ecs, server_id).status == "SHUTOFF"
            with pytest.raises(ClientRequestException) as refused:
                journey.stop(ecs, [server_id])
            assert refused.value.status_code == 409
            assert journey.wait_job(ecs, journey.start(ecs, [server_id])).status == "SUCCESS"
            assert journey.show(ecs, server_id).status == "ACTIVE"
            assert _ssh_ok(cloud, ip, key_path) == "web-1"
        with pytest.raises(ClientRequestException) as refused:
            journey.start(ecs, [server_id])
        assert refused.value.status_code == 409
        for kind in ("SOFT", "HARD"):
            assert journey.wait_job(ecs, journey.reboot(ecs, [server_id], kind)).status == "SUCCESS"
            assert journey.show(ecs, server_id).status == "ACTIVE"
            assert _ssh_ok(cloud, ip, key_path) == "web-1"

        address = server.addresses[vpc_id][0]
        mac, port_id = address.os_ext_ips_ma_cmac_addr, address.os_ext_ip_sport_id
        assert journey.wait_job(ecs, journey.delete(ecs, [server_id])).status == "SUCCESS"
        with pytest.raises(ClientRequestException) as gone:
            journey.show(ecs, server_id)
        assert gone.value.status_code == 404

    # Independent oracles: libvirt, the kernel, iptables, the state directory.
    assert _virsh_domains(cloud) == []
    links = json.loads(_in_ns(cloud, "ip", "-j", "link"))
    assert not [link["ifname"] for link in links if link["ifname"].startswith("lct")]
    rules = _in_ns(cloud, "iptables-save")
    assert port_id.replace("-", "")[:11] not in rules
    assert not (Path(cloud.home) / "agent" / "instances" / server_id).exists()
    # No DHCP host entry or lease, spec or firewall record names the port any more (logs keep history).
    leftovers = subprocess.run(
        ["grep", "-rli", "--exclude=*.log", mac, str(Path(cloud.home) / "agent")],
        capture_output=True,
        text=True,
    ).stdout
    assert leftovers == "", f"the deleted port's MAC is still in {leftovers}"
