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
from huaweicloudsdkvpc.v2 import VpcClient

from controller.config import Settings
from controller.context import ControllerContext
from controller.main import create_app

STARTUP_TIMEOUT_S = 120.0


def serve_in_thread(app: Any, name: str, sock: socket.socket | None = None) -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a daemon thread; return its URL and what stops it."""
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
