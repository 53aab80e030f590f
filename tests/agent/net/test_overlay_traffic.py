"""Real packets between two simulated hosts joined by an underlay: a VPC over VXLAN with a distributed gateway.

Two `Sandbox` hosts are joined by a veth pair (the underlay, MTU 1550) and run HostNetwork with an underlay
address, the way agents in the lab do. Fake guests are namespaces on the VPC bridges. Oracles are independent of
the code under test: `ip -j -d link`, `bridge -j fdb`, `ip neigh`, nft counters in the receiving guest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.net import names, overlay
from agent.net.ports import BoundPort
from agent.schemas import (
    NetworkSpec,
    OverlaySpec,
    PortSpec,
    RemotePort,
    RuleSpec,
    SecurityGroupSpec,
    SubnetSpec,
)

from .helpers import Guest, Sandbox, run_in_netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        shutil.which("busybox") is None or shutil.which("nft") is None, reason="needs busybox and nftables"
    ),
]

VPC = "0a1b2c3d-0000-4000-8000-000000000001"
VPC2 = "0b2c3d4e-0000-4000-8000-000000000002"
SUB1 = "5b000000-0000-4000-8000-000000000001"
SUB2 = "5b200000-0000-4000-8000-000000000002"
SUB3 = "5b300000-0000-4000-8000-000000000003"
GROUP = "de000000-0000-4000-8000-000000000001"
UNDERLAY = {"a": "10.254.0.11", "b": "10.254.0.12"}
APP_PORT = 2222


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[dict[str, Sandbox]]:
    """Two simulated hosts with an underlay veth between them (MTU 1550, so VXLAN ports get 1500)."""
    boxes: dict[str, Sandbox] = {}
    try:
        for name in ("a", "b"):
            workdir = Path("/tmp") / f"lctest-net-{tmp_path.name}-{name}"
            workdir.mkdir(mode=0o755)
            boxes[name] = Sandbox(workdir)
            boxes[name].underlay_ip = UNDERLAY[name]
        a, b = boxes["a"], boxes["b"]
        a.sh(a.host, "ip", "link", "add", "ul0", "mtu", "1550", "type", "veth", "peer", "name", "ul0",
             "netns", b.host, "mtu", "1550")  # fmt: skip
        for name, box in boxes.items():
            box.sh(box.host, "ip", "addr", "add", f"{UNDERLAY[name]}/24", "dev", "ul0")
            box.sh(box.host, "ip", "link", "set", "ul0", "up")
        yield boxes
    finally:
        for box in boxes.values():
            box.close()


def _spec(vpc_id: str, vni: int, overlay_spec: OverlaySpec, *, two_subnets: bool = True) -> NetworkSpec:
    subnets = [SubnetSpec(id=SUB1 if vpc_id == VPC else SUB3, cidr="10.20.1.0/24", gateway_ip="10.20.1.1")]
    if two_subnets:
        subnets.append(SubnetSpec(id=SUB2, cidr="10.20.2.0/24", gateway_ip="10.20.2.1"))
    return NetworkSpec(vpc_id=vpc_id, vni=vni, cidr="10.20.0.0/16", subnets=subnets, overlay=overlay_spec)


def _port(n: int, vpc_id: str = VPC, subnet: str = SUB1, ip: str | None = None) -> PortSpec:
    net = "2" if subnet == SUB2 else "1"
    return PortSpec(
        id=f"7c00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"fa:16:3e:00:00:0{n}",
        ip=ip or f"10.20.{net}.{10 + n}",
        subnet_id=subnet,
        vpc_id=vpc_id,
        security_group_ids=[GROUP],
    )


def _overlay(version: int, peer: str, *remote: PortSpec) -> OverlaySpec:
    return OverlaySpec(
        version=version, peers=[peer], remote_ports=[RemotePort(ip=p.ip, mac=p.mac) for p in remote]
    )


def _group(*members: PortSpec) -> SecurityGroupSpec:
    rules = [RuleSpec(id="in-self", direction="ingress", remote_group_id=GROUP)]
    rules.append(RuleSpec(id="out-any", direction="egress"))
    return SecurityGroupSpec(id=GROUP, rules=rules, member_ips=sorted({p.ip for p in members}))


def _sync(box: Sandbox, guests: list[Guest], group: SecurityGroupSpec) -> None:
    box.net("sync_ports", [BoundPort(port=g.port, tap=g.tap, hostname=g.tap) for g in guests], [group])


def _lease(box: Sandbox, guest: Guest) -> dict[str, str]:
    lease = box.dhcp(guest)
    assert lease is not None, f"{guest.ns} got no DHCP lease"
    assert lease["ip"] == guest.port.ip
    return lease


def _flood_peers(box: Sandbox, vpc_id: str) -> set[str]:
    entries = json.loads(box.sh(box.host, "bridge", "-j", "fdb", "show", "dev", names.vxlan_name(vpc_id)))
    return {e["dst"] for e in entries if e["mac"] == "00:00:00:00:00:00"}


def _count_frames_from(box: Sandbox, guest: Guest, mac: str) -> None:
    """An nft counter in the guest itself (netdev ingress on eth0) for frames whose source is `mac`."""
    script = (
        "table netdev lcwatch {\n"
        "  chain c { type filter hook ingress device eth0 priority 0; policy accept;\n"
        f"    ether saddr {mac} counter\n  }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", guest.ns, "nft", "-f", "-"], input=script, text=True, check=True)


def _counted(box: Sandbox, guest: Guest) -> int:
    doc = json.loads(box.sh(guest.ns, "nft", "-j", "list", "table", "netdev", "lcwatch"))
    rules = [item["rule"] for item in doc["nftables"] if "rule" in item]
    return sum(expr["counter"]["packets"] for rule in rules for expr in rule["expr"] if "counter" in expr)


def test_one_vpc_spans_two_hosts_with_a_distributed_gateway(hosts: dict[str, Sandbox]) -> None:
    a, b = hosts["a"], hosts["b"]
    p1, p2, p5 = _port(1), _port(2), _port(5, subnet=SUB2)
    a.net("ensure_network", _spec(VPC, 100, _overlay(1, UNDERLAY["b"], p2, p5)))
    b.net("ensure_network", _spec(VPC, 100, _overlay(1, UNDERLAY["a"], p1)))
    g1 = a.add_guest(p1)
    g2, g5 = b.add_guest(p2), b.add_guest(p5)
    group = _group(p1, p2, p5)
    _sync(a, [g1], group)
    _sync(b, [g2, g5], group)

    # The VXLAN port: right VNI, local address, MTU from the underlay, on the VPC bridge, flooding to the peer.
    vx = a.ip_json(a.host, "-d", "link", "show", names.vxlan_name(VPC))[0]
    assert vx["linkinfo"]["info_kind"] == "vxlan"
    assert vx["linkinfo"]["info_data"]["id"] == 100
    assert vx["linkinfo"]["info_data"]["local"] == UNDERLAY["a"]
    assert vx["mtu"] == 1500 and vx["master"] == names.bridge_name(VPC)
    assert _flood_peers(a, VPC) == {UNDERLAY["b"]}

    # DHCP stays local: each guest's lease comes from its own host (the other dnsmasq never sees it).
    lease2 = _lease(b, g2)
    assert lease2["router"] == "10.20.1.1" and lease2["mtu"] == "1450"
    _lease(a, g1)
    _lease(b, g5)
    a_log = (a.state_dir / "net" / VPC / "dnsmasq.log").read_text()
    assert p2.mac not in a_log and p1.mac in a_log

    # Same subnet, different hosts: bridged over the tunnel.
    a.listen(g1.ns, APP_PORT)
    assert b.probe(g2.ns, p1.ip, APP_PORT) == "ok"
    # Different subnets, different hosts: routed by b's own router, then over the tunnel.
    assert b.probe(g5.ns, p1.ip, APP_PORT) == "ok"
    b.listen(g5.ns, APP_PORT)
    assert a.probe(g1.ns, p5.ip, APP_PORT) == "ok"

    # One gateway MAC everywhere, and never learned on a tunnel port.
    gw_mac = overlay.gateway_mac(100)
    for box, guest, gateway in ((a, g1, "10.20.1.1"), (b, g5, "10.20.2.1")):
        neigh = box.ip_json(guest.ns, "neigh", "show", gateway)
        assert [n["lladdr"] for n in neigh] == [gw_mac]
        fdb = json.loads(box.sh(box.host, "bridge", "-j", "fdb", "show", "br", names.bridge_name(VPC)))
        assert {e["ifname"] for e in fdb if e["mac"] == gw_mac} == {names.router_port_name(VPC)}
        # What the far router sent came from that host's MAC, learned on the tunnel port.
        far = UNDERLAY["b" if box is a else "a"]
        learned = {e["mac"]: e["ifname"] for e in fdb if e["mac"] == overlay.host_mac(far)}
        assert learned == {overlay.host_mac(far): names.vxlan_name(VPC)}

    # Peers follow the pushes; an older push is ignored.
    assert a.net("set_overlay", VPC, OverlaySpec(version=3, peers=[]))
    assert _flood_peers(a, VPC) == set()
    assert a.net("set_overlay", VPC, _overlay(2, UNDERLAY["b"], p2, p5))
    assert _flood_peers(a, VPC) == set()
    a.net("ensure_network", _spec(VPC, 100, _overlay(1, UNDERLAY["b"], p2, p5)))  # a stale server spec
    assert _flood_peers(a, VPC) == set()
    assert a.net("set_overlay", VPC, _overlay(4, UNDERLAY["b"], p2, p5))
    assert _flood_peers(a, VPC) == {UNDERLAY["b"]}
    assert not a.net("set_overlay", VPC2, _overlay(5, UNDERLAY["b"]))  # a VPC this host does not have

    a.net("delete_network", VPC)
    assert a.ip_json(a.host, "-d", "link", "show", "type", "vxlan") == []
    tables = json.loads(a.sh(a.host, "nft", "-j", "list", "tables", "bridge"))["nftables"]
    overlay_tables = [
        t for t in tables if t.get("table", {}).get("name", "").startswith(names.OVERLAY_TABLE_PREFIX)
    ]
    assert overlay_tables == []


def test_two_vpcs_with_the_same_cidr_on_the_same_hosts_exchange_no_packets(hosts: dict[str, Sandbox]) -> None:
    a, b = hosts["a"], hosts["b"]
    # VPC 1: a1 on a, b1 on b. VPC 2: a2 on a with a1's very address, b2 on b.
    a1, b1 = _port(1), _port(2)
    a2 = _port(3, vpc_id=VPC2, subnet=SUB3, ip=a1.ip)
    b2 = _port(4, vpc_id=VPC2, subnet=SUB3, ip="10.20.1.14")
    for box, peer, one, two in ((a, UNDERLAY["b"], b1, b2), (b, UNDERLAY["a"], a1, a2)):
        box.net("ensure_network", _spec(VPC, 100, _overlay(1, peer, one), two_subnets=False))
        box.net("ensure_network", _spec(VPC2, 200, _overlay(1, peer, two), two_subnets=False))
    ga1, ga2 = a.add_guest(a1), a.add_guest(a2)
    gb1, gb2 = b.add_guest(b1), b.add_guest(b2)
    group = _group(a1, b1, a2, b2)
    _sync(a, [ga1, ga2], group)
    _sync(b, [gb1, gb2], group)
    for box, guest in ((a, ga1), (a, ga2), (b, gb1), (b, gb2)):
        _lease(box, guest)
    _count_frames_from(b, gb1, a2.mac)
    b.listen(gb1.ns, APP_PORT)
    b.listen(gb2.ns, APP_PORT)

    assert a.probe(ga1.ns, b1.ip, APP_PORT) == "ok"  # positive control, VPC 1
    assert a.probe(ga2.ns, b2.ip, APP_PORT) == "ok"  # positive control, VPC 2
    assert a.probe(ga2.ns, b1.ip, APP_PORT) == "timeout"  # b1's address, asked from VPC 2
    run_in_netns(ga2.ns, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-b", "10.20.1.255"], check=False)
    assert _counted(b, gb1) == 0
    vnis = {
        link["ifname"]: link["linkinfo"]["info_data"]["id"]
        for link in b.ip_json(b.host, "-d", "link", "show", "type", "vxlan")
    }
    assert vnis == {names.vxlan_name(VPC): 100, names.vxlan_name(VPC2): 200}
