"""Port wiring and rule changes on a busy host: 200 ports and 1,000 security-group rules in place.

Everything runs inside a fresh network namespace (the bench re-executes itself there with `ip netns exec`) with
the agent's real `HostNetwork`: one VPC (bridge, router namespace, dnsmasq), 200 guest ports (veth "taps" on
the bridge), 10 security groups of 100 rules each, every port in one group. Each group's rules are in the
kernel once (its `lcgi-`/`lcge-` chains), so it holds about 4,200 iptables rules rather than 200 x 100.
The namespace has an underlay address (a veth, MTU 1550), so every VPC is a VXLAN overlay flooding to
two peer hosts, as on a multi-host cloud.
Measured, each as the median of `--runs`:

* wire one more port: its tap on the bridge, then `sync_ports` (its two iptables chains and dispatch lines,
  ipsets, its nft anti-spoofing chain and map element, the DHCP host entry, SIGHUP to dnsmasq);
* one rule change: a rule added to (then removed from) one group, then `sync_ports`;
* the first port of a VPC new on this host: the VPC's bridge, router namespace, dnsmasq and VXLAN port with its
  flood list (`ensure_network`), then the port's tap and `sync_ports` (the per-VPC part of wiring a port);
* the raw baseline, in the same run: `iptables-restore --noflush` of the very rule set labcloud wants after
  the change (every labcloud chain declared and refilled), i.e. loading the rule set with no bookkeeping.

    sudo .venv/bin/python -m bench.ports --runs 5

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.net import names, rules
from agent.net.network import HostNetwork
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, OverlaySpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec
from bench.support import median

VPC = "0b000000-0000-4000-8000-00000000be01"
SUBNET = "5b000000-0000-4000-8000-00000000be01"
GROUPS = 10
UNDERLAY_DEV, UNDERLAY_IP, PEERS = "ul0", "10.255.0.1", ["10.255.0.2", "10.255.0.3"]
RULES_PER_GROUP = 100


def _port(n: int) -> BoundPort:
    port = PortSpec(
        id=f"7c{n:06x}-0000-4000-8000-{n:012x}",
        mac=f"fa:16:3e:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
        ip=f"10.30.{n // 250}.{n % 250 + 2}",
        subnet_id=SUBNET,
        vpc_id=VPC,
        security_group_ids=[_group_id(n % GROUPS)],
    )
    return BoundPort(port=port, tap=names.tap_name(port.id), hostname=f"vm{n}")


def _group_id(g: int) -> str:
    return f"6e{g:06x}-0000-4000-8000-{g:012x}"


def _groups(ports: list[BoundPort], extra_rule: bool = False) -> list[SecurityGroupSpec]:
    groups = []
    for g in range(GROUPS):
        rules_ = [RuleSpec(id=f"g{g}-out", direction="egress")]
        rules_ += [
            RuleSpec(
                id=f"g{g}-r{r}",
                direction="ingress",
                protocol="tcp" if r % 2 else "udp",
                port_range_min=1000 + r,
                port_range_max=1000 + r + (r % 5),
                remote_ip_prefix=f"192.0.{r}.0/24" if r % 3 else None,
                remote_group_id=_group_id((g + 1) % GROUPS) if r % 3 == 0 else None,
            )
            for r in range(RULES_PER_GROUP - 1)
        ]
        if extra_rule and g == 0:
            rules_.append(RuleSpec(id="extra", direction="ingress", protocol="tcp", port_range_min=9999))
        members = [bp.port.ip for bp in ports if bp.port.security_group_ids == [_group_id(g)]]
        groups.append(SecurityGroupSpec(id=_group_id(g), rules=rules_, member_ips=members))
    return groups


def _spec(vpc_id: str = VPC, vni: int = 4242) -> NetworkSpec:
    subnet = SubnetSpec(id=SUBNET, cidr="10.30.0.0/16", gateway_ip="10.30.0.1")
    overlay = OverlaySpec(version=1, peers=PEERS)
    return NetworkSpec(vpc_id=vpc_id, vni=vni, cidr="10.30.0.0/16", subnets=[subnet], overlay=overlay)


def _new_vpc_port(run: int) -> tuple[NetworkSpec, BoundPort]:
    """A VPC this host has not seen (with the same CIDR: VPCs may overlap) and its first port."""
    spec = _spec(f"0c{run:06x}-0000-4000-8000-{run:012x}", 5000 + run)
    bp = _port(100_000 + run)
    port = bp.port.model_copy(update={"vpc_id": spec.vpc_id, "ip": "10.30.0.2"})
    return spec, BoundPort(port=port, tap=bp.tap, hostname=f"new{run}")


def _add_underlay() -> None:
    """The host's underlay (VTEP) address: a veth (this kernel has no dummy devices) stands for the NIC."""
    argv = [
        "ip",
        "link",
        "add",
        UNDERLAY_DEV,
        "mtu",
        "1550",
        "type",
        "veth",
        "peer",
        "name",
        UNDERLAY_DEV + "p",
    ]
    subprocess.run(argv, check=True)
    subprocess.run(["ip", "addr", "add", f"{UNDERLAY_IP}/24", "dev", UNDERLAY_DEV], check=True)
    subprocess.run(["ip", "link", "set", UNDERLAY_DEV, "up"], check=True)


def _add_tap(bp: BoundPort) -> None:
    """What libvirt does for a guest NIC: a tap (here a veth) enslaved to its VPC's bridge and up."""
    bridge = names.bridge_name(bp.port.vpc_id)
    subprocess.run(
        ["ip", "link", "add", bp.tap, "type", "veth", "peer", "name", "p" + bp.tap[3:]], check=True
    )
    subprocess.run(["ip", "link", "set", bp.tap, "master", bridge, "up"], check=True)


def _del_tap(bp: BoundPort) -> None:
    subprocess.run(["ip", "link", "del", bp.tap], check=True)


def inside(state_dir: Path, ports_count: int, runs: int) -> dict[str, Any]:
    """The measurements; runs in the bench's own network namespace."""
    _add_underlay()
    net = HostNetwork(state_dir, underlay_ip=UNDERLAY_IP)
    net.check()
    net.ensure_network(_spec())
    ports = [_port(n) for n in range(ports_count)]
    for bp in ports:
        _add_tap(bp)
    t0 = time.perf_counter()
    net.sync_ports(ports, _groups(ports))
    initial = time.perf_counter() - t0
    iptables_rules = sum(
        1
        for line in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith("-A ")
    )

    wire, rule_change, raw, new_vpc, new_vpc_network = [], [], [], [], []
    for run in range(runs):
        extra = _port(ports_count + run)
        with_extra = _groups([*ports, extra])  # the model the controller would send: not timed
        t0 = time.perf_counter()
        _add_tap(extra)
        net.sync_ports([*ports, extra], with_extra)
        wire.append(time.perf_counter() - t0)
        _del_tap(extra)
        net.sync_ports(ports, _groups(ports))

        changed = _groups(ports, extra_rule=run % 2 == 0)
        t0 = time.perf_counter()
        net.sync_ports(ports, changed)
        rule_change.append(time.perf_counter() - t0)

        # Raw: the same desired chains loaded with one iptables-restore, no reading, no comparing.
        desired = rules.render_ruleset(ports, changed)
        current = rules.parse_iptables_save(
            subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
        )
        # Every labcloud chain declared and refilled: the whole rule set, as a plain restore would load it.
        text = rules.render_restore(desired.chains, rules.FilterState(chains={}, forward=current.forward))
        t0 = time.perf_counter()
        subprocess.run(["iptables-restore", "-w", "--noflush"], input=text, text=True, check=True)
        raw.append(time.perf_counter() - t0)

        spec, first = _new_vpc_port(run)
        t0 = time.perf_counter()
        net.ensure_network(spec)
        new_vpc_network.append(time.perf_counter() - t0)
        _add_tap(first)
        net.sync_ports([*ports, first], _groups([*ports, first]))
        new_vpc.append(time.perf_counter() - t0)
        _del_tap(first)
        net.sync_ports(ports, _groups(ports))
        net.delete_network(spec.vpc_id)
    net.teardown_all()
    return {
        "ports": ports_count,
        "model_rules": GROUPS * RULES_PER_GROUP,
        "iptables_rules": iptables_rules,
        "runs": runs,
        "initial_sync_s": round(initial, 3),
        "wire_port_s": round(median(wire), 4),
        "rule_change_s": round(median(rule_change), 4),
        "raw_iptables_restore_s": round(median(raw), 4),
        "first_port_of_new_vpc_s": round(median(new_vpc), 4),
        "new_vpc_network_s": round(median(new_vpc_network), 4),
    }


def _kill_namespace(ns: str) -> None:
    path = Path("/run/netns") / ns
    if not path.exists():
        return
    inode = path.stat().st_ino
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue
    subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ports", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)  # the re-executed half
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.inside:
        print(json.dumps(inside(args.inside, args.ports, args.runs)))
        return

    ns = "lcbench-ports-" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="lcbench-ports-", dir="/tmp"))
    work.chmod(0o755)  # dnsmasq runs as nobody and reads its files here
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        argv = [sys.executable, "-m", "bench.ports", "--inside", str(work / "state")]
        argv += ["--ports", str(args.ports), "--runs", str(args.runs)]
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"bench failed inside {ns}:\n{done.stderr}")
        result = json.loads(done.stdout.splitlines()[-1])
    finally:
        _kill_namespace(ns)  # router holders and dnsmasq left by a failed run die with the namespace
        shutil.rmtree(work, ignore_errors=True)
    result["ratio_wire_vs_raw"] = round(result["wire_port_s"] / result["raw_iptables_restore_s"], 2)
    result["ratio_rule_change_vs_raw"] = round(result["rule_change_s"] / result["raw_iptables_restore_s"], 2)
    result["ratio_new_vpc_port_vs_raw"] = round(
        result["first_port_of_new_vpc_s"] / result["raw_iptables_restore_s"], 2
    )
    print(
        f"{result['ports']} ports, {result['model_rules']} security-group rules "
        f"({result['iptables_rules']} iptables rules in the kernel); median of {result['runs']}:"
    )
    print(f"  wire one more port (tap + sync_ports): {result['wire_port_s']:.3f} s")
    print(f"  one rule change (sync_ports):          {result['rule_change_s']:.3f} s")
    print(
        f"  first port of a VPC new on the host:   {result['first_port_of_new_vpc_s']:.3f} s "
        f"(of which the VPC's bridge, router, dnsmasq, VXLAN: {result['new_vpc_network_s']:.3f} s)"
    )
    print(f"  raw iptables-restore of the same set:  {result['raw_iptables_restore_s']:.3f} s")
    print(
        f"  ratio wire/raw {result['ratio_wire_vs_raw']}, rule change/raw {result['ratio_rule_change_vs_raw']}, "
        f"new VPC's first port/raw {result['ratio_new_vpc_port_vs_raw']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
