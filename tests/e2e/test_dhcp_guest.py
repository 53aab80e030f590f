"""What a real guest gets over DHCP, and its network through agent restarts, on one TCG guest in a `labcloud up`.

1. **DHCP in the guest**: the fixed IP it was created with (a chosen `ip_address`), the prefix, the gateway as its
   default route, the subnet's DNS servers in /etc/resolv.conf, MTU 1450 on eth0; dnsmasq's hosts and leases
   files hold it.
2. **A subnet update reaches the guest**: new DNS servers through the SDK, and the guest's next renewal writes them.
3. **A plain agent restart** (kill -9, `labcloud up`) with an SSH session open into the guest: the session keeps
   working, and the bridge, the router namespace, dnsmasq, the guest's bridge port and the rules are the same
   objects as before (nothing torn down and rebuilt).
4. **Rebuilt behind the agent's back**: with the agent stopped, the VPC bridge is deleted, dnsmasq killed and
   labcloud's iptables chains flushed, and the guest is cut off; `labcloud up` rebuilds all of it from the
   stored specs (the tap back on the new bridge, the same rules), SSH works again, and the guest's lease
   renewal is answered by the new dnsmasq.
5. **Delete**: the port leaves the database, dnsmasq's hosts file and its leases file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkecs.v2 import (
    CreateServersRequest,
    CreateServersRequestBody,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
    PrePaidServerSecurityGroup,
)
from huaweicloudsdkvpc.v2 import UpdateSubnetOption, UpdateSubnetRequest, UpdateSubnetRequestBody

from agent.net import names
from tests.e2e import journey
from tests.support import ssh

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

WAIT_S = 300.0
FIXED_IP = "10.47.1.77"
GATEWAY = "10.47.1.1"


def _wait(what: str, check: Callable[[], bool], timeout: float = WAIT_S, poll: float = 0.5) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"still waiting for {what} after {timeout} s"
        time.sleep(poll)
    return time.monotonic() - started


def _in_ns(cloud: Any, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", cloud.ns, *argv], check=True, capture_output=True, text=True
    ).stdout


def _links(cloud: Any) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(_in_ns(cloud, "ip", "-j", "link"))}


def _chains(cloud: Any) -> list[str]:
    return sorted({line[1:].split()[0] for line in _rules(cloud) if line.startswith(":")})


def _rules(cloud: Any) -> list[str]:
    """labcloud's chains and rules in the filter table, as iptables-save prints them, without counters."""
    lines = _in_ns(cloud, "iptables-save", "-t", "filter").splitlines()
    prefixes = names.CHAIN_PREFIXES
    return sorted(
        line.split(" [")[0]
        for line in lines
        if any(line.startswith((f":{p}", f"-A {p}")) for p in prefixes) or f"-j {names.FORWARD_CHAIN}" in line
    )


def _pid_of(path: Path) -> int | None:
    """The pid in a pid file if that process lives (a zombie does not)."""
    try:
        pid = int(path.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


class Dhcp:
    """The VPC's dnsmasq files on the host."""

    def __init__(self, home: Path, vpc_id: str) -> None:
        self.dir = home / "agent" / "net" / vpc_id

    def hosts(self) -> set[tuple[str, str]]:
        path = self.dir / "dhcp-hosts"
        lines = path.read_text().splitlines() if path.exists() else []
        return {(f[0], f[1]) for f in (line.split(",") for line in lines)}

    def leases(self) -> set[tuple[str, str]]:
        path = self.dir / "dnsmasq.leases"
        lines = path.read_text().splitlines() if path.exists() else []
        return {(f[1], f[2]) for f in (line.split() for line in lines) if len(f) >= 3}

    def pid(self) -> int | None:
        return _pid_of(self.dir / "dnsmasq.pid")

    def log_size(self) -> int:
        return (self.dir / "dnsmasq.log").stat().st_size

    def log_since(self, offset: int) -> str:
        with (self.dir / "dnsmasq.log").open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


def _renew(client: paramiko.SSHClient) -> None:
    """Make the guest's udhcpc renew its lease now (SIGUSR1), as it does on its own at T1."""
    result = ssh.run(client, "kill -USR1 $(cat /run/udhcpc.eth0.pid)")
    assert result.exit_status == 0, result.stderr


def _guest(client: paramiko.SSHClient, command: str) -> str:
    result = ssh.run(client, command)
    assert result.exit_status == 0, (command, result.stderr)
    return result.stdout


class Echo:
    """`cat` on the guest over one SSH session: an established TCP connection that must outlive restarts."""

    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client
        self.stdin, self.stdout, _ = client.exec_command("cat")
        self.stdout.channel.settimeout(60.0)

    def __call__(self, line: str) -> str:
        self.stdin.write(line + "\n")
        self.stdin.flush()
        return str(self.stdout.readline()).rstrip("\n")


def test_dhcp_in_a_guest_and_its_network_across_agent_restarts(cloud: Any, keypair: tuple[str, Path]) -> None:
    public_key, key_path = keypair
    home = Path(cloud.home)
    ecs, vpc = cloud.ecs(), cloud.vpc()
    journey.import_keypair(ecs, "dhcp-key", public_key)
    vpc_id, subnet_id, sg_id = journey.create_network(
        vpc, name="dhcp", cidr="10.47.0.0/16", subnet_cidr="10.47.1.0/24", gateway=GATEWAY
    )

    def update_subnet(**fields: Any) -> None:
        option = UpdateSubnetOption(name="dhcp-subnet", **fields)
        body = UpdateSubnetRequestBody(subnet=option)
        vpc.update_subnet(UpdateSubnetRequest(vpc_id=vpc_id, subnet_id=subnet_id, body=body))

    update_subnet(dns_list=["10.47.0.53", "10.47.0.54"])  # no server yet: it comes with the create
    body = PrePaidServer(
        image_ref=journey.small_image_id(cloud.ims()),
        flavor_ref=journey.smallest_flavor_id(ecs),
        name="leaser",
        vpcid=vpc_id,
        nics=[PrePaidServerNic(subnet_id=subnet_id, ip_address=FIXED_IP)],
        root_volume=PrePaidServerRootVolume(volumetype="SATA"),
        security_groups=[PrePaidServerSecurityGroup(id=sg_id)],
        key_name="dhcp-key",
    )
    created = ecs.create_servers(CreateServersRequest(body=CreateServersRequestBody(server=body)))
    (server_id,) = created.server_ids
    job = journey.wait_job(ecs, created.job_id, timeout=WAIT_S)
    assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
    server = journey.show(ecs, server_id)
    assert journey.fixed_ip(server) == FIXED_IP
    address = server.addresses[vpc_id][0]
    mac, port_id = address.os_ext_ips_ma_cmac_addr, address.os_ext_ip_sport_id
    dhcp, tap, bridge = Dhcp(home, vpc_id), names.tap_name(port_id), names.bridge_name(vpc_id)

    # --- 1. what DHCP gave the guest ---
    client = ssh.wait_for_ssh(cloud.ns, FIXED_IP, key_path)
    try:
        assert f"inet {FIXED_IP}/24 " in _guest(client, "ip -o -4 addr show dev eth0")
        assert _guest(client, "cat /sys/class/net/eth0/mtu").strip() == "1450"
        assert f"default via {GATEWAY} dev eth0" in _guest(client, "ip route")
        resolv = _guest(client, "cat /etc/resolv.conf")
        assert [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")] == [
            "10.47.0.53",
            "10.47.0.54",
        ]
        assert dhcp.hosts() == {(mac, FIXED_IP)} and (mac, FIXED_IP) in dhcp.leases()

        # --- 2. a subnet update reaches the guest at its next renewal ---
        update_subnet(dns_list=["10.47.0.99"])
        _renew(client)
        _wait(
            "the guest to take the new DNS server",
            lambda: "nameserver 10.47.0.99\n" in _guest(client, "cat /etc/resolv.conf"),
        )
    finally:
        client.close()

    # --- 3. a plain restart with a session open: nothing is rebuilt, the session goes on ---
    def kernel_view() -> dict[str, Any]:
        links = _links(cloud)
        record = json.loads((dhcp.dir / "network.json").read_text())
        return {
            "bridge": links[bridge]["ifindex"],
            "tap": (links[tap]["ifindex"], links[tap].get("master")),
            "router": record["router"]["pid"],
            "dnsmasq": dhcp.pid(),
            "rules": _rules(cloud),
        }

    session = ssh.wait_for_ssh(cloud.ns, FIXED_IP, key_path)
    try:
        echo = Echo(session)
        assert echo("before the restart") == "before the restart"
        before = kernel_view()
        assert before["tap"][1] == bridge and before["dnsmasq"] is not None and before["rules"]
        agent = _pid_of(home / "run" / "agent.pid")
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        _wait("the agent to die", lambda: _pid_of(home / "run" / "agent.pid") is None, poll=0.05)
        cloud.run("up")
        assert _pid_of(home / "run" / "agent.pid") not in (None, agent)
        assert echo("across the restart") == "across the restart"
        assert kernel_view() == before
    finally:
        session.close()

    # --- 4. destroyed behind the stopped agent's back, rebuilt by `labcloud up` ---
    agent = _pid_of(home / "run" / "agent.pid")
    assert agent is not None
    os.kill(agent, signal.SIGTERM)
    _wait("the agent to stop", lambda: _pid_of(home / "run" / "agent.pid") is None, poll=0.05)
    _in_ns(cloud, "ip", "link", "del", bridge)
    old_dnsmasq = before["dnsmasq"]
    os.kill(old_dnsmasq, signal.SIGKILL)
    _wait("dnsmasq to die", lambda: dhcp.pid() is None, poll=0.05)
    for chain in _chains(cloud):
        _in_ns(cloud, "iptables", "-F", chain)
    assert _links(cloud)[tap].get("master") is None
    with pytest.raises((OSError, paramiko.SSHException, EOFError)):
        ssh.connect(cloud.ns, FIXED_IP, key_path, timeout=5.0).close()  # cut off: the negative control
    log_offset = dhcp.log_size()

    started = time.monotonic()
    cloud.run("up")
    after = kernel_view()
    assert after["bridge"] != before["bridge"], "the bridge was not rebuilt"
    assert after["tap"] == (before["tap"][0], bridge), "the guest's tap is not back on the bridge"
    assert after["router"] == before["router"]  # the router namespace was fine and is kept
    assert after["dnsmasq"] not in (None, old_dnsmasq)
    assert after["rules"] == before["rules"]
    client = ssh.wait_for_ssh(cloud.ns, FIXED_IP, key_path)
    log.info("SSH works again %.1f s after `labcloud up`", time.monotonic() - started)
    try:
        _renew(client)
        _wait(
            "the new dnsmasq to renew the guest's lease",
            lambda: f"DHCPACK(gw0) {FIXED_IP} {mac}" in dhcp.log_since(log_offset),
        )
        assert f"inet {FIXED_IP}/24 " in _guest(client, "ip -o -4 addr show dev eth0")
    finally:
        client.close()
    assert (mac, FIXED_IP) in dhcp.leases()

    # --- 5. delete: the address leaves the database, the hosts file and the leases ---
    job = journey.wait_job(ecs, journey.delete(ecs, [server_id]), timeout=WAIT_S)
    assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
    assert dhcp.hosts() == set()
    _wait("the lease to be released", lambda: (mac, FIXED_IP) not in dhcp.leases(), poll=0.1)
    with sqlite3.connect(home / "controller" / "labcloud.db") as db:
        assert db.execute("SELECT count(*) FROM port WHERE subnet_id = ?", (subnet_id,)).fetchone()[0] == 0
