"""A real controller for API tests: `create_app(Settings(home=tmp_path, …))` served by uvicorn on 127.0.0.1 in
a background thread, and official Huawei SDK clients pointed at it (ECS-API.md §1).

Tests that need other settings override the `api_settings` fixture (a dict of Settings fields).

Databases: SQLite unless a test parametrizes `db_backend` (`tests.support.postgres.on_both_databases()`); then
`database_url` and `api` use a fresh database in a private PostgreSQL cluster started once per session.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkecs.v2 import EcsClient
from huaweicloudsdkims.v2 import ImsClient
from huaweicloudsdkvpc.v2 import VpcClient

from agent.config import AgentSettings
from agent.main import create_app as create_agent_app
from agent.net.network import NullNetwork
from agent.service import AgentService
from agent.storage.images import ImageCache
from agent.storage.layout import image_cache_dir
from agent.virt.host import LibvirtHost
from controller.bootstrap import new_access_key, new_secret_key
from controller.config import Settings
from controller.context import ControllerContext
from controller.db import session_scope
from controller.main import create_app
from controller.models.host import Host
from controller.models.project import Credential, Project
from tests.support.postgres import PostgresCluster, start_cluster, stop_cluster

STARTUP_TIMEOUT_S = 120.0


@dataclass
class ApiClients:
    """SDK clients for one project's AK/SK."""

    endpoint: str
    ak: str
    sk: str
    project_id: str

    def _build(self, client_class: Any) -> Any:
        config = HttpConfig.get_default_config()
        return (
            client_class.new_builder()
            .with_http_config(config)
            .with_credentials(BasicCredentials(self.ak, self.sk, self.project_id))
            .with_endpoints([self.endpoint])
            .build()
        )

    def ecs(self) -> EcsClient:
        return self._build(EcsClient)

    def vpc(self) -> VpcClient:
        return self._build(VpcClient)

    def ims(self) -> ImsClient:
        return self._build(ImsClient)


@dataclass
class Api(ApiClients):
    """The running controller, its context and the admin project's clients."""

    ctx: ControllerContext

    def new_project(self, name: str) -> ApiClients:
        """Another tenant with its own AK/SK (to check that foreign resources answer 404)."""
        with session_scope(self.ctx.engine) as session:
            project = Project(name=name)
            session.add(project)
            session.flush()
            cred = Credential(access_key=new_access_key(), secret_key=new_secret_key(), project_id=project.id)
            session.add(cred)
        return ApiClients(self.endpoint, cred.access_key, cred.secret_key, project.id)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster on a unix socket, started on first use and removed at the end."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """What the test parametrized indirectly, else `LABCLOUD_TEST_DB` ("postgresql" runs every API test on
    PostgreSQL), else "sqlite"."""
    return str(getattr(request, "param", os.environ.get("LABCLOUD_TEST_DB", "sqlite")))


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty database of the `db_backend` kind, dropped after the test."""
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'labcloud.db'}"
        return
    assert db_backend == "postgresql", db_backend
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


@pytest.fixture
def api_settings() -> dict[str, Any]:
    return {}


@pytest.fixture
def api(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    api_settings: dict[str, Any],
    db_backend: str,
    database_url: str,
) -> Iterator[Api]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    fields: dict[str, Any] = {
        "home": tmp_path / "home",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "seed_image": None,
        # SQLite at its default place under home, as a real controller keeps it.
        "database_url": None if db_backend == "sqlite" else database_url,
        "public_url": None,
        "reconcile_seconds": 0.0,  # tests call controller.reconciler.run_once themselves
        **api_settings,
    }
    settings = Settings(**fields)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="test-controller", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test controller did not start; see the log above")
            time.sleep(0.02)
        creds = json.loads(settings.credentials_file.read_text())
        yield Api(
            endpoint=settings.endpoint,
            ak=creds["ak"],
            sk=creds["sk"],
            project_id=creds["project_id"],
            ctx=app.state.ctx,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()


# --- a real agent on libvirt's test driver, registered with the `api` controller ---

AGENT_NODE_XML = (
    "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>{cores}</cores><threads>1</threads>"
    "<mhz>2000</mhz><model>x86_64</model></cpu><memory>{memory_kib}</memory></node>"
)


@dataclass
class AgentHost:
    """One simulated hypervisor host: the agent app served on 127.0.0.1, its service and host id."""

    url: str
    host_id: str
    settings: AgentSettings
    service: AgentService


@pytest.fixture(scope="session")
def seed_image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real qcow2 with the manifest the controller's seed-image registration reads (no guest inside:
    libvirt's test driver never boots it). Use it with `api_settings = {"seed_image": seed_image_file}`."""
    path = tmp_path_factory.mktemp("seed") / "testimg.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "name": "testimg",
        "os_version": "testimg 1",
        "sha256": digest,
        "size": path.stat().st_size,
        "min_ram_mib": 128,
        "min_disk_gib": 1,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


class AgentFactory:
    """Starts real agent apps (libvirt test driver, null network) that register and heartbeat with `api`."""

    def __init__(self, api: Api, root: Path) -> None:
        self.api = api
        self.root = root
        self._stops: list[Any] = []
        self._serving: dict[str, Any] = {}  # host id -> stops its app, keeping the service

    def start(
        self,
        name: str = "agent",
        *,
        availability_zone: str = "lab-1a",
        cores: int = 4,
        memory_mib: int = 8192,
        join_token: str | None = None,
        underlay_ip: str | None = None,
        external_ip: str | None = None,
        accelerator: Literal["kvm", "tcg"] = "tcg",
    ) -> AgentHost:
        """`join_token`: a per-host token to register with instead of the controller's shared one;
        `underlay_ip`: a VTEP address to report (nothing is plumbed: the network is a `NullNetwork`), so
        the controller computes and pushes VPC overlay views to this host as to a multi-host agent;
        `external_ip`: an address on the external network to report, so EIPs may be bound to its ports;
        `accelerator`: what the host reports (the test driver runs either kind of domain)."""
        token = join_token or self.api.ctx.join_token
        home = self.root / name
        home.mkdir()
        node = home / "node.xml"
        node.write_text(AGENT_NODE_XML.format(cores=cores, memory_kib=memory_mib * 1024))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        settings = AgentSettings(
            state_dir=home / "state",
            listen_host="127.0.0.1",
            listen_port=sock.getsockname()[1],
            controller_url=self.api.endpoint,
            join_token=token,
            libvirt_uri=f"test://{node}",
            accelerator=accelerator,
            network_driver="null",
            heartbeat_seconds=1.0,
            acpi_timeout_seconds=1.0,
            availability_zone=availability_zone,
        )
        settings.state_dir.mkdir(parents=True)
        # The controller serves image files only to holders of the join token.
        downloads = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60.0)
        service = AgentService(
            settings,
            host=LibvirtHost(settings.libvirt_uri),
            network=NullNetwork(underlay_ip=underlay_ip, external_ip=external_ip),
            images=ImageCache(image_cache_dir(settings.state_dir), client=downloads),
            accelerator=accelerator,
        )
        serving = self._serve(name, settings, service, sock)

        def stop() -> None:
            self._serving.pop(settings.resolved_host_id, lambda: None)()
            service.close()
            downloads.close()

        self._stops.append(stop)
        self._serving[settings.resolved_host_id] = serving
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _registered(self.api, settings.resolved_host_id):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"test agent {name} did not register with the controller; see the log above"
                )
            time.sleep(0.05)
        return AgentHost(settings.url, settings.resolved_host_id, settings, service)

    def stop_serving(self, host: AgentHost) -> None:
        """Take the agent off the air (no API, no heartbeat) but keep its libvirt state, like a host that
        lost its network; `serve_again` brings it back on the same URL."""
        self._serving.pop(host.host_id)()

    def serve_again(self, host: AgentHost) -> None:
        assert host.host_id not in self._serving, "the agent is still serving"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", host.settings.listen_port))
        self._serving[host.host_id] = self._serve("again", host.settings, host.service, sock)

    @staticmethod
    def _serve(name: str, settings: AgentSettings, service: AgentService, sock: socket.socket) -> Any:
        """Serve the agent app (API and heartbeat) on `sock` in a thread; return what stops it."""
        app = create_agent_app(settings, service=service)
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"test-{name}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"test agent {name} did not start; see the log above")
            time.sleep(0.02)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=STARTUP_TIMEOUT_S)
            sock.close()

        return stop

    def stop_all(self) -> None:
        while self._stops:
            self._stops.pop()()


@pytest.fixture
def agents(api: Api, tmp_path: Path) -> Iterator[AgentFactory]:
    factory = AgentFactory(api, tmp_path / "agents")
    factory.root.mkdir()
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def agent_host(agents: AgentFactory) -> AgentHost:
    """One real agent registered with `api`."""
    return agents.start()


def _registered(api: Api, host_id: str) -> bool:
    with session_scope(api.ctx.engine) as session:
        return session.get(Host, host_id) is not None
