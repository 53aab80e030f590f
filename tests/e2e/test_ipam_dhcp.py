"""IPAM and DHCP of a whole cloud, without guests: `labcloud up` in a test namespace with the agent on libvirt's
test driver. Everything else is real: the official SDK, the controller's API, jobs and IPAM, and the agent's host
networking (bridge, router namespace, dnsmasq, rules) inside the cloud's namespace; the database and dnsmasq's
hosts file are the oracles. What a real guest sees over DHCP is proved in `test_dhcp_guest.py`.

1. **100 create/delete cycles**, each two creates sent at once, then a burst of concurrent multi-server creates:
   no address is ever handed out twice, the hosts file always holds exactly the live ports, and nothing is left.
2. **Chosen addresses**: a fixed `ip_address` is honoured; a taken one, one outside the subnet, and the subnet's
   network, broadcast and gateway addresses are refused with 400 `Ecs.0005` and nothing is created.
3. **Subnet updates reach the host's dnsmasq at once** (DNS servers, DHCP off and on again), are kept in the
   agent's stored specs, and survive an agent restart (kill -9, `labcloud up`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    CreateServersRequest,
    CreateServersRequestBody,
    ListServersDetailsRequest,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
    PrePaidServerSecurityGroup,
)
from huaweicloudsdkvpc.v2 import UpdateSubnetOption, UpdateSubnetRequest, UpdateSubnetRequestBody

from tests.e2e import journey
from tests.support.cloud import Cloud, CloudFactory, closing

pytestmark = pytest.mark.netns
log = logging.getLogger(__name__)

CYCLES = 100
WAIT_S = 300.0


@pytest.fixture(scope="module")
def tcloud(guest_image: Path) -> Iterator[Cloud]:
    env = {"LABCLOUD_SEED_IMAGE": str(guest_image), "LABCLOUD_LIBVIRT_URI": "test:///default"}
    for make in closing(CloudFactory(default_env=env)):
        yield make()


class Net:
    """One VPC and subnet of the test cloud, with its SDK clients and oracles."""

    def __init__(self, cloud: Cloud, name: str, third_octet: int) -> None:
        self.cloud, self.ecs, self.vpc = cloud, cloud.ecs(), cloud.vpc()
        self.cidr = f"10.{third_octet}.1.0/24"
        self.vpc_id, self.subnet_id, self.sg_id = journey.create_network(
            self.vpc,
            name=name,
            cidr=f"10.{third_octet}.0.0/16",
            subnet_cidr=self.cidr,
            gateway=f"10.{third_octet}.1.1",
        )
        self.image = journey.small_image_id(cloud.ims())
        self.flavor = journey.smallest_flavor_id(self.ecs)
        self.name = name

    def body(self, *, ip: str | None = None, count: int = 1) -> PrePaidServer:
        return PrePaidServer(
            image_ref=self.image,
            flavor_ref=self.flavor,
            name=self.name,
            vpcid=self.vpc_id,
            nics=[PrePaidServerNic(subnet_id=self.subnet_id, ip_address=ip)],
            root_volume=PrePaidServerRootVolume(volumetype="SATA"),
            security_groups=[PrePaidServerSecurityGroup(id=self.sg_id)],
            count=count,
            is_auto_rename=count > 1,
        )

    def create(self, *, ip: str | None = None, count: int = 1) -> list[str]:
        """Create and wait for the job; the new server ids (all ACTIVE)."""
        resp = self.ecs.create_servers(
            CreateServersRequest(body=CreateServersRequestBody(server=self.body(ip=ip, count=count)))
        )
        job = journey.wait_job(self.ecs, resp.job_id, timeout=WAIT_S)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
        return list(resp.server_ids)

    def delete(self, server_ids: list[str]) -> None:
        job = journey.wait_job(self.ecs, journey.delete(self.ecs, server_ids), timeout=WAIT_S)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)

    # oracles

    def db_ports(self) -> list[tuple[str, str, str]]:
        """(server id, IP, MAC) of every port of the subnet in the controller's database."""
        with sqlite3.connect(self.cloud.home / "controller" / "labcloud.db") as db:
            rows = db.execute(
                "SELECT server_id, ip_address, mac_address FROM port WHERE subnet_id = ?", (self.subnet_id,)
            ).fetchall()
        return [(str(s), str(ip), str(mac)) for s, ip, mac in rows]

    def dhcp_dir(self) -> Path:
        return self.cloud.home / "agent" / "net" / self.vpc_id

    def dhcp_hosts(self) -> list[tuple[str, str]]:
        """(MAC, IP) of every line of the VPC's dnsmasq hosts file on the host (a list: duplicates show)."""
        path = self.dhcp_dir() / "dhcp-hosts"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(f[0], f[1]) for f in (line.split(",") for line in lines)]

    def dnsmasq_conf(self) -> str:
        return (self.dhcp_dir() / "dnsmasq.conf").read_text()

    def dnsmasq_pid(self) -> int | None:
        try:
            pid = int((self.dhcp_dir() / "dnsmasq.pid").read_text())
            return pid if b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
        except (OSError, ValueError):
            return None

    def stored_subnet(self, server_id: str) -> dict[str, Any]:
        spec = json.loads((self.cloud.home / "agent" / "specs" / f"{server_id}.json").read_text())
        (network,) = [n for n in spec["networks"] if n["vpc_id"] == self.vpc_id]
        (subnet,) = network["subnets"]
        return dict(subnet)

    def server_count(self) -> int:
        return len(self.ecs.list_servers_details(ListServersDetailsRequest(limit=1000)).servers)

    def job_count(self) -> int:
        with sqlite3.connect(self.cloud.home / "controller" / "labcloud.db") as db:
            return int(db.execute("SELECT count(*) FROM job").fetchone()[0])

    def assert_consistent(self, live: int) -> None:
        """`live` ports in the database, all distinct, and exactly them in dnsmasq's hosts file."""
        ports = self.db_ports()
        assert len(ports) == live, ports
        ips, macs = [ip for _, ip, _ in ports], [mac for _, _, mac in ports]
        assert len(set(ips)) == live and len(set(macs)) == live, f"duplicate address: {ports}"
        hosts = self.dhcp_hosts()
        assert sorted(hosts) == sorted((mac, ip) for _, ip, mac in ports), (hosts, ports)


def _in_threads(calls: list[Callable[[], list[str]]]) -> list[str]:
    """Run the calls at the same moment (a barrier), each in its own thread; all their server ids."""
    barrier = threading.Barrier(len(calls))
    results: list[list[str]] = [[] for _ in calls]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [sid for ids in results for sid in ids]


def test_create_delete_cycles_never_duplicate_or_leak_an_address(tcloud: Cloud) -> None:
    net = Net(tcloud, "cycles", 44)
    seen: set[str] = set()
    started = time.monotonic()
    for _ in range(CYCLES):
        ids = _in_threads([net.create, net.create])
        assert len(ids) == 2
        net.assert_consistent(live=2)
        seen.update(ip for _, ip, _ in net.db_ports())
        net.delete(ids)
        net.assert_consistent(live=0)
    took = time.monotonic() - started
    # Freed addresses are reused (lowest free first), so 200 creates cycled through very few addresses.
    assert seen <= {f"10.44.1.{n}" for n in range(10, 14)}, seen
    # A burst: six calls at once, three servers each.
    ids = _in_threads([lambda: net.create(count=3) for _ in range(6)])
    assert len(ids) == 18
    net.assert_consistent(live=18)
    net.delete(ids)
    net.assert_consistent(live=0)
    log.info("%d cycles of 2 concurrent creates + a delete: %.1f s", CYCLES, took)


def test_a_chosen_address_is_honoured_and_bad_ones_are_refused(tcloud: Cloud) -> None:
    net = Net(tcloud, "fixed", 45)
    (server_id,) = net.create(ip="10.45.1.200")
    server = journey.show(net.ecs, server_id)
    assert journey.fixed_ip(server) == "10.45.1.200"
    ((_, ip, mac),) = net.db_ports()
    assert ip == "10.45.1.200" and net.dhcp_hosts() == [(mac, "10.45.1.200")]

    before = (net.server_count(), net.db_ports(), net.dhcp_hosts(), net.job_count())
    cases = [
        ("10.45.1.200", "already in use"),  # taken by the server above
        ("10.45.2.7", "not inside subnet"),
        ("10.45.1.0", "network or broadcast"),
        ("10.45.1.255", "network or broadcast"),
        ("10.45.1.1", "gateway"),
    ]
    for bad, text in cases:
        with pytest.raises(ClientRequestException) as refused:
            net.create(ip=bad)
        err = refused.value
        assert (err.status_code, err.error_code) == (400, "Ecs.0005"), (bad, err)
        assert text in err.error_msg and bad in err.error_msg, (bad, err.error_msg)
    assert (net.server_count(), net.db_ports(), net.dhcp_hosts(), net.job_count()) == before
    net.delete([server_id])
    net.assert_consistent(live=0)


def test_subnet_updates_reach_dnsmasq_at_once_and_survive_an_agent_restart(tcloud: Cloud) -> None:
    net = Net(tcloud, "dns", 46)
    (server_id,) = net.create()
    ((_, ip, mac),) = net.db_ports()
    assert "dns-server" not in net.dnsmasq_conf() and net.dnsmasq_pid() is not None

    def update(**fields: Any) -> None:
        option = UpdateSubnetOption(name="dns-subnet", **fields)
        net.vpc.update_subnet(
            UpdateSubnetRequest(
                vpc_id=net.vpc_id, subnet_id=net.subnet_id, body=UpdateSubnetRequestBody(subnet=option)
            )
        )

    # DNS servers: in the config of a restarted dnsmasq when the call returns, and in the stored spec.
    pid = net.dnsmasq_pid()
    update(dns_list=["10.46.0.53", "10.46.0.54"])
    assert "option:dns-server,10.46.0.53,10.46.0.54" in net.dnsmasq_conf()
    assert net.dnsmasq_pid() not in (None, pid)
    assert net.stored_subnet(server_id)["dns"] == ["10.46.0.53", "10.46.0.54"]

    # DHCP off: no hosts, no dnsmasq at all (the VPC's only subnet); on again: all back.
    update(dhcp_enable=False)
    assert net.dnsmasq_pid() is None and net.dhcp_hosts() == []
    assert net.stored_subnet(server_id)["dhcp_enable"] is False
    update(dhcp_enable=True)
    assert "dhcp-range" in net.dnsmasq_conf() and net.dhcp_hosts() == [(mac, ip)]
    assert net.dnsmasq_pid() is not None

    # A restart rebuilds from the stored specs: the pushed subnet, not the one the server was created with.
    update(dns_list=["10.46.0.55"])
    home = tcloud.home
    agent = int((home / "run" / "agent.pid").read_text().split()[0])
    os.kill(agent, signal.SIGKILL)
    tcloud.run("up")
    assert "option:dns-server,10.46.0.55\n" in net.dnsmasq_conf()
    assert net.dhcp_hosts() == [(mac, ip)] and net.dnsmasq_pid() is not None
    assert net.stored_subnet(server_id)["dns"] == ["10.46.0.55"]
    net.delete([server_id])
    net.assert_consistent(live=0)
