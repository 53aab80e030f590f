"""EIPs and shared SNAT with real packets: an "external" namespace on the host's external device talks to fake
guests of two VPCs with the *same* CIDR and fixed IPs, through the host's external namespace and the routers.

Every listener answers with its own name and the peer address it sees, so a connection proves both where it
landed and which source address it arrived with. "Blocked" is always a measured connect timeout.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from agent.net.external import EXTERNAL_KEY, ExternalConfig
from agent.net.network import HostNetwork
from agent.net.ports import BoundPort
from agent.net.router import find
from agent.schemas import (
    ExternalSpec,
    FloatingIpSpec,
    NetworkSpec,
    PortSpec,
    RuleSpec,
    SecurityGroupSpec,
    SubnetSpec,
)

from .helpers import Guest, Sandbox, call_in_netns, create_netns, wait_until

pytestmark = pytest.mark.netns

VPC_A = "ea000000-0000-4000-8000-00000000000a"
VPC_B = "eb000000-0000-4000-8000-00000000000b"
SUB_A = "5a000000-0000-4000-8000-00000000000a"
SUB_B = "5b000000-0000-4000-8000-00000000000b"
OPEN = "0e000000-0000-4000-8000-000000000001"  # ingress on APP_PORT from anywhere, egress anything
CLOSED = "c0000000-0000-4000-8000-000000000002"  # egress only
APP_PORT = 2222
EXT_CLIENT = "203.0.113.1"  # the "internet" namespace (a documentation range, never routed anywhere)
HOST_EXT = "203.0.113.10"  # this host's own external address (shared SNAT leaves with it)
EIP_1, EIP_2, EIP_3 = "203.0.113.101", "203.0.113.102", "203.0.113.103"
EXT_DEV = "xdev0"  # the host's device on the external segment


def _spec(vpc: str, subnet: str, vni: int) -> NetworkSpec:
    sub = SubnetSpec(id=subnet, cidr="10.30.1.0/24", gateway_ip="10.30.1.1")
    return NetworkSpec(vpc_id=vpc, vni=vni, cidr="10.30.0.0/16", subnets=[sub])


def _port(n: int, vpc: str, subnet: str, ip: str, group: str) -> PortSpec:
    return PortSpec(
        id=f"7e00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"fa:16:3e:00:01:0{n}",
        ip=ip,
        subnet_id=subnet,
        vpc_id=vpc,
        security_group_ids=[group],
    )


GROUPS = [
    SecurityGroupSpec(
        id=OPEN,
        rules=[
            RuleSpec(
                id="in-app",
                direction="ingress",
                protocol="tcp",
                port_range_min=APP_PORT,
                port_range_max=APP_PORT,
            ),
            RuleSpec(id="out", direction="egress"),
        ],
    ),
    SecurityGroupSpec(id=CLOSED, rules=[RuleSpec(id="out", direction="egress")]),
]

CONFIG = ExternalConfig.from_settings(EXT_DEV, f"{HOST_EXT}/24", EXT_CLIENT)


def _net(box: Sandbox, method: str, *args: object) -> object:
    def invoke() -> object:
        return getattr(HostNetwork(box.state_dir, external=CONFIG), method)(*args)

    return call_in_netns(box.host, invoke)


_WHOAMI = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[2]))); s.listen(16)\n"
    "while True:\n"
    "    c, peer = s.accept(); c.sendall(f'{sys.argv[1]} {peer[0]}'.encode()); c.close()\n"
)


def _whoami(box: Sandbox, ns: str, name: str) -> None:
    """A listener in `ns` that answers '<name> <peer address>'."""
    listener = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", _WHOAMI, name, str(APP_PORT)])
    box.listeners.append(listener)
    wait_until(lambda: _ask(box, ns, "127.0.0.1").startswith(name), f"whoami in {ns}")


def _ask_here(ip: str, timeout_s: float) -> str:
    try:
        with socket.create_connection((ip, APP_PORT), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            return conn.recv(200).decode()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"


def _ask(box: Sandbox, ns: str, ip: str, timeout_s: float = 3.0) -> str:
    return str(call_in_netns(ns, _ask_here, ip, timeout_s))


def _guest(box: Sandbox, port: PortSpec) -> Guest:
    guest = box.add_guest(port)
    box.sh(guest.ns, "ip", "addr", "add", f"{port.ip}/24", "dev", "eth0")
    box.sh(guest.ns, "ip", "route", "add", "default", "via", "10.30.1.1")
    return guest


def _router_pid(box: Sandbox, vpc: str) -> int:
    return int(box.record(vpc)["router"]["pid"])


def _in_router(box: Sandbox, vpc: str, *argv: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{_router_pid(box, vpc)}/ns/net", *argv],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_eips_and_shared_snat_with_overlapping_vpcs(sandbox: Sandbox) -> None:
    box = sandbox
    ext = create_netns()
    box.namespaces.append(ext)
    box.sh(box.host, "ip", "link", "add", EXT_DEV, "type", "veth", "peer", "name", "eth0", "netns", ext)
    box.sh(box.host, "ip", "link", "set", EXT_DEV, "up")
    box.sh(ext, "ip", "addr", "add", f"{EXT_CLIENT}/24", "dev", "eth0")
    box.sh(ext, "ip", "link", "set", "eth0", "up")

    _net(box, "ensure_network", _spec(VPC_A, SUB_A, 301))
    _net(box, "ensure_network", _spec(VPC_B, SUB_B, 302))
    # g1 (VPC A) and g3 (VPC B) have the same fixed IP: only their routers tell them apart.
    g1 = _guest(box, _port(1, VPC_A, SUB_A, "10.30.1.11", OPEN))
    g2 = _guest(box, _port(2, VPC_A, SUB_A, "10.30.1.12", CLOSED))
    g3 = _guest(box, _port(3, VPC_B, SUB_B, "10.30.1.11", OPEN))
    bound = [BoundPort(port=g.port, tap=g.tap, hostname=f"vm{i}") for i, g in enumerate((g1, g2, g3), 1)]
    _net(box, "sync_ports", bound, GROUPS)
    for name, guest in (("g1", g1), ("g2", g2), ("g3", g3)):
        _whoami(box, guest.ns, name)
    _whoami(box, ext, "ext")

    # Nothing is bound yet and SNAT is off: the outside is unreachable both ways.
    assert _ask(box, g1.ns, EXT_CLIENT) == "timeout"
    fip1 = FloatingIpSpec(eip=EIP_1, port_id=g1.port.id, vpc_id=VPC_A, fixed_ip=g1.port.ip)
    fip2 = FloatingIpSpec(eip=EIP_2, port_id=g3.port.id, vpc_id=VPC_B, fixed_ip=g3.port.ip)
    assert _net(box, "set_external", ExternalSpec(version=1, floating_ips=[fip1, fip2], snat_vpcs=[VPC_A]))

    # Inbound: each EIP lands on its own guest, which sees the client's real address.
    assert _ask(box, ext, EIP_1) == f"g1 {EXT_CLIENT}"
    assert _ask(box, ext, EIP_2) == f"g3 {EXT_CLIENT}"
    # Outbound: a guest with an EIP leaves with it; one without leaves with the host's address (shared SNAT).
    assert _ask(box, g1.ns, EXT_CLIENT) == f"ext {EIP_1}"
    assert _ask(box, g3.ns, EXT_CLIENT) == f"ext {EIP_2}"
    assert _ask(box, g2.ns, EXT_CLIENT) == f"ext {HOST_EXT}"
    # Oracles: the router's nat table and the external namespace's proxy ARP entries.
    nat_a = _in_router(box, VPC_A, "iptables-save", "-t", "nat")
    assert f"-A PREROUTING -d {EIP_1}/32 -i ex0 -j DNAT --to-destination 10.30.1.11" in nat_a
    assert f"-A POSTROUTING -s 10.30.1.11/32 -o ex0 -j SNAT --to-source {EIP_1}" in nat_a
    assert EIP_2 not in nat_a
    holder = find(str((box.state_dir / "net").resolve()))[EXTERNAL_KEY]
    proxies = subprocess.run(
        ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "ip", "neigh", "show", "proxy"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert EIP_1 in proxies and EIP_2 in proxies

    # Unbind EIP 1, bind EIP 3 to g2 (no ingress rule), switch SNAT off in VPC A.
    fip3 = FloatingIpSpec(eip=EIP_3, port_id=g2.port.id, vpc_id=VPC_A, fixed_ip=g2.port.ip)
    started = time.monotonic()
    assert _net(box, "set_external", ExternalSpec(version=2, floating_ips=[fip2, fip3], snat_vpcs=[]))
    print(
        f"EIP unbind applied (rules, routes, proxy ARP, conntrack flush) in {time.monotonic() - started:.2f} s"
    )
    assert _ask(box, ext, EIP_1) == "timeout"
    assert _in_router(box, VPC_A, "conntrack", "-L", "-d", EIP_1).strip() == ""  # flushed
    assert _ask(box, g1.ns, EXT_CLIENT) == "timeout"  # no EIP, no SNAT
    assert _ask(box, ext, EIP_3) == "timeout"  # security groups apply to traffic arriving on an EIP
    assert _ask(box, g2.ns, EXT_CLIENT) == f"ext {EIP_3}"
    assert _ask(box, ext, EIP_2) == f"g3 {EXT_CLIENT}"  # the other VPC is untouched
    # An older push arriving late changes nothing.
    assert not _net(box, "set_external", ExternalSpec(version=1, floating_ips=[fip1], snat_vpcs=[VPC_A]))
    assert _ask(box, ext, EIP_1) == "timeout"

    # Deleting a VPC's network removes its transit link; teardown removes the external namespace.
    _net(box, "delete_network", VPC_B)
    assert _ask(box, ext, EIP_2) == "timeout"
    _net(box, "teardown_all")
    assert EXTERNAL_KEY not in find(str((box.state_dir / "net").resolve()))
    assert box.ip_json(box.host, "link", "show", "type", "macvlan") == []
