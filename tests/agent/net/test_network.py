"""HostNetwork plumbing in a real simulated host namespace, checked with `ip -j`, /proc and state files."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.errors import NetworkError
from agent.net import names
from agent.net.network import HostNetwork, NullNetwork
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, SubnetSpec

from .helpers import Sandbox, kill_all, netns_inode, pids_in_netns, wait_until

VPC = "0a1b2c3d-0000-4000-8000-000000000001"
VPC2 = "0b2c3d4e-0000-4000-8000-000000000002"
SUB1 = "5b000000-0000-4000-8000-000000000001"
SUB2 = "5b200000-0000-4000-8000-000000000002"


def _spec(
    vpc_id: str = VPC, *, sub1: bool = True, sub2: bool = False, cidr: str = "10.20.0.0/16"
) -> NetworkSpec:
    base = cidr.split(".")[1]
    subnets = []
    if sub1:
        subnets.append(SubnetSpec(id=SUB1, cidr=f"10.{base}.1.0/24", gateway_ip=f"10.{base}.1.1", mtu=1400))
    if sub2:
        subnets.append(SubnetSpec(id=SUB2, cidr=f"10.{base}.2.0/24", gateway_ip=f"10.{base}.2.254"))
    return NetworkSpec(vpc_id=vpc_id, vni=100, cidr=cidr, subnets=subnets)


def _links(box: Sandbox, ns: str) -> dict[str, Any]:
    return {link["ifname"]: link for link in box.ip_json(ns, "-d", "link", "show")}


def _inet(entries: list[dict[str, Any]], ifname: str) -> set[str]:
    for entry in entries:
        if entry["ifname"] == ifname:
            return {f"{a['local']}/{a['prefixlen']}" for a in entry["addr_info"] if a["family"] == "inet"}
    raise AssertionError(f"{ifname} not found")


def _dnsmasq_pid(box: Sandbox, vpc_id: str) -> int | None:
    pid_file = box.state_dir / "net" / vpc_id / "dnsmasq.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    return pid if netns_inode(pid) is not None else None


def _snapshot(box: Sandbox, vpc_id: str) -> dict[str, Any]:
    """The stable facts about one VPC's kernel objects and processes (no timers, counters or other VPCs)."""
    own = {names.bridge_name(vpc_id), names.router_port_name(vpc_id), names.host_uplink_name(vpc_id)}
    router_pid = box.record(vpc_id)["router"]["pid"]
    links = [
        (link["ifname"], link["ifindex"], link["linkinfo"]["info_kind"], link.get("master"), link["address"])
        for link in box.ip_json(box.host, "-d", "link", "show")
        if link["ifname"] in own
    ]
    return {
        "host_links": links,
        "host_addr": {name: _inet(box.ip_json(box.host, "addr", "show"), name) for name in sorted(own)},
        "host_routes": [r for r in box.ip_json(box.host, "route", "show") if r["dev"] in own],
        "router_addr": box.router_ip_json(router_pid, "addr", "show"),
        "router_routes": box.router_ip_json(router_pid, "route", "show"),
        "record": box.record(vpc_id),
        "dnsmasq": _dnsmasq_pid(box, vpc_id),
    }


@pytest.mark.netns
def test_ensure_network_builds_bridge_router_dhcp_and_routes(sandbox: Sandbox) -> None:
    root_links_before = {link["ifname"] for link in _root_links()}
    sandbox.net("ensure_network", _spec(sub2=True))

    links = _links(sandbox, sandbox.host)
    bridge, port, uplink = names.bridge_name(VPC), names.router_port_name(VPC), names.host_uplink_name(VPC)
    assert links[bridge]["linkinfo"]["info_kind"] == "bridge"
    assert links[bridge]["linkinfo"]["info_data"]["nf_call_iptables"] == 1
    assert links[port]["linkinfo"]["info_kind"] == "veth"
    assert links[port]["master"] == bridge
    assert "master" not in links[uplink]
    addrs = sandbox.ip_json(sandbox.host, "addr", "show")
    assert _inet(addrs, bridge) == set()  # an IP on the bridge would bypass the physdev rules
    assert _inet(addrs, uplink) == {"169.254.0.1/32"}
    # Nothing private-range in the host namespace: only loopback and link-local.
    for entry in addrs:
        for addr in entry["addr_info"]:
            ip = ipaddress.ip_address(addr["local"])
            assert ip.is_loopback or ip.is_link_local, addr
    routes = sandbox.ip_json(sandbox.host, "route", "show")
    assert [(r["dst"], r.get("gateway"), r["dev"], "onlink" in r["flags"]) for r in routes] == [
        ("10.20.0.0/16", "169.254.0.2", uplink, True)
    ]

    record = sandbox.record(VPC)
    holder = record["router"]["pid"]
    assert netns_inode(holder) == record["router"]["netns_inode"] != netns_inode("self")
    router_addrs = sandbox.router_ip_json(holder, "addr", "show")
    assert _inet(router_addrs, "gw0") == {"10.20.1.1/24", "10.20.2.254/24"}
    assert _inet(router_addrs, "up0") == {"169.254.0.2/32"}
    router_routes = sandbox.router_ip_json(holder, "route", "show")
    default = [r for r in router_routes if r["dst"] == "default"]
    assert [(r["gateway"], r["dev"], r["flags"]) for r in default] == [("169.254.0.1", "up0", ["onlink"])]
    assert _router_sysctl(holder, "net.ipv4.ip_forward") == "1"

    dnsmasq = _dnsmasq_pid(sandbox, VPC)
    assert dnsmasq is not None
    assert netns_inode(dnsmasq) == record["router"]["netns_inode"]
    assert _uid(dnsmasq) == 65534  # dropped to nobody: its state files are reachable

    # The root namespace saw none of it.
    assert {link["ifname"] for link in _root_links()} == root_links_before
    assert sandbox.net("network_ids") == [VPC]


@pytest.mark.netns
def test_ensure_network_is_idempotent_across_agent_restarts(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec(sub2=True))
    before = _snapshot(sandbox, VPC)
    # Every `net` call is a new agent process: the router holder and dnsmasq are adopted, not replaced.
    sandbox.net("ensure_network", _spec(sub2=True))
    sandbox.net("ensure_network", _spec(sub2=True))
    assert _snapshot(sandbox, VPC) == before


@pytest.mark.netns
def test_subnet_changes_restart_dnsmasq_and_move_gateways(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    first = _dnsmasq_pid(sandbox, VPC)
    holder = sandbox.record(VPC)["router"]["pid"]

    sandbox.net("ensure_network", _spec(sub1=False, sub2=True))
    second = _dnsmasq_pid(sandbox, VPC)
    assert second is not None and second != first
    assert first is None or netns_inode(first) is None
    assert _inet(sandbox.router_ip_json(holder, "addr", "show"), "gw0") == {"10.20.2.254/24"}
    config = (sandbox.state_dir / "net" / VPC / "dnsmasq.conf").read_text()
    assert "10.20.2.0,static,255.255.255.0" in config and "10.20.1.0" not in config

    # No DHCP subnet left: no dnsmasq, but the router stays.
    spec = _spec(sub1=False, sub2=True)
    spec.subnets[0].dhcp_enable = False
    sandbox.net("ensure_network", spec)
    assert _dnsmasq_pid(sandbox, VPC) is None and netns_inode(second) is None
    assert sandbox.record(VPC)["router"]["pid"] == holder


@pytest.mark.netns
def test_delete_network_removes_only_that_vpc(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    sandbox.net("ensure_network", _spec(VPC2, cidr="10.30.0.0/16"))
    gone = _snapshot(sandbox, VPC)
    kept = _snapshot(sandbox, VPC2)

    sandbox.net("delete_network", VPC)
    sandbox.net("delete_network", VPC)  # idempotent

    links = _links(sandbox, sandbox.host)
    for name in (names.bridge_name(VPC), names.router_port_name(VPC), names.host_uplink_name(VPC)):
        assert name not in links
    assert netns_inode(gone["record"]["router"]["pid"]) is None
    assert netns_inode(gone["dnsmasq"]) is None
    assert not (sandbox.state_dir / "net" / VPC).exists()
    assert [r["dst"] for r in sandbox.ip_json(sandbox.host, "route", "show")] == ["10.30.0.0/16"]
    assert _snapshot(sandbox, VPC2) == kept
    assert sandbox.net("network_ids") == [VPC2]


@pytest.mark.netns
def test_a_lost_state_file_does_not_leak_the_router(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    holder = sandbox.record(VPC)["router"]["pid"]
    (sandbox.state_dir / "net" / VPC / "network.json").unlink()
    sandbox.net("ensure_network", _spec())
    assert sandbox.record(VPC)["router"]["pid"] == holder  # found again by its marker


@pytest.mark.netns
def test_a_record_pointing_at_a_foreign_process_is_not_trusted(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    holder = sandbox.record(VPC)["router"]["pid"]
    record_path = sandbox.state_dir / "net" / VPC / "network.json"
    # As after a reboot with pid reuse: the recorded pid is some unrelated live process (this test runner).
    record_path.write_text(record_path.read_text().replace(f'"pid": {holder}', f'"pid": {os.getpid()}'))
    sandbox.net("ensure_network", _spec())
    assert sandbox.record(VPC)["router"]["pid"] == holder


@pytest.mark.netns
def test_a_killed_router_is_rebuilt(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    old = _snapshot(sandbox, VPC)
    kill_all(pids_in_netns(old["record"]["router"]["netns_inode"]))  # holder and dnsmasq, as a crash would
    wait_until(lambda: names.router_port_name(VPC) not in _links(sandbox, sandbox.host), "veths to go")

    sandbox.net("ensure_network", _spec())
    new = _snapshot(sandbox, VPC)
    assert new["record"]["router"]["pid"] != old["record"]["router"]["pid"]
    assert new["dnsmasq"] is not None and new["dnsmasq"] != old["dnsmasq"]
    assert new["host_routes"] == old["host_routes"]
    assert _inet(new["router_addr"], "gw0") == {"10.20.1.1/24"}
    assert _links(sandbox, sandbox.host)[names.router_port_name(VPC)]["master"] == names.bridge_name(VPC)


@pytest.mark.netns
def test_a_dnsmasq_left_in_a_dead_routers_namespace_is_replaced(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    old = _snapshot(sandbox, VPC)
    kill_all([old["record"]["router"]["pid"]])  # only the holder: dnsmasq keeps the old namespace alive
    assert netns_inode(old["dnsmasq"]) == old["record"]["router"]["netns_inode"]

    sandbox.net("ensure_network", _spec())
    new = _snapshot(sandbox, VPC)
    assert netns_inode(old["dnsmasq"]) is None
    assert new["dnsmasq"] is not None
    assert netns_inode(new["dnsmasq"]) == new["record"]["router"]["netns_inode"]
    assert _links(sandbox, sandbox.host)[names.router_port_name(VPC)]["master"] == names.bridge_name(VPC)


@pytest.mark.netns
def test_teardown_all_leaves_no_trace(sandbox: Sandbox) -> None:
    # Somebody else's rules and sets, which teardown must leave alone.
    sandbox.sh(sandbox.host, "iptables", "-N", "OTHER")
    sandbox.sh(sandbox.host, "iptables", "-A", "FORWARD", "-j", "OTHER")
    sandbox.sh(sandbox.host, "iptables", "-A", "OTHER", "-p", "tcp", "--dport", "25", "-j", "DROP")
    sandbox.sh(sandbox.host, "ipset", "create", "other", "hash:ip")
    before = sandbox.sh(sandbox.host, "iptables-save", "-t", "filter")
    sandbox.net("ensure_network", _spec())
    sandbox.net("ensure_network", _spec(VPC2, cidr="10.30.0.0/16"))
    port = PortSpec(id="p1", mac="fa:16:3e:00:00:01", ip="10.20.1.5", subnet_id=SUB1, vpc_id=VPC)
    guest = sandbox.add_guest(port)
    sandbox.net("sync_ports", [BoundPort(port=port, tap=guest.tap, hostname="vm")], [])
    holders = [sandbox.record(v)["router"]["pid"] for v in (VPC, VPC2)]

    sandbox.net("teardown_all")

    assert not [n for n in _links(sandbox, sandbox.host) if n.startswith(("lcb", "lcr", "lch"))]
    assert all(netns_inode(pid) is None for pid in holders)
    assert "lc-" not in sandbox.sh(sandbox.host, "iptables-save")
    assert sandbox.sh(sandbox.host, "ipset", "list", "-n") == "other\n"
    assert not (sandbox.state_dir / "net").exists()
    assert sandbox.net("network_ids") == []
    after = sandbox.sh(sandbox.host, "iptables-save", "-t", "filter")
    assert _without_comments(after) == _without_comments(before)
    sandbox.net("teardown_all")  # nothing left to do is fine


@pytest.mark.netns
def test_check_turns_bridge_netfilter_on(sandbox: Sandbox) -> None:
    knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    sandbox.sh(sandbox.host, "sh", "-c", f"echo 0 > {knob}")
    sandbox.net("check")
    assert sandbox.sh(sandbox.host, "cat", knob).strip() == "1"


@pytest.mark.netns
def test_sync_ports_refuses_ports_it_cannot_wire_before_changing_anything(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    before = sandbox.sh(sandbox.host, "iptables-save", "-t", "filter")
    good = PortSpec(id="p1", mac="fa:16:3e:00:00:01", ip="10.20.1.5", subnet_id=SUB1, vpc_id=VPC)
    cases = [
        good.model_copy(update={"vpc_id": VPC2}),  # VPC not ensured here
        good.model_copy(update={"subnet_id": "nope"}),
        good.model_copy(update={"ip": "10.20.1.300"}),
        good.model_copy(update={"ip": "10.20.9.5"}),  # outside its subnet
        good.model_copy(update={"mac": "fa:16:3e:00:01"}),
    ]
    for port in cases:
        with pytest.raises(NetworkError):
            sandbox.net("sync_ports", [BoundPort(port=port, tap=names.tap_name(port.id), hostname="x")], [])
    with pytest.raises(NetworkError, match="share"):
        twin = good.model_copy(update={"id": "p1-"})  # same id11, hence same chains
        sandbox.net("sync_ports", [BoundPort(good, "lctp1", "a"), BoundPort(twin, "lctp1x", "b")], [])
    after = sandbox.sh(sandbox.host, "iptables-save", "-t", "filter")
    assert _without_comments(after) == _without_comments(before)


def test_ensure_network_validates_the_spec_before_touching_anything(tmp_path: Path) -> None:
    bad = NetworkSpec(
        vpc_id=VPC,
        vni=1,
        cidr="10.20.0.0/16",
        subnets=[SubnetSpec(id=SUB1, cidr="10.20.1.0/24", gateway_ip="10.20.9.1")],
    )
    with pytest.raises(NetworkError, match="outside subnet"):
        HostNetwork(tmp_path).ensure_network(bad)
    assert not (tmp_path / "net").exists()


def test_null_network_only_remembers_networks() -> None:
    null = NullNetwork()
    null.check()
    null.ensure_network(_spec())
    null.ensure_network(_spec(VPC2))
    null.sync_ports([], [])
    null.delete_network(VPC)
    assert null.network_ids() == [VPC2]
    null.teardown_all()
    assert null.network_ids() == []


def _root_links() -> list[dict[str, Any]]:
    return list(json.loads(subprocess.run(["ip", "-j", "link"], check=True, capture_output=True).stdout))


def _router_sysctl(pid: int, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    done = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "cat", path], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))
