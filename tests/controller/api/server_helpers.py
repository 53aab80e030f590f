"""Building blocks for the ECS server tests: a network for servers, create bodies, job waits, row counts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from huaweicloudsdkecs.v2 import (
    CreatePostPaidServersRequest,
    CreatePostPaidServersRequestBody,
    PostPaidServer,
    PostPaidServerNic,
    PostPaidServerRootVolume,
    ShowJobRequest,
    ShowJobResponse,
)
from sqlmodel import Session, col, func, select

from controller.auth.signature import sign
from controller.models.image import Image
from controller.models.job import Job
from controller.models.network import Port
from controller.models.server import Server
from tests.controller.api.helpers import create_subnet, create_vpc

JOB_TIMEOUT_S = 180.0
FLAVOR = "s6.nano.1"  # 1 vCPU, 128 MiB


@dataclass
class Net:
    vpc_id: str
    subnet_id: str
    image_id: str


def make_net(
    api: Any,
    *,
    cidr: str = "10.20.0.0/16",
    subnet_cidr: str = "10.20.1.0/24",
    gateway: str = "10.20.1.1",
    clients: Any = None,
) -> Net:
    """A VPC with one subnet for `clients` (default: the admin project), and the public seed image."""
    vpc_client = (clients or api).vpc()
    vpc = create_vpc(vpc_client, cidr=cidr)
    subnet = create_subnet(vpc_client, vpc.id, cidr=subnet_cidr, gateway_ip=gateway)
    return Net(vpc_id=vpc.id, subnet_id=subnet.id, image_id=seed_image_id(api))


def seed_image_id(api: Any) -> str:
    with Session(api.ctx.engine) as session:
        image = session.exec(select(Image).where(col(Image.owner).is_(None))).first()
    assert image is not None, "the controller registered no seed image: set api_settings seed_image"
    return image.id


def server(net: Net, **overrides: Any) -> PostPaidServer:
    fields: dict[str, Any] = {
        "image_ref": net.image_id,
        "flavor_ref": FLAVOR,
        "name": "web",
        "vpcid": net.vpc_id,
        "nics": [PostPaidServerNic(subnet_id=net.subnet_id)],
        "root_volume": PostPaidServerRootVolume(volumetype="SSD", size=2),
    }
    fields.update(overrides)
    return PostPaidServer(**fields)


def create(ecs: Any, body: PostPaidServer, *, dry_run: bool | None = None) -> Any:
    request = CreatePostPaidServersRequest(
        body=CreatePostPaidServersRequestBody(server=body, dry_run=dry_run)
    )
    return ecs.create_post_paid_servers(request)


def wait_job(ecs: Any, job_id: str, timeout: float = JOB_TIMEOUT_S) -> ShowJobResponse:
    """Poll the job until SUCCESS or FAIL (a generous timeout: machines are noisy)."""
    deadline = time.monotonic() + timeout
    while True:
        job = ecs.show_job(ShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout} s"
        time.sleep(0.05)


def create_and_wait(ecs: Any, body: PostPaidServer) -> tuple[list[str], ShowJobResponse]:
    response = create(ecs, body)
    return response.server_ids, wait_job(ecs, response.job_id)


@dataclass(frozen=True)
class Counts:
    servers: int
    ports: int
    jobs: int


def counts(api: Any) -> Counts:
    with Session(api.ctx.engine) as session:

        def n(model: Any) -> int:
            return int(session.exec(select(func.count()).select_from(model)).one())

        return Counts(servers=n(Server), ports=n(Port), jobs=n(Job))


def row(api: Any, server_id: str) -> Server:
    with Session(api.ctx.engine) as session:
        found = session.get(Server, server_id)
    assert found is not None
    return found


def raw_request(api: Any, method: str, path: str, body: bytes) -> httpx.Response:
    """A correctly signed request with an arbitrary body, for what the SDK cannot send (malformed JSON…)."""
    headers = sign(
        access_key=api.ak,
        secret_key=api.sk,
        method=method,
        path=path,
        query=[],
        headers={
            "Host": urlsplit(api.endpoint).netloc,
            "Content-Type": "application/json",
            "X-Project-Id": api.project_id,
        },
        body=body,
    )
    return httpx.request(method, api.endpoint + path, content=body, headers=headers, timeout=60.0)
