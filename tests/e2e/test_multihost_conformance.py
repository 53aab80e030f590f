"""Cross-host conformance in the two-host lab: security groups between real TCG guests on different hosts, and
the overlay healing itself after a host's agent was killed.

Placement is forced by zone (h1 is lab-1a, h2 lab-1b). Three guests in VPC 10.43.0.0/16:

    a (h1): default, ssh, web      web: ingress tcp 5000 from members of `clients`
    b (h2): default, ssh           default: all egress, ingress from default members
    c (h2): ssh, clients, out      ssh: ingress tcp 22 from anywhere, no egress; clients: no rules at all;
                                   out: egress tcp 5000-5001 only (tcp 22 added later)

Connectivity is busybox `nc` inside the guests over SSH. A blocked path is measured (nc gave up after its 5 s
connect timeout, the listener got nothing) and paired with a working control on the same path. Other oracles:
`ipset list` in h1 (remote-group members), `bridge -j fdb` and `ip -j -d link` (the VXLAN flood list), and the
controller's log (a stale overlay view repaired by the reconciler).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    CreateServersRequest,
    CreateServersRequestBody,
    NovaAddSecurityGroupOption,
    NovaAssociateSecurityGroupRequest,
    NovaAssociateSecurityGroupRequestBody,
    NovaDisassociateSecurityGroupRequest,
    NovaDisassociateSecurityGroupRequestBody,
    NovaRemoveSecurityGroupOption,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
    PrePaidServerSecurityGroup,
)
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    DeleteSecurityGroupRuleRequest,
    ListSecurityGroupsRequest,
    ShowSecurityGroupRequest,
)

from agent.net import names
from controller.cli.home import Home
from tests.e2e import journey
from tests.support import ssh
from tests.support.lab import Lab

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.netns,
    pytest.mark.filterwarnings("ignore:Method 'nova_:DeprecationWarning"),  # the SDK's Nova calls
]

SSH_WAIT_S = 420.0
JOB_WAIT_S = 900.0
CONVERGE_S = 180.0  # generous: a loaded machine; the figures are printed
CONNECT_TIMEOUT_S = 5  # busybox nc -w
H1_VTEP, H2_VTEP = "10.254.0.11", "10.254.0.12"
figures: dict[str, float] = {}


@dataclass(frozen=True)
class Attempt:
    rc: int
    seconds: int  # measured inside the guest
    output: str

    @property
    def timed_out(self) -> bool:
        """Refused by a filter (nc waited out its connect timeout), not reset by a closed port."""
        return self.rc != 0 and self.seconds >= CONNECT_TIMEOUT_S - 1


class Guest:
    """A booted guest reached over SSH from its VPC's router namespace on its host."""

    def __init__(self, lab: Lab, name: str, host: str, vpc_id: str, ip: str, key: Path) -> None:
        self.lab, self.name, self.host, self.vpc_id, self.ip, self.key = lab, name, host, vpc_id, ip, key

    def run(self, command: str) -> str:
        # Looked up on each call: the router namespace's holder may be replaced if the router is rebuilt.
        via = self.lab.router_netns(self.host, self.vpc_id)
        client = ssh.wait_for_ssh(via, self.ip, self.key, timeout=SSH_WAIT_S)
        try:
            done = ssh.run(client, command)
        finally:
            client.close()
        assert done.exit_status == 0, (self.name, command, done)
        return done.stdout

    def serve(self, port: int, reply: str) -> None:
        """A one-shot busybox nc listener that answers `reply` and keeps what it got in /tmp/got-<port>."""
        out = self.run(
            f"kill $(cat /tmp/nc-{port}.pid 2>/dev/null) 2>/dev/null; rm -f /tmp/got-{port}; "
            f"(echo {reply} | nc -l -p {port} > /tmp/got-{port} 2>/dev/null & echo $! > /tmp/nc-{port}.pid); "
            "echo ok"
        )
        assert out.strip() == "ok", out

    def received(self, port: int) -> str:
        return self.run(f"cat /tmp/got-{port} 2>/dev/null || true").strip()

    def connect(self, ip: str, port: int, text: str | None = "ping", tries: int = 1) -> Attempt:
        """`nc -w 5` to ip:port from inside the guest, sending `text` (None: nothing); what came back."""
        feed = f"echo {text} |" if text is not None else ""
        close = "" if text is not None else "</dev/null"
        loop = (
            f"for i in $(seq {tries}); do s=$(date +%s); out=$({feed} nc -w {CONNECT_TIMEOUT_S} {ip} {port} "
            f"{close} 2>/dev/null); rc=$?; [ $rc = 0 ] && break; sleep 2; done; "
            # The first line only, printable: an SSH server follows its banner with binary key exchange.
            "out=$(printf '%s\\n' \"$out\" | head -n 1 | tr -cd 'A-Za-z0-9._-'); "
            'echo "rc=$rc dt=$(( $(date +%s) - s )) out=$out"'
        )
        line = self.run(loop).strip().splitlines()[-1]
        found = re.fullmatch(r"rc=(\d+) dt=(\d+) out=(.*)", line)
        assert found, line
        return Attempt(int(found[1]), int(found[2]), found[3])


def _eventually(check: Any, what: str, timeout: float = CONVERGE_S, lab: Lab | None = None) -> float:
    """Poll `check` until true; the seconds it took. With `lab`, a timeout shows the tail of h1's agent log."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            log = ""
            if lab is not None:
                lines = Home(lab.home_of("h1")).log_file("agent").read_text(errors="replace").splitlines()
                log = "\nh1 agent log:\n" + "\n".join(lines[-60:])
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{log}")
        time.sleep(0.5)
    return time.monotonic() - start


def _group(vpc: Any, name: str, rules: list[dict[str, Any]]) -> str:
    """A security group with exactly `rules` (its starting rules removed)."""
    option = CreateSecurityGroupOption(name=name)
    sg_id = str(
        vpc.create_security_group(
            CreateSecurityGroupRequest(body=CreateSecurityGroupRequestBody(security_group=option))
        ).security_group.id
    )
    shown = vpc.show_security_group(ShowSecurityGroupRequest(security_group_id=sg_id)).security_group
    for rule in shown.security_group_rules:
        vpc.delete_security_group_rule(DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id))
    for rule in rules:
        _rule(vpc, sg_id, **rule)
    return sg_id


def _rule(vpc: Any, sg_id: str, **fields: Any) -> None:
    option = CreateSecurityGroupRuleOption(
        security_group_id=sg_id, ethertype="IPv4", protocol="tcp", **fields
    )
    vpc.create_security_group_rule(
        CreateSecurityGroupRuleRequest(body=CreateSecurityGroupRuleRequestBody(security_group_rule=option))
    )


def _create(
    ecs: Any, name: str, zone: str, vpc_id: str, subnet_id: str, groups: list[str], refs: dict[str, str]
) -> str:
    server = PrePaidServer(
        image_ref=refs["image"],
        flavor_ref=refs["flavor"],
        name=name,
        vpcid=vpc_id,
        nics=[PrePaidServerNic(subnet_id=subnet_id)],
        root_volume=PrePaidServerRootVolume(volumetype="SATA"),
        security_groups=[PrePaidServerSecurityGroup(id=g) for g in groups],
        key_name="conf-key",
        availability_zone=zone,
    )
    return str(ecs.create_servers(CreateServersRequest(body=CreateServersRequestBody(server=server))).job_id)


def _add_group(ecs: Any, server_id: str, name: str) -> None:
    body = NovaAssociateSecurityGroupRequestBody(add_security_group=NovaAddSecurityGroupOption(name=name))
    ecs.nova_associate_security_group(NovaAssociateSecurityGroupRequest(server_id=server_id, body=body))


def _remove_group(ecs: Any, server_id: str, name: str) -> None:
    body = NovaDisassociateSecurityGroupRequestBody(
        remove_security_group=NovaRemoveSecurityGroupOption(name=name)
    )
    ecs.nova_disassociate_security_group(NovaDisassociateSecurityGroupRequest(server_id=server_id, body=body))


def _members(lab: Lab, member: str, group_id: str) -> set[str]:
    """The addresses in a group's ipset on a host (`ipset list`), empty if the host has no such set."""
    done = subprocess.run(
        ["ip", "netns", "exec", lab.ns(member), "ipset", "list", names.group_set(group_id)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return set()
    listed = done.stdout.partition("Members:")[2].split()
    return {entry.split("/")[0] for entry in listed}


def _flood(lab: Lab, member: str, vpc_id: str) -> set[str] | None:
    """The VXLAN flood list of the VPC on a host (`bridge fdb`); None if the VXLAN device is missing."""
    device = names.vxlan_name(vpc_id)
    done = subprocess.run(
        ["ip", "netns", "exec", lab.ns(member), "bridge", "-j", "fdb", "show", "dev", device],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return {e["dst"] for e in json.loads(done.stdout or "[]") if e["mac"] == "00:00:00:00:00:00"}


def _vxlan_vni(lab: Lab, member: str, vpc_id: str) -> int | None:
    links = lab.ip_json(member, "-d", "link", "show", "type", "vxlan")
    for link in links:
        if link["ifname"] == names.vxlan_name(vpc_id):
            return int(link["linkinfo"]["info_data"]["id"])
    return None


def _controller_log(lab: Lab) -> Path:
    return Home(lab.home_of("ctl")).log_file("controller")


def _controller_log_since(lab: Lab, since: int) -> str:
    with _controller_log(lab).open("rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


def test_security_groups_across_hosts_and_overlay_healing(lab: Lab, keypair: tuple[str, Path]) -> None:
    public_key, key = keypair
    ecs, vpc = lab.ecs(), lab.vpc()
    journey.import_keypair(ecs, "conf-key", public_key)
    red, red_1, _ = journey.create_network(
        vpc, name="red", cidr="10.43.0.0/16", subnet_cidr="10.43.1.0/24", gateway="10.43.1.1"
    )
    default = next(
        g.id
        for g in vpc.list_security_groups(ListSecurityGroupsRequest()).security_groups
        if g.name == "default"
    )
    anywhere = "0.0.0.0/0"
    ssh_sg = _group(
        vpc,
        "conf-ssh",
        [dict(direction="ingress", port_range_min=22, port_range_max=22, remote_ip_prefix=anywhere)],
    )
    clients = _group(vpc, "clients", [])
    web = _group(
        vpc,
        "web",
        [dict(direction="ingress", port_range_min=5000, port_range_max=5000, remote_group_id=clients)],
    )
    out = _group(
        vpc,
        "out",
        [dict(direction="egress", port_range_min=5000, port_range_max=5001, remote_ip_prefix="10.43.0.0/16")],
    )
    refs = {"image": journey.small_image_id(lab.ims()), "flavor": journey.smallest_flavor_id(ecs)}
    plan = {
        "a": ("lab-1a", [default, ssh_sg, web]),
        "b": ("lab-1b", [default, ssh_sg]),
        "c": ("lab-1b", [ssh_sg, clients, out]),
    }
    jobs = {name: _create(ecs, name, zone, red, red_1, groups, refs) for name, (zone, groups) in plan.items()}
    ids: dict[str, str] = {}
    for name, job_id in jobs.items():
        job = journey.wait_job(ecs, job_id, timeout=JOB_WAIT_S)
        assert job.status == "SUCCESS", job
        ids[name] = job.entities.sub_jobs[0].entities.server_id
    shown = {name: journey.show(ecs, sid) for name, sid in ids.items()}
    assert {n: s.os_ext_srv_att_rhost for n, s in shown.items()} == {"a": "h1", "b": "h2", "c": "h2"}
    ips = {name: journey.fixed_ip(s) for name, s in shown.items()}
    a, b, c = (Guest(lab, n, shown[n].os_ext_srv_att_rhost, red, ips[n], key) for n in ("a", "b", "c"))
    for guest in (a, b, c):
        assert guest.run("hostname").strip() == guest.name

    # Remote-group membership as h1 (a's host) holds it: ipsets fed by the controller.
    assert _members(lab, "h1", clients) == {ips["c"]}
    assert _members(lab, "h1", default) == {ips["a"], ips["b"]}

    # Default group across hosts: c (not a member) is dropped on its way to a:5001, b (a member) gets through
    # on the same one-shot listener afterwards, so c's attempt did not reach it either.
    a.serve(5001, "pong-5001")
    blocked = c.connect(ips["a"], 5001)
    assert blocked.timed_out, blocked
    passed = b.connect(ips["a"], 5001, text="from-b", tries=3)
    assert passed.rc == 0 and passed.output == "pong-5001", passed
    _eventually(lambda: a.received(5001) == "from-b", "a to get b's message")

    # remote_group_id across hosts, and stateful return traffic: c's own ingress admits only tcp 22, so a's
    # answer reaches c only as the reply of c's connection (conntrack), back through the tunnel.
    a.serve(5000, "pong-5000")
    reply = c.connect(ips["a"], 5000, text="from-c", tries=3)
    assert reply.rc == 0 and reply.output == "pong-5000", reply
    _eventually(lambda: a.received(5000) == "from-c", "a to get c's message")

    # Egress across hosts: a admits tcp 22 from anywhere (b reads its SSH banner), c's egress does not allow
    # it until a rule says so.
    assert b.connect(ips["a"], 22, text=None, tries=3).output.startswith("SSH-")
    egress = c.connect(ips["a"], 22, text=None)
    assert egress.timed_out, egress
    _rule(vpc, out, direction="egress", port_range_min=22, port_range_max=22, remote_ip_prefix="10.43.0.0/16")
    figures["egress rule -> c reads a's banner (s)"] = _eventually(
        lambda: c.connect(ips["a"], 22, text=None).output.startswith("SSH-"), "c's new egress rule to apply"
    )

    # c leaves `clients`: h1 drops it from the ipset, and its new connections to a:5000 are dropped, while the
    # same path (c -> a, across the tunnel) still carries tcp 22.
    start = time.monotonic()
    _remove_group(ecs, ids["c"], "clients")
    _eventually(lambda: ips["c"] not in _members(lab, "h1", clients), "h1 to drop c from the clients ipset")
    figures["removeSecurityGroup call -> h1 ipset without c (s)"] = time.monotonic() - start
    a.serve(5000, "pong-5000")
    refused = c.connect(ips["a"], 5000, text="late")
    assert refused.timed_out, refused
    assert a.received(5000) == ""
    assert c.connect(ips["a"], 22, text=None, tries=3).output.startswith("SSH-")
    # ... and back in: admitted again.
    _add_group(ecs, ids["c"], "clients")
    _eventually(lambda: _members(lab, "h1", clients) == {ips["c"]}, "h1 to add c to the clients ipset again")
    again = c.connect(ips["a"], 5000, text="again", tries=3)
    assert again.rc == 0 and again.output == "pong-5000", again

    # c deleted: h1 forgets it.
    job = journey.wait_job(ecs, journey.delete(ecs, [ids["c"]]), timeout=JOB_WAIT_S)
    assert job.status == "SUCCESS", job
    _eventually(
        lambda: _members(lab, "h1", clients) == set(), "h1 to drop the deleted c from the clients ipset"
    )

    # Agent restart: h1's agent is killed, its VXLAN device deleted behind its back; the restarted agent
    # rebuilds it from its stored state (the VNI, the flood list) and b reaches a again.
    vni = _vxlan_vni(lab, "h1", red)
    assert vni is not None and _flood(lab, "h1", red) == {H2_VTEP}
    lab.kill_agent("h1")
    lab.sh("h1", "ip", "link", "del", names.vxlan_name(red))
    assert _flood(lab, "h1", red) is None
    lab.start_agent("h1")
    figures["agent restart -> h1 VXLAN rebuilt (s)"] = _eventually(
        lambda: _flood(lab, "h1", red) == {H2_VTEP}, "the restarted agent to rebuild h1's VXLAN port", lab=lab
    )
    assert _vxlan_vni(lab, "h1", red) == vni
    a.serve(5001, "pong-5001")
    back = b.connect(ips["a"], 5001, text="after-restart", tries=5)
    assert back.rc == 0 and back.output == "pong-5001", back

    # A missed push: h1's agent is down while b, h2's last port in the VPC, goes away; the restarted agent
    # comes back flooding to h2 from its stored view, until the reconciler sees its stale digest and pushes.
    lab.kill_agent("h1")
    job = journey.wait_job(ecs, journey.delete(ecs, [ids["b"]]), timeout=JOB_WAIT_S)
    assert job.status == "SUCCESS", job
    assert _flood(lab, "h1", red) == {H2_VTEP}  # nobody told h1
    log_size = _controller_log(lab).stat().st_size
    lab.start_agent("h1")
    started = time.monotonic()
    samples: list[tuple[float, list[str] | None]] = []

    def repaired() -> bool:
        flood = _flood(lab, "h1", red)
        samples.append((round(time.monotonic() - started, 1), None if flood is None else sorted(flood)))
        logged = f"vpc {red}: host h1 had a stale overlay view" in _controller_log_since(lab, log_size)
        return logged and flood == set()

    figures["agent back -> stale flood list repaired (s)"] = _eventually(
        repaired, "the reconciler to repair h1's stale flood list", lab=lab
    )
    print("h1 flood list after the restart (s, peers):", samples)
    assert [H2_VTEP] in [peers for _, peers in samples], "h1 never came back with its stale view"
    # h2 keeps the VPC's network a while with no port left in it, and missed its push too: it floods to nobody.
    _eventually(lambda: _flood(lab, "h2", red) in (set(), None), "h2 to stop flooding the VPC to h1")

    job = journey.wait_job(ecs, journey.delete(ecs, [ids["a"]]), timeout=JOB_WAIT_S)
    assert job.status == "SUCCESS", job
    print("cross-host conformance figures:", json.dumps(figures, indent=1))
