"""The security-group model with real packets between namespace guests: protocols, port ranges, egress rules,
statefulness and several groups on one port (their union). Every "blocked" is a measured timeout next to a
positive control on the same path."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec

from .helpers import Guest, Sandbox, wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (ping) from apt"),
]

VPC = "0a1b2c3d-0000-4000-8000-000000000001"
SUB = "5b000000-0000-4000-8000-000000000001"
WEB = "3eb00000-0000-4000-8000-000000000001"  # tcp 2000-2100 in
DNS = "d0500000-0000-4000-8000-000000000002"  # udp 5353 in
PING = "9e000000-0000-4000-8000-000000000003"  # icmp echo in
NARROW = "4a000000-0000-4000-8000-000000000004"  # egress: tcp to one address only, nothing in
OPEN_OUT = "0e000000-0000-4000-8000-000000000005"  # egress anything, nothing in


def _spec() -> NetworkSpec:
    subnet = SubnetSpec(id=SUB, cidr="10.20.1.0/24", gateway_ip="10.20.1.1")
    return NetworkSpec(vpc_id=VPC, vni=100, cidr="10.20.0.0/16", subnets=[subnet])


def _port(n: int, groups: list[str]) -> PortSpec:
    return PortSpec(
        id=f"7c00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"fa:16:3e:00:00:0{n}",
        ip=f"10.20.1.{10 + n}",
        subnet_id=SUB,
        vpc_id=VPC,
        security_group_ids=groups,
    )


def _groups(narrow_to: str) -> list[SecurityGroupSpec]:
    out = RuleSpec(id="out", direction="egress")
    return [
        SecurityGroupSpec(
            id=WEB,
            rules=[
                out,
                RuleSpec(
                    id="w", direction="ingress", protocol="tcp", port_range_min=2000, port_range_max=2100
                ),
            ],
        ),
        SecurityGroupSpec(
            id=DNS,
            rules=[out, RuleSpec(id="d", direction="ingress", protocol="udp", port_range_min=5353)],
        ),
        SecurityGroupSpec(
            id=PING,
            rules=[out, RuleSpec(id="p", direction="ingress", protocol="icmp", port_range_min=8)],
        ),
        SecurityGroupSpec(
            id=NARROW,
            rules=[
                RuleSpec(
                    id="n",
                    direction="egress",
                    protocol="tcp",
                    port_range_min=2000,
                    port_range_max=2100,
                    remote_ip_prefix=f"{narrow_to}/32",
                )
            ],
        ),
        SecurityGroupSpec(id=OPEN_OUT, rules=[out]),
    ]


def _udp_echo(box: Sandbox, ns: str, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0', {port}))\n"
        "while True:\n"
        "    data, peer = s.recvfrom(2048); s.sendto(data, peer)\n"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code])
    box.listeners.append(proc)
    wait_until(lambda: box.call(ns, _udp_probe, "127.0.0.1", port) == "ok", f"udp echo on {ns}:{port}")
    return proc


def _udp_probe(ip: str, port: int, timeout_s: float = 2.0) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(b"ping", (ip, port))
        try:
            sock.recvfrom(2048)
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"error: {exc}"
        return "ok"


def _ping(box: Sandbox, guest: Guest, ip: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", guest.ns, "busybox", "ping", "-c", "1", "-W", "2", ip],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def test_protocols_port_ranges_egress_rules_state_and_union(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    target = sandbox.add_guest(_port(1, [WEB, DNS]))  # two groups: tcp 2000-2100 and udp 5353 in
    client = sandbox.add_guest(_port(2, [OPEN_OUT]))  # may send anything, admits nothing
    narrow = sandbox.add_guest(_port(3, [NARROW]))  # may only open tcp 2000-2100 to the target
    pinged = sandbox.add_guest(_port(4, [PING]))
    guests = [target, client, narrow, pinged]
    groups = _groups(narrow_to=target.port.ip)
    ports = [BoundPort(port=g.port, tap=g.tap, hostname=f"vm{i}") for i, g in enumerate(guests)]
    sandbox.net("sync_ports", ports, groups)
    for guest in guests:
        sandbox.sh(guest.ns, "ip", "addr", "add", f"{guest.port.ip}/24", "dev", "eth0")
    for port in (2000, 2100, 2101, 22):
        sandbox.listen(target.ns, port)
    sandbox.listen(client.ns, 2050)
    sandbox.listen(pinged.ns, 2050)
    _udp_echo(sandbox, target.ns, 5353)
    _udp_echo(sandbox, target.ns, 5354)

    # tcp port range, inclusive at both ends; outside it nothing comes in.
    assert sandbox.probe(client.ns, target.port.ip, 2000) == "ok"
    assert sandbox.probe(client.ns, target.port.ip, 2100) == "ok"
    assert sandbox.probe(client.ns, target.port.ip, 2101) == "timeout"
    assert sandbox.probe(client.ns, target.port.ip, 22) == "timeout"
    # udp from the second group on the same port: the groups combine as a union.
    assert sandbox.call(client.ns, _udp_probe, target.port.ip, 5353) == "ok"
    assert sandbox.call(client.ns, _udp_probe, target.port.ip, 5354) == "timeout"
    # icmp: echo requests are admitted only where a group says so.
    assert _ping(sandbox, client, pinged.port.ip)
    assert not _ping(sandbox, client, target.port.ip)
    # Stateful: the client admits nothing, yet the replies to its own connections come back ...
    assert sandbox.probe(client.ns, target.port.ip, 2000) == "ok"
    # ... while a connection *to* it is dropped.
    assert sandbox.probe(target.ns, client.port.ip, 2050) == "timeout"
    # Egress rules: NARROW may open tcp 2000-2100 to the target and nothing else, anywhere.
    assert sandbox.probe(narrow.ns, target.port.ip, 2000) == "ok"
    assert sandbox.probe(narrow.ns, pinged.port.ip, 2050) == "timeout"  # PING admits no tcp either way ...
    assert sandbox.probe(client.ns, pinged.port.ip, 2050) == "timeout"
    assert (
        sandbox.call(narrow.ns, _udp_probe, target.port.ip, 5353) == "timeout"
    )  # ... udp is not allowed out
    assert not _ping(sandbox, narrow, pinged.port.ip)  # nor is icmp

    # A rule removed from a group (the udp one) closes the port on the next sync; added back, it opens.
    without_udp = [g if g.id != DNS else g.model_copy(update={"rules": g.rules[:1]}) for g in groups]
    sandbox.net("sync_ports", ports, without_udp)
    assert sandbox.call(client.ns, _udp_probe, target.port.ip, 5353) == "timeout"
    sandbox.net("sync_ports", ports, groups)
    assert sandbox.call(client.ns, _udp_probe, target.port.ip, 5353) == "ok"
