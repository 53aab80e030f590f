"""What the control-plane benches share: a real controller served by uvicorn in this process, a tiny seed image
(a real qcow2 that libvirt's test driver never boots), SDK clients, and percentiles."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkecs.v2 import EcsClient
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    CreateSubnetOption,
    CreateSubnetRequest,
    CreateSubnetRequestBody,
    CreateVpcOption,
    CreateVpcRequest,
    CreateVpcRequestBody,
    DeleteSecurityGroupRuleRequest,
    VpcClient,
)
from sqlalchemy import func
from sqlmodel import Session, select

from agent.sim import SimCapacity
from controller.config import Settings
from controller.context import ControllerContext
from controller.main import create_app
from controller.models.host import Host

STARTUP_TIMEOUT_S = 120.0


def serve_in_thread(app: Any, name: str, sock: socket.socket | None = None) -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a daemon thread; return its URL and what stops it."""
    if sock is None:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on such sockets; `labcloud`'s own uvicorn binds its
        # socket through getaddrinfo, which names it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.02)
    host, port = sock.getsockname()[:2]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()

    return f"http://{host}:{port}", stop


@dataclass
class Controller:
    url: str
    ctx: ControllerContext
    ak: str
    sk: str
    project_id: str
    stop: Callable[[], None]

    def _client(self, client_class: Any) -> Any:
        config = HttpConfig.get_default_config()
        config.timeout = (10, 300)
        return (
            client_class.new_builder()
            .with_http_config(config)
            .with_credentials(BasicCredentials(self.ak, self.sk, self.project_id))
            .with_endpoints([self.url])
            .build()
        )

    def ecs(self) -> EcsClient:
        return self._client(EcsClient)

    def vpc(self) -> VpcClient:
        return self._client(VpcClient)


def start_controller(home: Path, **settings: Any) -> Controller:
    """A real controller (`controller.main.create_app`) on a fresh SQLite home, with unlimited quotas."""
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fields: dict[str, Any] = {
        "home": home,
        "listen_host": "127.0.0.1",
        "listen_port": sock.getsockname()[1],
        "database_url": None,
        "public_url": None,
        "seed_image": None,
        "reconcile_seconds": 0.0,
        "quota_instances": -1,
        "quota_cores": -1,
        "quota_ram_mib": -1,
        "rate_limit_per_second": 0.0,
        **settings,
    }
    config = Settings(**fields)
    app = create_app(config)
    url, stop = serve_in_thread(app, "bench-controller", sock)
    creds = json.loads(config.credentials_file.read_text())
    return Controller(url, app.state.ctx, creds["ak"], creds["sk"], creds["project_id"], stop)


def make_seed_image(directory: Path) -> Path:
    """A 1 GiB (sparse) qcow2 with the manifest the controller's seed-image registration reads."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "benchimg.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    manifest = {
        "name": "benchimg",
        "os_version": "benchimg 1",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
        "min_ram_mib": 64,
        "min_disk_gib": 1,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (`pct` in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def start_fleet(
    controller: Controller, root: Path, hosts: int, capacity: SimCapacity, heartbeat_seconds: float
) -> subprocess.Popen[bytes]:
    """The simulated hosts in a process of their own (`python -m agent.sim`), so their agent work does not share
    the controller's interpreter; returns once every host has registered."""
    root.mkdir(parents=True)
    (root / "join-token").write_text(controller.ctx.join_token)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "agent.sim", "--controller", controller.url]
    argv += [
        "--join-token-file",
        str(root / "join-token"),
        "--root",
        str(root / "hosts"),
        "--hosts",
        str(hosts),
    ]
    argv += ["--vcpus", str(capacity.vcpus), "--memory-mib", str(capacity.memory_mib)]
    argv += ["--disk-gib", str(capacity.disk_gib), "--heartbeat-seconds", str(heartbeat_seconds)]
    argv += ["--port", str(port)]
    with (root / "fleet.log").open("wb") as log_file:
        fleet = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while True:
        with Session(controller.ctx.engine) as session:
            registered = int(session.exec(select(func.count()).select_from(Host)).one())
        if registered >= hosts:
            return fleet
        if fleet.poll() is not None or time.monotonic() > deadline:
            fleet.kill()
            raise RuntimeError(
                f"the simulated fleet did not register: {(root / 'fleet.log').read_text()[-2000:]}"
            )
        time.sleep(0.2)


def open_network(controller: Controller, servers: int) -> tuple[str, str, str]:
    """A VPC, a subnet with room for every server, and a security group that no rule names as its remote group
    (SSH from anywhere, like the CLI's `labcloud-ssh`), so a create pushes no group update to other hosts."""
    vpc = controller.vpc()
    vpc_id = vpc.create_vpc(
        CreateVpcRequest(body=CreateVpcRequestBody(vpc=CreateVpcOption(name="bench", cidr="10.64.0.0/12")))
    ).vpc.id
    prefix = max(8, min(24, 32 - (servers + 16).bit_length()))
    option = CreateSubnetOption(
        name="bench", cidr=f"10.64.0.0/{prefix}", gateway_ip="10.64.0.1", vpc_id=vpc_id
    )
    subnet = vpc.create_subnet(CreateSubnetRequest(body=CreateSubnetRequestBody(subnet=option))).subnet
    group = vpc.create_security_group(
        CreateSecurityGroupRequest(
            body=CreateSecurityGroupRequestBody(security_group=CreateSecurityGroupOption(name="bench"))
        )
    ).security_group
    for rule in group.security_group_rules:
        if rule.remote_group_id:
            vpc.delete_security_group_rule(DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id))
    ssh = CreateSecurityGroupRuleOption(
        security_group_id=group.id,
        direction="ingress",
        protocol="tcp",
        port_range_min=22,
        port_range_max=22,
        remote_ip_prefix="0.0.0.0/0",
    )
    vpc.create_security_group_rule(
        CreateSecurityGroupRuleRequest(body=CreateSecurityGroupRuleRequestBody(security_group_rule=ssh))
    )
    return vpc_id, subnet.id, group.id
