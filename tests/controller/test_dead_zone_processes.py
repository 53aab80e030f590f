"""A dead availability zone, with real processes: one controller (`python -m controller`) and three agents
(`python -m agent`) whose hypervisor is simulated by libvirt's test driver, in zones lab-1a (one host) and
lab-1b (two hosts). Every agent of lab-1b is killed with SIGKILL, then started again, through the official SDK:

- the dead zone's servers are reported honestly (ERROR, fault HOST_DOWN, host_status DOWN), not ACTIVE;
- creates in lab-1a go on succeeding; a create that asks for lab-1b fails cleanly: job FAIL with "no valid
  host", no port, no spec on any host, the server's quota back once it is deleted;
- restarted agents restore their servers (the test driver forgot its domains with its process: the agent
  rebuilds them from its stored specs), and the servers come back ACTIVE.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkecs.v2 import (
    ListServerAzInfoRequest,
    PostPaidServer,
    PostPaidServerNic,
    PostPaidServerRootVolume,
    ShowServerLimitsRequest,
    ShowServerRequest,
)
from huaweicloudsdkims.v2 import ListImagesRequest

from tests.controller.api.helpers import create_subnet, create_vpc
from tests.controller.api.server_helpers import FLAVOR, create, wait_job
from tests.controller.conftest import AGENT_NODE_XML, ApiClients
from tests.e2e import journey
from tests.support.waiting import wait_for

WAIT_S = 180.0
DEAD_AFTER_S = 6.0  # host_dead_seconds: generous against a busy machine, short for the test
ZONES = {"a1": "lab-1a", "b1": "lab-1b", "b2": "lab-1b"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCLOUD_")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


@dataclass
class Daemon:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@dataclass
class Lab:
    root: Path
    controller: Daemon
    clients: ApiClients
    agents: dict[str, Daemon] = field(default_factory=dict)

    def state_dir(self, name: str) -> Path:
        return self.root / name / "state"


@pytest.fixture
def lab(tmp_path: Path, seed_image_file: Path) -> Iterator[Lab]:
    home = tmp_path / "controller"
    port = free_port()
    controller = Daemon(
        "controller",
        [sys.executable, "-m", "controller"],
        clean_env(
            LABCLOUD_HOME=str(home),
            LABCLOUD_LISTEN_PORT=str(port),
            LABCLOUD_SEED_IMAGE=str(seed_image_file),
            LABCLOUD_HOST_DEAD_SECONDS=str(DEAD_AFTER_S),
            LABCLOUD_RECONCILE_SECONDS="1",
            LABCLOUD_DEFAULT_AVAILABILITY_ZONE="lab-1a",
        ),
        tmp_path / "controller.log",
    )
    endpoint = f"http://127.0.0.1:{port}"
    daemons = [controller]
    try:
        controller.start()
        wait_for("the controller", lambda: _answers(f"{endpoint}/healthz"), timeout=WAIT_S)
        creds = json.loads((home / "credentials.json").read_text())
        token = (home / "join-token").read_text().strip()
        lab = Lab(tmp_path, controller, ApiClients(endpoint, creds["ak"], creds["sk"], creds["project_id"]))
        for name, zone in ZONES.items():
            (tmp_path / name).mkdir()
            node = tmp_path / name / "node.xml"
            node.write_text(AGENT_NODE_XML.format(cores=4, memory_kib=8192 * 1024))
            agent = Daemon(
                name,
                [sys.executable, "-m", "agent"],
                clean_env(
                    LABCLOUD_AGENT_STATE_DIR=str(lab.state_dir(name)),
                    LABCLOUD_AGENT_LISTEN_PORT=str(free_port()),
                    LABCLOUD_AGENT_CONTROLLER_URL=endpoint,
                    LABCLOUD_AGENT_JOIN_TOKEN=token,
                    LABCLOUD_AGENT_LIBVIRT_URI=f"test://{node}",
                    LABCLOUD_AGENT_ACCELERATOR="tcg",
                    LABCLOUD_AGENT_NETWORK_DRIVER="null",
                    LABCLOUD_AGENT_HEARTBEAT_SECONDS="1",
                    LABCLOUD_AGENT_AVAILABILITY_ZONE=zone,
                ),
                tmp_path / f"{name}.log",
            )
            lab.agents[name] = agent
            daemons.append(agent)
            agent.start()
        wait_for(
            "three hosts up", lambda: zones(lab) == {"lab-1a": "enable", "lab-1b": "enable"}, timeout=WAIT_S
        )
        yield lab
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).is_success
    except httpx.HTTPError:
        return False


def zones(lab: Lab) -> dict[str, str]:
    answer = lab.clients.ecs().list_server_az_info(ListServerAzInfoRequest())
    return {z.availability_zone_id: z.mode for z in answer.availability_zones}


def show(lab: Lab, server_id: str) -> Any:
    return lab.clients.ecs().show_server(ShowServerRequest(server_id=server_id)).server


def used(lab: Lab) -> tuple[int, int, int]:
    limits = lab.clients.ecs().show_server_limits(ShowServerLimitsRequest()).absolute
    return limits.total_instances_used, limits.total_cores_used, limits.total_ram_used


def specs_on_hosts(lab: Lab) -> set[str]:
    return {p.stem for name in ZONES for p in (lab.state_dir(name) / "specs").glob("*.json")}


def test_dead_zone_with_simulated_hypervisor_agent_processes(lab: Lab) -> None:
    ecs, vpc = lab.clients.ecs(), lab.clients.vpc()
    net = create_vpc(vpc, cidr="10.30.0.0/16")
    subnet = create_subnet(vpc, net.id, cidr="10.30.1.0/24", gateway_ip="10.30.1.1")
    image_id = lab.clients.ims().list_images(ListImagesRequest(imagetype="gold")).images[0].id

    def create_in(zone: str, name: str, count: int = 1) -> tuple[list[str], Any]:
        body = PostPaidServer(
            image_ref=image_id,
            flavor_ref=FLAVOR,
            name=name,
            vpcid=net.id,
            nics=[PostPaidServerNic(subnet_id=subnet.id)],
            root_volume=PostPaidServerRootVolume(volumetype="SSD", size=2),
            availability_zone=zone,
            count=count,
            is_auto_rename=count > 1,
        )
        response = create(ecs, body)
        return response.server_ids, wait_job(ecs, response.job_id)

    (in_a,), job = create_in("lab-1a", "a")
    assert job.status == "SUCCESS", job.fail_reason
    in_b, job = create_in("lab-1b", "b", count=2)
    assert job.status == "SUCCESS", job.fail_reason
    assert {show(lab, s).status for s in in_b} == {"ACTIVE"}

    for name in ("b1", "b2"):
        lab.agents[name].kill()
    wait_for("lab-1b down", lambda: zones(lab) == {"lab-1a": "enable", "lab-1b": "disable"}, timeout=WAIT_S)
    wait_for(
        "lab-1b's servers ERROR", lambda: {show(lab, s).status for s in in_b} == {"ERROR"}, timeout=WAIT_S
    )
    for sid in in_b:
        shown = show(lab, sid)
        assert shown.host_status == "DOWN"
        assert shown.fault["details"] == "Ecs.0213" and "is down" in shown.fault["message"]
    assert show(lab, in_a).status == "ACTIVE"

    # The other zone is unaffected.
    (more_a,), job = create_in("lab-1a", "a-more")
    assert job.status == "SUCCESS", job.fail_reason
    assert show(lab, more_a).status == "ACTIVE"

    # Asking for the dead zone fails cleanly.
    before = used(lab)
    specs_before = specs_on_hosts(lab)
    (refused,), job = create_in("lab-1b", "b-refused")
    assert job.status == "FAIL" and job.error_code == "Ecs.0209", (job.error_code, job.fail_reason)
    assert "No valid host" in job.fail_reason
    shown = show(lab, refused)
    assert shown.status == "ERROR" and "No valid host" in shown.fault["message"]
    assert shown.addresses == {} or all(not addrs for addrs in shown.addresses.values())
    assert specs_on_hosts(lab) == specs_before
    assert wait_job(ecs, journey.delete(ecs, [refused])).status == "SUCCESS"
    assert used(lab) == before

    # The zone returns: restarted agents rebuild their domains and the servers recover.
    for name in ("b1", "b2"):
        lab.agents[name].start()
    wait_for("lab-1b up", lambda: zones(lab) == {"lab-1a": "enable", "lab-1b": "enable"}, timeout=WAIT_S)
    wait_for(
        "lab-1b's servers ACTIVE", lambda: {show(lab, s).status for s in in_b} == {"ACTIVE"}, timeout=WAIT_S
    )
    for sid in in_b:
        shown = show(lab, sid)
        assert shown.host_status == "UP" and not shown.fault
    _, job = create_in("lab-1b", "b-again")
    assert job.status == "SUCCESS", job.fail_reason
