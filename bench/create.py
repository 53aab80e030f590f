"""Create → ACTIVE and create → SSH-ready through labcloud, against raw libvirt doing the same work.

Runs a namespace-contained cloud (`labcloud up` in a fresh network namespace), then, in the same process and on
the same private libvirtd:
  * labcloud: N sequential creates with the official Huawei SDK; time from the create call to status ACTIVE
    (polled every 20 ms) and to the first SSH login (polled every 100 ms);
  * raw: `qemu-img create` of an overlay on the same cached base + `virsh define` + `virsh start` of the same
    domain XML (taken from a labcloud server, renamed, on a plain bridge with a static dnsmasq lease), then boot to
    SSH with no labcloud in the path.
Prints the medians, the ratios and the idle RSS of controller + agent; the last line is one JSON object.

    .venv/bin/python -m bench.create --runs 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from tests.e2e import journey
from tests.support import netns
from tests.support.cloud import Cloud, start_cloud
from tests.support.keys import write_keypair

RAW_BRIDGE, RAW_GATEWAY, RAW_IP, RAW_MAC = "rawbr0", "10.250.0.1", "10.250.0.10", "52:54:00:fa:00:10"


def _poll(check: Callable[[], bool], interval: float, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def _ssh_works(ns: str, ip: str, key: paramiko.PKey) -> bool:
    try:
        with netns.entered(ns):
            sock = socket.create_connection((ip, 22), timeout=1.0)
    except OSError:
        return False
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            ip,
            username="root",
            pkey=key,
            sock=sock,
            timeout=3,
            banner_timeout=3,
            auth_timeout=3,
            allow_agent=False,
            look_for_keys=False,
        )
        _, out, _ = client.exec_command("true", timeout=10)
        return out.channel.recv_exit_status() == 0
    except (OSError, paramiko.SSHException, EOFError):
        return False
    finally:
        client.close()
        sock.close()


def _new_key(workdir: Path) -> tuple[str, paramiko.PKey]:
    public, path = write_keypair(workdir / "id_ed25519")
    return public, paramiko.PKey.from_path(str(path))


def _virsh(cloud: Cloud, *argv: str) -> str:
    uri = f"qemu:///system?socket={cloud.home}/libvirt/run/libvirt-sock"
    return subprocess.run(
        ["virsh", "-q", "-c", uri, *argv], check=True, capture_output=True, text=True
    ).stdout


def bench_labcloud(cloud: Cloud, runs: int, public_key: str, key: paramiko.PKey) -> dict[str, Any]:
    ecs, vpc, ims = cloud.ecs(), cloud.vpc(), cloud.ims()
    to_active: list[float] = []
    to_ssh: list[float] = []
    domain_xml = ""
    with cloud.entered():
        journey.import_keypair(ecs, "bench", public_key)
        vpc_id, subnet_id, sg_id = journey.create_network(
            vpc, name="bench", cidr="10.60.0.0/16", subnet_cidr="10.60.1.0/24", gateway="10.60.1.1"
        )
        image_id, flavor_id = journey.small_image_id(ims), journey.smallest_flavor_id(ecs)
    for i in range(runs + 1):  # run 0 warms the agent's image cache and is not counted
        with cloud.entered():
            t0 = time.perf_counter()
            _, (server_id,) = journey.create_servers(
                ecs,
                name=f"bench-{i}",
                image_id=image_id,
                flavor_id=flavor_id,
                vpc_id=vpc_id,
                subnet_id=subnet_id,
                sg_id=sg_id,
                key_name="bench",
            )
            t_active = _poll(
                lambda sid=server_id: journey.show(ecs, sid).status in ("ACTIVE", "ERROR"),
                0.02,
                300,
                "ACTIVE",
            )
            server = journey.show(ecs, server_id)
            assert server.status == "ACTIVE", server.fault
            ip = journey.fixed_ip(server)
        t_ssh = _poll(lambda ip=ip: _ssh_works(cloud.ns, ip, key), 0.1, 300, "SSH")
        if i > 0:
            to_active.append(t_active - t0)
            to_ssh.append(t_ssh - t0)
        else:
            domain_xml = _virsh(cloud, "dumpxml", f"lc-{server_id}")
        with cloud.entered():
            assert journey.wait_job(ecs, journey.delete(ecs, [server_id])).status == "SUCCESS"
        print(f"labcloud run {i}: ACTIVE {t_active - t0:.3f} s, SSH {t_ssh - t0:.3f} s", file=sys.stderr)
    return {"to_active": to_active, "to_ssh": to_ssh, "domain_xml": domain_xml}


def _raw_domain_xml(template: str, name: str, disk: Path, seed: Path, console: Path) -> str:
    """The labcloud domain, renamed and moved onto the raw bridge: the same devices, no labcloud in the path."""
    root = ET.fromstring(template)
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    for tag in ("metadata", "seclabel"):
        for el in root.findall(tag):
            root.remove(el)
    devices = root.find("devices")
    assert devices is not None
    for d in devices.findall("disk"):
        target = d.find("target").get("dev")  # type: ignore[union-attr]
        source = d.find("source")
        assert source is not None
        source.set("file", str(disk if target == "vda" else seed))
        for backing in d.findall("backingStore"):
            d.remove(backing)
    for serial in devices.findall("serial") + devices.findall("console"):
        src = serial.find("source")
        if src is not None and src.get("path"):
            src.set("path", str(console))
    for iface in devices.findall("interface"):
        iface.find("source").set("bridge", RAW_BRIDGE)  # type: ignore[union-attr]
        iface.find("mac").set("address", RAW_MAC)  # type: ignore[union-attr]
        target = iface.find("target")
        if target is not None:
            target.set("dev", "rawtap0")
        for tag in ("alias", "address"):
            for el in iface.findall(tag):
                iface.remove(el)
    return ET.tostring(root, encoding="unicode")


def bench_raw(
    cloud: Cloud, runs: int, domain_xml: str, public_key: str, key: paramiko.PKey
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="raw-", dir=cloud.tmp))
    work.chmod(0o755)
    base = next((Path(cloud.home) / "agent" / "images").glob("*.qcow2"))
    (work / "meta-data").write_text("instance-id: raw-bench\nlocal-hostname: raw\n")
    (work / "user-data").write_text(f"#cloud-config\nssh_authorized_keys:\n  - {public_key}\n")
    seed = work / "seed.iso"
    subprocess.run(
        [
            "genisoimage",
            "-quiet",
            "-output",
            str(seed),
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            str(work / "user-data"),
            str(work / "meta-data"),
        ],
        check=True,
    )
    ns = ["ip", "netns", "exec", cloud.ns]
    subprocess.run([*ns, "ip", "link", "add", RAW_BRIDGE, "type", "bridge"], check=True)
    subprocess.run([*ns, "ip", "addr", "add", f"{RAW_GATEWAY}/24", "dev", RAW_BRIDGE], check=True)
    subprocess.run([*ns, "ip", "link", "set", RAW_BRIDGE, "up"], check=True)
    dnsmasq = subprocess.Popen(
        [
            *ns,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            f"--interface={RAW_BRIDGE}",
            "--except-interface=lo",
            f"--dhcp-range={RAW_IP},static,255.255.255.0,infinite",
            f"--dhcp-host={RAW_MAC},{RAW_IP},raw",
            f"--dhcp-leasefile={work / 'leases'}",
        ]
    )
    to_running: list[float] = []
    to_ssh: list[float] = []
    try:
        for i in range(runs):
            disk = work / f"raw-{i}.qcow2"
            xml_path = work / f"raw-{i}.xml"
            xml_path.write_text(_raw_domain_xml(domain_xml, f"raw-{i}", disk, seed, work / f"raw-{i}.log"))
            t0 = time.perf_counter()
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk), "1G"],
                check=True,
            )
            _virsh(cloud, "define", str(xml_path))
            _virsh(cloud, "start", f"raw-{i}")
            t_running = time.perf_counter()
            t_ssh = _poll(lambda: _ssh_works(cloud.ns, RAW_IP, key), 0.1, 300, "raw SSH")
            to_running.append(t_running - t0)
            to_ssh.append(t_ssh - t0)
            print(f"raw run {i}: RUNNING {t_running - t0:.3f} s, SSH {t_ssh - t0:.3f} s", file=sys.stderr)
            _virsh(cloud, "destroy", f"raw-{i}")
            _virsh(cloud, "undefine", f"raw-{i}")
            disk.unlink()
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(timeout=10)
        subprocess.run([*ns, "ip", "link", "del", RAW_BRIDGE], check=False)
    return {"to_running": to_running, "to_ssh": to_ssh}


def idle_rss_mib(cloud: Cloud) -> dict[str, float]:
    rss: dict[str, float] = {}
    for name in ("controller", "agent"):
        pid = int((Path(cloud.home) / "run" / f"{name}.pid").read_text().split()[0])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss[name] = int(line.split()[1]) / 1024
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cloud = start_cloud()
    try:
        time.sleep(5)
        rss = idle_rss_mib(cloud)
        public_key, key = _new_key(Path(cloud.tmp))
        lab = bench_labcloud(cloud, args.runs, public_key, key)
        rss_after = idle_rss_mib(cloud)
        raw = bench_raw(cloud, args.runs, lab["domain_xml"], public_key, key)
    finally:
        problems = cloud.close()
        if problems:
            print("cleanup problems: " + "; ".join(problems), file=sys.stderr)
    med = statistics.median
    result = {
        "runs": args.runs,
        "labcloud_to_active_s": round(med(lab["to_active"]), 3),
        "raw_to_running_s": round(med(raw["to_running"]), 3),
        "labcloud_to_ssh_s": round(med(lab["to_ssh"]), 3),
        "raw_to_ssh_s": round(med(raw["to_ssh"]), 3),
        "idle_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "idle_rss_total_mib": round(sum(rss.values()), 1),
        "rss_after_workload_total_mib": round(sum(rss_after.values()), 1),
    }
    result["ratio_active_vs_raw_running"] = round(
        result["labcloud_to_active_s"] / result["raw_to_running_s"], 2
    )
    result["ratio_ssh_vs_raw_ssh"] = round(result["labcloud_to_ssh_s"] / result["raw_to_ssh_s"], 2)
    print(
        f"create → ACTIVE (median of {args.runs}): labcloud {result['labcloud_to_active_s']:.3f} s, raw "
        f"qemu-img + virsh define/start {result['raw_to_running_s']:.3f} s, "
        f"ratio {result['ratio_active_vs_raw_running']:.2f} (bar ≤ 1.3)"
    )
    print(
        f"create → SSH ready: labcloud {result['labcloud_to_ssh_s']:.3f} s, raw {result['raw_to_ssh_s']:.3f} s, "
        f"ratio {result['ratio_ssh_vs_raw_ssh']:.2f} (bar ≤ 1.2)"
    )
    print(
        f"idle RSS: controller {rss.get('controller', 0):.1f} MiB + agent {rss.get('agent', 0):.1f} MiB = "
        f"{result['idle_rss_total_mib']:.1f} MiB (bar ≤ 150); "
        f"{result['rss_after_workload_total_mib']:.1f} MiB right after the creates and deletes"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
