"""VPCs across hosts, for real: a two-host lab, real TCG guests, TCP between them from inside the guests.

Placement is forced by availability zone (the lab puts h1 in lab-1a and h2 in lab-1b). Four guests:

    VPC blue 10.41.0.0/16: a1 (h1, subnet 10.41.1.0/24), b1 (h2, 10.41.1.0/24), b2 (h2, 10.41.2.0/24)
    (b2 reaches a1 across hosts and b1 on its own host, both through the gateway)
    VPC green 10.41.0.0/16 (the same CIDR): c1 (h1, 10.41.1.0/24)

Oracles: `ip -j -d link` (the VXLAN devices and their VNIs), `bridge -j fdb` (flood lists), nft counters in the
hosts (frames seen per source MAC), and busybox `nc` inside the guests over SSH. A blocked path is a measured
failure (nc gives up, the listener got nothing, the counter stayed at 0), never assumed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    CreateServersRequest,
    CreateServersRequestBody,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
    PrePaidServerSecurityGroup,
)
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    CreateSubnetOption,
    CreateSubnetRequest,
    CreateSubnetRequestBody,
)

from agent.net import names
from tests.e2e import journey
from tests.support import ssh
from tests.support.lab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

PORT = 5000
SSH_WAIT_S = 420.0


def _subnet(vpc: Any, vpc_id: str, cidr: str, gateway: str) -> str:
    option = CreateSubnetOption(name="s-" + cidr.split("/")[0], cidr=cidr, gateway_ip=gateway, vpc_id=vpc_id)
    return str(vpc.create_subnet(CreateSubnetRequest(body=CreateSubnetRequestBody(subnet=option))).subnet.id)


def _allow_tcp(vpc: Any, sg_id: str, port: int) -> None:
    rule = CreateSecurityGroupRuleOption(
        security_group_id=sg_id,
        direction="ingress",
        ethertype="IPv4",
        protocol="tcp",
        port_range_min=port,
        port_range_max=port + 1,
        remote_ip_prefix="0.0.0.0/0",
    )
    vpc.create_security_group_rule(
        CreateSecurityGroupRuleRequest(body=CreateSecurityGroupRuleRequestBody(security_group_rule=rule))
    )


def _create(
    ecs: Any, name: str, zone: str, vpc_id: str, subnet_id: str, sg_id: str, refs: dict[str, str]
) -> str:
    server = PrePaidServer(
        image_ref=refs["image"],
        flavor_ref=refs["flavor"],
        name=name,
        vpcid=vpc_id,
        nics=[PrePaidServerNic(subnet_id=subnet_id)],
        root_volume=PrePaidServerRootVolume(volumetype="SATA"),
        security_groups=[PrePaidServerSecurityGroup(id=sg_id)],
        key_name="lab-key",
        availability_zone=zone,
    )
    return str(ecs.create_servers(CreateServersRequest(body=CreateServersRequestBody(server=server))).job_id)


def _vxlans(lab: Lab, member: str) -> dict[str, int]:
    return {
        link["ifname"]: link["linkinfo"]["info_data"]["id"]
        for link in lab.ip_json(member, "-d", "link", "show", "type", "vxlan")
    }


def _flood(lab: Lab, member: str, vpc_id: str) -> set[str]:
    entries = json.loads(lab.sh(member, "bridge", "-j", "fdb", "show", "dev", names.vxlan_name(vpc_id)))
    return {e["dst"] for e in entries if e["mac"] == "00:00:00:00:00:00"}


def _vni(lab: Lab, member: str, vpc_id: str) -> int:
    record = json.loads((lab.agent_state(member) / "net" / vpc_id / "network.json").read_text())
    return int(record["spec"]["vni"])


def _watch(lab: Lab, member: str, macs: dict[str, str]) -> None:
    """Count, in a host, every bridged frame whose source is one of `macs` (name -> MAC), on any port."""
    rules = "\n".join(f'    ether saddr {mac} counter comment "{name}"' for name, mac in macs.items())
    script = (
        "table bridge lctwatch {\n  chain seen {\n    type filter hook prerouting priority -300; policy accept;\n"
        f"{rules}\n  }}\n}}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", lab.ns(member), "nft", "-f", "-"], input=script, text=True, check=True
    )


def _seen(lab: Lab, member: str) -> dict[str, int]:
    doc = json.loads(lab.sh(member, "nft", "-j", "list", "table", "bridge", "lctwatch"))
    counts: dict[str, int] = {}
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule:
            packets = sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            counts[rule.get("comment", "?")] = packets
    return counts


class Guest:
    """A booted guest reached over SSH from `via` (a host namespace, or a VPC router's /proc/<pid>/ns/net)."""

    def __init__(self, name: str, ip: str, mac: str, via: str, key: Path) -> None:
        self.name, self.ip, self.mac, self.via, self.key = name, ip, mac, via, key

    def run(self, command: str) -> ssh.Result:
        client = ssh.wait_for_ssh(self.via, self.ip, self.key, timeout=SSH_WAIT_S)
        try:
            return ssh.run(client, command)
        finally:
            client.close()

    def listen(self, port: int) -> None:
        """A one-shot busybox nc listener writing what it receives to /tmp/got-<port>."""
        done = self.run(
            f"rm -f /tmp/got-{port}; (nc -l -p {port} > /tmp/got-{port} 2>/dev/null </dev/null &); echo ok"
        )
        assert done.stdout.strip() == "ok", done

    def send(self, ip: str, port: int, text: str, tries: int = 3) -> int:
        """Exit status of `echo text | nc` to ip:port from inside the guest, after up to `tries` attempts (the
        first contact between two freshly booted TCG guests is sometimes slower than nc's connect timeout)."""
        attempt = f"echo {text} | nc -w 5 {ip} {port}"
        loop = (
            f"rc=1; for i in $(seq {tries}); do {attempt} && {{ rc=0; break; }}; sleep 2; done; echo rc=$rc"
        )
        done = self.run(loop)
        return int(done.stdout.strip().rpartition("rc=")[2])

    def received(self, port: int) -> str:
        return self.run(f"cat /tmp/got-{port} 2>/dev/null || true").stdout.strip()


def _eventually(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)


def test_vpc_spans_hosts_routes_between_subnets_and_stays_isolated(
    lab: Lab, keypair: tuple[str, Path]
) -> None:
    public_key, key = keypair
    ecs, vpc = lab.ecs(), lab.vpc()
    with lab.entered():
        journey.import_keypair(ecs, "lab-key", public_key)
        blue, blue_1, sg = journey.create_network(
            vpc, name="blue", cidr="10.41.0.0/16", subnet_cidr="10.41.1.0/24", gateway="10.41.1.1"
        )
        blue_2 = _subnet(vpc, blue, "10.41.2.0/24", "10.41.2.1")
        green, green_1, _ = journey.create_network(
            vpc, name="green", cidr="10.41.0.0/16", subnet_cidr="10.41.1.0/24", gateway="10.41.1.1"
        )
        _allow_tcp(vpc, sg, PORT)
        refs = {"image": journey.small_image_id(lab.ims()), "flavor": journey.smallest_flavor_id(ecs)}
        plan = {
            "a1": ("lab-1a", blue, blue_1),
            "b1": ("lab-1b", blue, blue_1),
            "b2": ("lab-1b", blue, blue_2),
            "c1": ("lab-1a", green, green_1),
        }
        jobs = {name: _create(ecs, name, zone, v, s, sg, refs) for name, (zone, v, s) in plan.items()}
        servers: dict[str, Any] = {}
        for name, job_id in jobs.items():
            job = journey.wait_job(ecs, job_id, timeout=900)
            assert job.status == "SUCCESS", job
            servers[name] = journey.show(ecs, job.entities.sub_jobs[0].entities.server_id)
    hosts = {name: s.os_ext_srv_att_rhost for name, s in servers.items()}
    assert hosts == {"a1": "h1", "b1": "h2", "b2": "h2", "c1": "h1"}
    ips = {name: journey.fixed_ip(s) for name, s in servers.items()}
    macs = {
        name: next(a.os_ext_ips_ma_cmac_addr for addrs in s.addresses.values() for a in addrs)
        for name, s in servers.items()
    }

    # One VXLAN device per VPC and host, with the VPC's VNI; two VPCs, two VNIs.
    vni_blue, vni_green = _vni(lab, "h1", blue), _vni(lab, "h1", green)
    assert vni_blue != vni_green and _vni(lab, "h2", blue) == vni_blue
    assert _vxlans(lab, "h1") == {names.vxlan_name(blue): vni_blue, names.vxlan_name(green): vni_green}
    assert _vxlans(lab, "h2") == {names.vxlan_name(blue): vni_blue}
    # Flood lists: the other host of the VPC only; green lives on h1 alone.
    assert _flood(lab, "h1", blue) == {"10.254.0.12"}
    assert _flood(lab, "h2", blue) == {"10.254.0.11"}
    assert _flood(lab, "h1", green) == set()

    _watch(lab, "h2", {"from-c1": macs["c1"], "from-a1": macs["a1"]})
    # Each guest is reached from its VPC's router namespace on its host: the host namespace itself routes only
    # one of two VPCs with the same CIDR (and c1 may even have a1's address).
    vpc_of = {name: vpc_id for name, (_, vpc_id, _) in plan.items()}
    guests = {
        name: Guest(name, ips[name], macs[name], lab.router_netns(hosts[name], vpc_of[name]), key)
        for name in servers
    }
    a1, b1, b2, c1 = guests["a1"], guests["b1"], guests["b2"], guests["c1"]
    for name, guest in guests.items():
        assert guest.run("hostname").stdout.strip() == name

    assert a1.run("cat /sys/class/net/eth0/mtu").stdout.strip() == "1450"  # DHCP's MTU, under the overlay

    # Same subnet, different hosts: a1 -> b1 over the tunnel.
    b1.listen(PORT)
    assert a1.send(ips["b1"], PORT, "hello-from-a1") == 0
    _eventually(lambda: b1.received(PORT) == "hello-from-a1", "b1 to receive a1's message")
    # Different subnets, different hosts: b2 (10.41.2.0/24 on h2) -> a1 (10.41.1.0/24 on h1) via the gateways.
    a1.listen(PORT + 1)
    assert b2.send(ips["a1"], PORT + 1, "hello-from-b2") == 0
    _eventually(lambda: a1.received(PORT + 1) == "hello-from-b2", "a1 to receive b2's message")
    # Different subnets, same host: b2 -> b1 (10.41.1.0/24), both on h2, through h2's own gateway.
    b1.listen(PORT + 1)
    assert b2.send(ips["b1"], PORT + 1, "hello-from-b2-local") == 0
    _eventually(lambda: b1.received(PORT + 1) == "hello-from-b2-local", "b1 to receive b2's message")

    # Same CIDR, other VPC: c1 tries b1's address; nothing arrives, and h2 never sees a frame from c1.
    b1.listen(PORT)
    assert c1.send(ips["b1"], PORT, "hello-from-c1") != 0
    assert b1.received(PORT) == ""
    seen = _seen(lab, "h2")
    assert seen["from-c1"] == 0 and seen["from-a1"] > 0, seen

    # Removing h2's last blue port takes h2 out of h1's flood list (and its ports out of h1's router).
    with lab.entered():
        job = journey.wait_job(ecs, journey.delete(ecs, [servers["b1"].id, servers["b2"].id]), timeout=600)
        assert job.status == "SUCCESS", job
    _eventually(lambda: _flood(lab, "h1", blue) == set(), "h1 to stop flooding blue to h2")
    with lab.entered():
        job = journey.wait_job(ecs, journey.delete(ecs, [servers["a1"].id, servers["c1"].id]), timeout=600)
        assert job.status == "SUCCESS", job
