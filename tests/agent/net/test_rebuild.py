"""A restarted agent and a VPC's host networking: what is right is left alone, what was destroyed behind its back
comes back; and DHCP following ports and subnet changes, with dnsmasq's own files as oracles.

Every `sandbox.net(...)` call is a fresh process (a restarted agent) that knows only its state directory and the
kernel; "restart" below is what the agent's start-up resync does: `ensure_network` of every stored VPC, then one
`sync_ports` of every stored port. Guests are namespaces plugged into the bridge the way libvirt plugs a tap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.net import names
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec

from .helpers import Guest, Sandbox, entered, netns_inode, wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (udhcpc) from apt"),
]

VPC = "0a1b2c3d-0000-4000-8000-000000000011"
SUB = "5b000000-0000-4000-8000-000000000011"
OPEN = "0e000000-0000-4000-8000-000000000011"
APP_PORT = 2323
HOST_IP = "169.254.0.1"
ECHO = (
    "import socket, threading\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {APP_PORT})); s.listen(8)\n"
    "def serve(c):\n"
    "    while (data := c.recv(4096)):\n"
    "        c.sendall(data)\n"
    "while True:\n"
    "    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()\n"
)


def _spec(*, dns: list[str] | None = None, dhcp: bool = True) -> NetworkSpec:
    subnet = SubnetSpec(id=SUB, cidr="10.21.1.0/24", gateway_ip="10.21.1.1", dns=dns or [], dhcp_enable=dhcp)
    return NetworkSpec(vpc_id=VPC, vni=101, cidr="10.21.0.0/16", subnets=[subnet])


def _port(n: int) -> PortSpec:
    return PortSpec(
        id=f"7d00000{n}-0000-4000-8000-00000000001{n}",
        mac=f"fa:16:3e:00:01:0{n}",
        ip=f"10.21.1.{10 + n}",
        subnet_id=SUB,
        vpc_id=VPC,
        security_group_ids=[OPEN],
    )


def _open_group(members: list[PortSpec]) -> SecurityGroupSpec:
    rules = [
        RuleSpec(id="in-app", direction="ingress", protocol="tcp", port_range_min=APP_PORT),
        RuleSpec(id="out-any", direction="egress"),
    ]
    return SecurityGroupSpec(id=OPEN, rules=rules, member_ips=[p.ip for p in members])


def _restart(box: Sandbox, spec: NetworkSpec, guests: list[Guest]) -> None:
    """What the agent's start-up resync does with one stored VPC and these stored ports."""
    box.net("ensure_network", spec)
    ports = [BoundPort(port=g.port, tap=g.tap, hostname=f"vm{i}") for i, g in enumerate(guests, 1)]
    box.net("sync_ports", ports, [_open_group([g.port for g in guests])])


def _files(box: Sandbox) -> Path:
    return box.state_dir / "net" / VPC


def _dnsmasq_pid(box: Sandbox) -> int | None:
    try:
        pid = int((_files(box) / "dnsmasq.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if netns_inode(pid) is not None else None


def _hosts(box: Sandbox) -> set[tuple[str, str]]:
    lines = (_files(box) / "dhcp-hosts").read_text().splitlines()
    return {(f[0], f[1]) for f in (line.split(",") for line in lines)}


def _leases(box: Sandbox) -> set[tuple[str, str]]:
    """(MAC, IP) of dnsmasq's lease file: `expiry MAC IP hostname client-id` per lease."""
    path = _files(box) / "dnsmasq.leases"
    lines = path.read_text().splitlines() if path.exists() else []
    return {(f[1], f[2]) for f in (line.split() for line in lines) if len(f) >= 3}


def _links(box: Sandbox) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in box.ip_json(box.host, "link", "show")}


def _labcloud_rules(box: Sandbox) -> list[str]:
    """Our chains and rules as iptables-save prints them (counters stripped)."""
    lines = box.sh(box.host, "iptables-save", "-t", "filter").splitlines()
    return sorted(line.split(" [")[0] for line in lines if "lc-" in line or "lci-" in line or "lco-" in line)


def _kernel_view(box: Sandbox, guest: Guest) -> dict[str, Any]:
    """What a restart must not rebuild: device identities, bridge membership, processes and rules."""
    links = _links(box)
    bridge = names.bridge_name(VPC)
    return {
        "bridge": links[bridge]["ifindex"],
        "router port": (
            links[names.router_port_name(VPC)]["ifindex"],
            links[names.router_port_name(VPC)]["master"],
        ),
        "tap master": links[guest.tap].get("master"),
        "router": box.record(VPC)["router"]["pid"],
        "dnsmasq": _dnsmasq_pid(box),
        "rules": _labcloud_rules(box),
    }


def _lease(box: Sandbox, guest: Guest) -> dict[str, str]:
    lease = box.dhcp(guest)
    assert lease is not None, f"{guest.ns} got no DHCP lease"
    assert lease["ip"] == guest.port.ip
    return lease


def _echo_server(box: Sandbox, guest: Guest) -> None:
    box.listeners.append(subprocess.Popen(["ip", "netns", "exec", guest.ns, sys.executable, "-c", ECHO]))
    wait_until(lambda: box.probe(guest.ns, "127.0.0.1", APP_PORT) == "ok", "the echo server")


def _echo(conn: socket.socket, text: bytes) -> bytes | None:
    """Send `text`, return what came back, None if nothing did within 3 s."""
    conn.settimeout(3.0)
    conn.sendall(text)
    try:
        return conn.recv(4096)
    except TimeoutError:
        return None


def test_a_restart_keeps_what_is_right_and_rebuilds_what_was_destroyed(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    guest = sandbox.add_guest(_port(1))
    _restart(sandbox, _spec(), [guest])
    _lease(sandbox, guest)
    _echo_server(sandbox, guest)
    with entered(sandbox.host):  # the host reaches the guest through the router: a bridged, filtered path
        conn = socket.create_connection((guest.port.ip, APP_PORT), timeout=10)
    try:
        assert _echo(conn, b"before\n") == b"before\n"
        before = _kernel_view(sandbox, guest)
        assert before["tap master"] == names.bridge_name(VPC) and before["dnsmasq"] is not None

        # --- the gentle case: a plain restart changes nothing, and the open connection keeps working ---
        _restart(sandbox, _spec(), [guest])
        assert _kernel_view(sandbox, guest) == before
        assert _echo(conn, b"across the restart\n") == b"across the restart\n"

        # --- behind the agent's back: bridge deleted, dnsmasq killed, our chains flushed ---
        sandbox.sh(sandbox.host, "ip", "link", "del", names.bridge_name(VPC))
        os.kill(before["dnsmasq"], signal.SIGKILL)
        wait_until(lambda: _dnsmasq_pid(sandbox) is None, "dnsmasq to die")
        for chain in {line.split()[0][1:] for line in before["rules"] if line.startswith(":")}:
            sandbox.sh(sandbox.host, "iptables", "-F", chain)
        assert _links(sandbox)[guest.tap].get("master") is None
        assert _echo(conn, b"cut off\n") is None, "the guest is still reachable without its bridge"
        assert sandbox.dhcp(guest, tries=2) is None, "a DHCP server still answers"
    finally:
        conn.close()

    _restart(sandbox, _spec(), [guest])
    after = _kernel_view(sandbox, guest)
    assert after["bridge"] != before["bridge"], "the bridge was not rebuilt"
    assert after["tap master"] == names.bridge_name(VPC), "the guest's tap is not back on the bridge"
    assert after["router port"][1] == names.bridge_name(VPC)
    assert after["router"] == before["router"]  # the router namespace survived and is reused
    assert after["dnsmasq"] not in (None, before["dnsmasq"])
    assert after["rules"] == before["rules"]
    # The guest renews its lease from the new dnsmasq, which records it, and is reachable again.
    _lease(sandbox, guest)
    assert (guest.port.mac, guest.port.ip) in _leases(sandbox)
    assert sandbox.probe(sandbox.host, guest.port.ip, APP_PORT) == "ok"


def test_dhcp_follows_ports_and_subnet_changes(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    g1, g2 = sandbox.add_guest(_port(1)), sandbox.add_guest(_port(2))
    _restart(sandbox, _spec(), [g1, g2])
    for guest in (g1, g2):
        lease = _lease(sandbox, guest)
        assert (lease["mask"], lease["router"], lease["mtu"]) == ("24", "10.21.1.1", "1450")
    both = {(g.port.mac, g.port.ip) for g in (g1, g2)}
    assert _hosts(sandbox) == both
    assert _leases(sandbox) == both

    # A port that goes loses its hosts entry and its lease (dhcp_release), so its IP can go to a new MAC.
    _restart(sandbox, _spec(), [g1])
    assert _hosts(sandbox) == {(g1.port.mac, g1.port.ip)}
    wait_until(lambda: _leases(sandbox) == {(g1.port.mac, g1.port.ip)}, "the lease of the gone port to go")
    assert sandbox.dhcp(g2, tries=2) is None

    # New DNS servers: dnsmasq restarts with them, the next renewal hands them out.
    pid = _dnsmasq_pid(sandbox)
    _restart(sandbox, _spec(dns=["10.21.0.53", "10.21.0.54"]), [g1])
    assert _dnsmasq_pid(sandbox) not in (None, pid)
    assert "option:dns-server,10.21.0.53,10.21.0.54" in (_files(sandbox) / "dnsmasq.conf").read_text()
    assert _lease(sandbox, g1)["dns"].split() == ["10.21.0.53", "10.21.0.54"]

    # DHCP off: no dnsmasq, no hosts, no answer; on again: the same address as before.
    _restart(sandbox, _spec(dhcp=False), [g1])
    assert _dnsmasq_pid(sandbox) is None and _hosts(sandbox) == set()
    assert sandbox.dhcp(g1, tries=2) is None
    _restart(sandbox, _spec(dhcp=True), [g1])
    assert _hosts(sandbox) == {(g1.port.mac, g1.port.ip)}
    _lease(sandbox, g1)
    record = json.loads((_files(sandbox) / "network.json").read_text())
    assert record["spec"]["subnets"][0]["dhcp_enable"] is True


def _repair_in_one_agent(
    state_dir: Path, spec: NetworkSpec, ports: list[BoundPort], dnsmasq_pid: Path
) -> Any:
    """In one HostNetwork (a running agent): kill dnsmasq, re-ensure; delete the bridge, re-ensure and sync.
    Returns the dnsmasq pids before and after, and the tap's master after each step."""
    from agent.net.network import HostNetwork

    net = HostNetwork(state_dir)
    net.ensure_network(spec)  # fills the process's fast-path cache
    killed = int(dnsmasq_pid.read_text())
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: netns_inode(killed) is None, "dnsmasq to die")
    net.ensure_network(spec)
    restarted = int(dnsmasq_pid.read_text())
    subprocess.run(["ip", "link", "del", names.bridge_name(VPC)], check=True)
    net.ensure_network(spec)
    net.sync_ports(ports, [_open_group([bp.port for bp in ports])])
    tap = json.loads(subprocess.run(["ip", "-j", "link", "show", ports[0].tap], capture_output=True).stdout)
    return killed, restarted, tap[0].get("master")


def test_a_running_agent_repairs_a_killed_dnsmasq_and_a_deleted_bridge(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    guest = sandbox.add_guest(_port(1))
    _restart(sandbox, _spec(), [guest])
    ports = [BoundPort(port=guest.port, tap=guest.tap, hostname="vm1")]
    killed, restarted, master = sandbox.call(
        sandbox.host, _repair_in_one_agent, sandbox.state_dir, _spec(), ports, _files(sandbox) / "dnsmasq.pid"
    )
    assert restarted != killed and _dnsmasq_pid(sandbox) == restarted
    assert master == names.bridge_name(VPC)
    _lease(sandbox, guest)
