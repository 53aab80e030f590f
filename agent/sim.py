"""Simulation mode: many hypervisor hosts in one process, each a real agent over libvirt's test driver.

For scale work (`bench/`, tests) on a machine that cannot run a thousand hypervisors. Every simulated host is a
real `AgentService` behind a real agent app (`agent.main.create_app`), with its own state dir (specs, image
cache, qcow2 overlays, seeds are real files) and its own private `test://` libvirt driver whose node XML sets
the host's vCPUs and memory. Domains are defined and started in that driver (nothing boots), and the null network
driver makes no bridges, taps or namespaces.

One uvicorn server serves the whole fleet: `/hosts/<host id>/…` goes to that host's app, and each host registers
`<fleet URL>/hosts/<host id>` as its URL, so the controller calls it over HTTP exactly as it calls a real agent.
Registration and heartbeats are the agent's own `Heartbeat.beat` calls, made for every host by one thread that
spreads them over the interval (a thread per host would not fit 1,000 hosts on two cores).

    python -m agent.sim --controller http://127.0.0.1:8778 --join-token-file $LABCLOUD_HOME/join-token \\
        --root /tmp/sim --hosts 1000
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from agent.api_token import load_or_create
from agent.config import AgentSettings
from agent.main import Heartbeat
from agent.main import create_app as create_agent_app
from agent.net.network import NullNetwork
from agent.schemas import HostInfo
from agent.service import AgentService
from agent.storage.images import ImageCache
from agent.storage.layout import image_cache_dir
from agent.virt.host import LibvirtHost

log = logging.getLogger(__name__)

NODE_XML = (
    "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>{cores}</cores><threads>1</threads>"
    "<mhz>2000</mhz><model>x86_64</model></cpu><memory>{memory_kib}</memory></node>"
)
STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SimCapacity:
    """What one simulated host offers; the scheduler applies its overcommit ratios on top."""

    vcpus: int = 16
    memory_mib: int = 65536
    disk_gib: int = 1000


class SimulatedAgentService(AgentService):
    """A real agent service whose reported disk is the simulated one: every simulated host shares this machine's
    file system, whose size says nothing about the host being simulated. vCPUs and memory come from libvirt
    (the test driver's node XML)."""

    def __init__(self, settings: AgentSettings, *, disk_gib: int, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.simulated_disk_gib = disk_gib

    def host_info(self) -> HostInfo:
        return super().host_info().model_copy(update={"disk_gib": self.simulated_disk_gib})


@dataclass
class SimulatedHost:
    host_id: str
    url: str
    settings: AgentSettings
    service: SimulatedAgentService
    app: FastAPI
    heartbeat: Heartbeat


class FleetRouter:
    """ASGI app sending `/hosts/<host id>/<rest>` to that host's agent app as `/<rest>`."""

    def __init__(self) -> None:
        self.apps: dict[str, FastAPI] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # served with lifespan off; agents speak no websockets
            return
        path: str = scope["path"]
        host_id, _, rest = path.removeprefix("/hosts/").partition("/")
        app = self.apps.get(host_id) if path.startswith("/hosts/") else None
        if app is None:
            body = {"code": "Agent.0404", "message": f"no simulated host serves {path}"}
            await JSONResponse(body, status_code=404)(scope, receive, send)
            return
        inner = f"/{rest}"
        await app({**scope, "path": inner, "raw_path": inner.encode()}, receive, send)


class SimulatedFleet:
    """`count` simulated hosts named `<prefix>-0000…`, AZs assigned round-robin from `zones`.

    `start()` serves them, registers every host with the controller and keeps heartbeating; `stop()` (also on
    a failed start) ends the heartbeats and the server and closes every libvirt connection, which discards the
    test drivers' domains. Files stay under `root` for the caller to remove.
    """

    def __init__(
        self,
        controller_url: str,
        join_token: str,
        root: Path,
        count: int,
        *,
        capacity: SimCapacity = SimCapacity(),
        zones: tuple[str, ...] = ("lab-1a",),
        heartbeat_seconds: float = 10.0,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "sim",
    ) -> None:
        self.controller_url = controller_url.rstrip("/")
        self.join_token = join_token
        self.root = Path(root)
        self.count = count
        self.capacity = capacity
        self.zones = zones
        self.heartbeat_seconds = heartbeat_seconds
        self.prefix = prefix
        self.hosts: list[SimulatedHost] = []
        self._router = FleetRouter()
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on such sockets (else each small answer waits
        # ~40 ms for the client's delayed ACK, as uvicorn writes headers and body separately).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((listen_host, port))
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._server: uvicorn.Server | None = None
        self._server_thread: threading.Thread | None = None
        self._beat_thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Shared by every host: a connection pool to the controller for heartbeats, one client for image downloads.
        self._beat_transport = httpx.HTTPTransport()
        # No idle connections kept: image downloads are rare, and a pooled connection the controller is closing
        # just then fails the download ("Server disconnected without sending a response").
        self._downloads = httpx.Client(
            headers={"Authorization": f"Bearer {join_token}"},
            timeout=60.0,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> SimulatedFleet:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for index in range(self.count):
                self._add_host(index)
            self._serve()
            self._register_all()
            self._beat_thread = threading.Thread(target=self._beat_loop, name="sim-heartbeats", daemon=True)
            self._beat_thread.start()
        except BaseException:
            self.stop()
            raise
        log.info("simulated fleet of %d hosts serving at %s", self.count, self.url)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=60.0)
        if self._server is not None and self._server_thread is not None:
            self._server.should_exit = True
            self._server_thread.join(timeout=60.0)
        self._sock.close()
        for host in self.hosts:
            host.service.close()
        self._beat_transport.close()
        self._downloads.close()

    def __enter__(self) -> SimulatedFleet:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def host(self, host_id: str) -> SimulatedHost:
        return next(h for h in self.hosts if h.host_id == host_id)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _add_host(self, index: int) -> None:
        host_id = f"{self.prefix}-{index:04d}"
        home = self.root / host_id
        home.mkdir(parents=True, exist_ok=True)
        node = home / "node.xml"
        node.write_text(
            NODE_XML.format(cores=self.capacity.vcpus, memory_kib=self.capacity.memory_mib * 1024)
        )
        url = f"{self.url}/hosts/{host_id}"
        settings = AgentSettings(
            state_dir=home / "state",
            listen_host="127.0.0.1",
            public_url=url,
            controller_url=self.controller_url,
            join_token=self.join_token,
            host_id=host_id,
            libvirt_uri=f"test://{node}",
            accelerator="tcg",
            availability_zone=self.zones[index % len(self.zones)],
            network_driver="null",
            heartbeat_seconds=self.heartbeat_seconds,
            acpi_timeout_seconds=1.0,
        )
        settings.persist_host_id()
        service = SimulatedAgentService(
            settings,
            host=LibvirtHost(settings.libvirt_uri),
            network=NullNetwork(),
            images=ImageCache(image_cache_dir(settings.state_dir), client=self._downloads),
            accelerator="tcg",
            disk_gib=self.capacity.disk_gib,
        )
        service.resync()  # what the agent app's start-up does
        app = create_agent_app(settings, service=service)
        heartbeat = Heartbeat(
            self.controller_url,
            self.join_token,
            self.heartbeat_seconds,
            service.host_info,
            transport=self._beat_transport,
            # Reported so the controller calls it with this secret and only its own fleet may heartbeat it.
            api_token=load_or_create(settings.state_dir),
        )
        self._router.apps[host_id] = app
        self.hosts.append(SimulatedHost(host_id, url, settings, service, app, heartbeat))

    def _serve(self) -> None:
        # One server stands for many agents, so one controller connection is reused for many hosts' calls:
        # keep idle connections longer than uvicorn's 5 s, so fewer calls race a closing connection.
        config = uvicorn.Config(
            self._router, log_config=None, access_log=False, lifespan="off", timeout_keep_alive=75
        )
        self._server = uvicorn.Server(config)
        self._server_thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="sim-fleet", daemon=True
        )
        self._server_thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the simulated fleet's server did not start; see the log above")
            time.sleep(0.02)

    def _register_all(self) -> None:
        """The first heartbeat of every host, a few at a time, retried until the controller took them all."""
        pending = list(self.hosts)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="sim-register") as pool:
            while pending:
                accepted = list(pool.map(lambda h: h.heartbeat.beat(), pending))
                pending = [h for h, ok in zip(pending, accepted, strict=True) if not ok]
                if pending and time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{len(pending)} simulated hosts could not register with {self.controller_url}"
                    )
                if pending:
                    time.sleep(0.5)

    def _beat_loop(self) -> None:
        """Each host beats once per interval; the beats are spread evenly over it."""
        gap = self.heartbeat_seconds / max(1, len(self.hosts))
        next_at = time.monotonic()
        while not self._stop.is_set():
            for host in self.hosts:
                next_at += gap
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if self._stop.is_set():
                    return
                host.heartbeat.beat()
            next_at = max(next_at, time.monotonic() - self.heartbeat_seconds)  # do not burst to catch up


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controller", required=True, help="the controller's URL")
    parser.add_argument("--join-token-file", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="where the hosts' state dirs go")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--vcpus", type=int, default=SimCapacity.vcpus)
    parser.add_argument("--memory-mib", type=int, default=SimCapacity.memory_mib)
    parser.add_argument("--disk-gib", type=int, default=SimCapacity.disk_gib)
    parser.add_argument("--zones", default="lab-1a", help="comma-separated availability zones")
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    fleet = SimulatedFleet(
        args.controller,
        args.join_token_file.read_text().strip(),
        args.root,
        args.hosts,
        capacity=SimCapacity(args.vcpus, args.memory_mib, args.disk_gib),
        zones=tuple(z for z in args.zones.split(",") if z),
        heartbeat_seconds=args.heartbeat_seconds,
        listen_host=args.listen_host,
        port=args.port,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with fleet:
        log.info("%d simulated hosts at %s; SIGINT or SIGTERM stops them", args.hosts, fleet.url)
        done.wait()


if __name__ == "__main__":
    main()
