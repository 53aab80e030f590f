"""The agent's HTTP API through FastAPI's TestClient, on libvirt's test driver with the null network.

The app is built by `create_app(settings)` alone, so the real wiring from settings to service is exercised.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.api import RequestIdFilter
from agent.config import AgentSettings
from agent.main import create_app
from agent.net.network import NullNetwork
from agent.schemas import HostInfo
from agent.service import AgentService
from agent.storage.images import ImageCache
from agent.storage.layout import image_cache_dir
from agent.virt.host import LibvirtHost

TOKEN = "s3cret-join-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NODE_XML = (
    "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
    "<mhz>2000</mhz><model>x86_64</model></cpu><memory>4194304</memory></node>"
)


def make_settings(tmp_path: Path, **overrides: Any) -> AgentSettings:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    values: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "join_token": TOKEN,
        "libvirt_uri": f"test://{node}",
        "accelerator": "tcg",
        "network_driver": "null",
        "acpi_timeout_seconds": 0.5,
    }
    values.update(overrides)
    return AgentSettings(**values)


def spec_body(tmp_path: Path, server_id: str = "srv-1", checksum: str | None = None) -> dict[str, Any]:
    base = tmp_path / "base.qcow2"
    if not base.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subnet = {"id": "sub-1", "cidr": "10.20.1.0/24", "gateway_ip": "10.20.1.1"}
    return {
        "id": server_id,
        "name": "web",
        "hostname": "web-1",
        "project_id": "proj-1",
        "vcpus": 1,
        "ram_mib": 128,
        "root_disk_gib": 1,
        "image": {
            "id": "img-1",
            "checksum": checksum or hashlib.sha256(base.read_bytes()).hexdigest(),
            "url": base.as_uri(),
        },
        "ports": [
            {
                "id": "port-1",
                "mac": "52:54:00:20:01:0a",
                "ip": "10.20.1.10",
                "subnet_id": "sub-1",
                "vpc_id": "vpc-1",
            }
        ],
        "networks": [{"vpc_id": "vpc-1", "vni": 7, "cidr": "10.20.0.0/16", "subnets": [subnet]}],
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code and body["message"]
    return body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
)
def test_requests_without_the_token_are_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/v1/host"),
        ("DELETE", "/v1/servers/srv-1"),
        ("PUT", "/v1/servers/srv-1"),  # auth comes before body validation
        ("GET", "/no-such-path"),  # and before routing: unknown paths reveal nothing either
    ]:
        response = client.request(method, path, headers=headers)
        assert_error(response, 401, "Agent.0401")
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_server_lifecycle(client: TestClient, tmp_path: Path) -> None:
    body = spec_body(tmp_path)

    put = client.put("/v1/servers/srv-1", json=body, headers=AUTH)
    assert put.status_code == 200, put.text
    assert put.json() == {"id": "srv-1", "power": "running", "accelerator": "tcg"}
    assert client.put("/v1/servers/srv-1", json=body, headers=AUTH).json()["power"] == "running"
    assert client.get("/v1/servers/srv-1", headers=AUTH).json()["power"] == "running"

    stop = client.post("/v1/servers/srv-1/action", json={"action": "stop", "type": "HARD"}, headers=AUTH)
    assert stop.status_code == 200 and stop.json()["power"] == "shutoff"
    start = client.post("/v1/servers/srv-1/action", json={"action": "start"}, headers=AUTH)
    assert start.json()["power"] == "running"

    (tmp_path / "state/instances/srv-1/console.log").write_text("one\ntwo\nthree\n")
    console = client.get("/v1/servers/srv-1/console", params={"length": 2}, headers=AUTH)
    assert console.json() == {"output": "two\nthree\n"}

    host = client.get("/v1/host", headers=AUTH).json()
    assert (host["vcpus"], host["memory_mib"], host["accelerator"]) == (2, 4096, "tcg")
    assert host["servers"] == [{"id": "srv-1", "power": "running", "accelerator": "tcg"}]

    groups = [{"id": "sg-1", "rules": [{"id": "r1", "direction": "ingress", "protocol": "tcp"}]}]
    assert client.put("/v1/security-groups", json=groups, headers=AUTH).status_code == 204

    delete = client.delete("/v1/servers/srv-1", headers=AUTH)
    assert delete.status_code == 204 and delete.content == b""
    assert client.delete("/v1/servers/srv-1", headers=AUTH).status_code == 204
    assert_error(client.get("/v1/servers/srv-1", headers=AUTH), 404, "Agent.0404")
    assert not (tmp_path / "state/instances/srv-1").exists()


def test_unknown_server_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/servers/nope", headers=AUTH), 404, "Agent.0404")
    assert_error(
        client.post("/v1/servers/nope/action", json={"action": "start"}, headers=AUTH), 404, "Agent.0404"
    )
    assert_error(client.get("/v1/servers/nope/console", headers=AUTH), 404, "Agent.0404")
    assert_error(client.get("/v1/nothing-here", headers=AUTH), 404, "Agent.0404")


def test_bad_requests_are_400(client: TestClient, tmp_path: Path) -> None:
    body = spec_body(tmp_path)
    missing = {k: v for k, v in body.items() if k != "vcpus"}
    message = assert_error(client.put("/v1/servers/srv-1", json=missing, headers=AUTH), 400, "Agent.0400")
    assert "vcpus" in message["message"]
    assert_error(client.put("/v1/servers/srv-2", json=body, headers=AUTH), 400, "Agent.0400")  # id mismatch
    assert_error(client.put("/v1/servers/bad.id", json=body, headers=AUTH), 400, "Agent.0400")
    assert_error(
        client.put(
            "/v1/servers/srv-1", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
        ),
        400,
        "Agent.0400",
    )
    assert_error(
        client.post("/v1/servers/srv-1/action", json={"action": "explode"}, headers=AUTH), 400, "Agent.0400"
    )
    assert_error(client.get("/v1/servers/srv-1/console?length=0", headers=AUTH), 400, "Agent.0400")
    assert_error(client.put("/v1/security-groups", json={"id": "sg"}, headers=AUTH), 400, "Agent.0400")


def test_failure_names_the_step_and_leaves_nothing(client: TestClient, tmp_path: Path) -> None:
    body = spec_body(tmp_path, checksum="f" * 64)

    error = assert_error(client.put("/v1/servers/srv-1", json=body, headers=AUTH), 500, "Agent.0200")

    assert "fetching image failed" in error["message"]
    assert_error(client.get("/v1/servers/srv-1", headers=AUTH), 404, "Agent.0404")
    assert not (tmp_path / "state/instances/srv-1").exists()
    assert not (tmp_path / "state/specs/srv-1.json").exists()


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_request_id_is_echoed_and_in_every_log_line(client: TestClient, tmp_path: Path) -> None:
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        response = client.put(
            "/v1/servers/srv-1", json=spec_body(tmp_path), headers={**AUTH, "X-Request-Id": "req-abc-123"}
        )
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)

    assert response.headers["X-Request-Id"] == "req-abc-123"
    service_lines = [r for r in capture.records if r.name.startswith("agent.")]
    assert any(r.name == "agent.service" for r in service_lines)
    assert {getattr(r, "request_id", None) for r in service_lines} == {"req-abc-123"}
    generated = client.get("/healthz", headers=AUTH).headers["X-Request-Id"]
    assert generated.startswith("req-") and generated != "req-abc-123"


@pytest.fixture
def controller() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """A stand-in controller on 127.0.0.1 that records registrations and answers 200."""
    calls: list[tuple[str, dict[str, Any]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            payload = json.loads(self.rfile.read(length))
            calls.append((f"{self.path} {self.headers.get('Authorization')}", payload))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_registers_and_heartbeats_with_the_controller(
    tmp_path: Path, controller: tuple[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    url, calls = controller
    settings = make_settings(
        tmp_path, controller_url=url, heartbeat_seconds=0.05, public_url="http://agent-1:8779"
    )
    with TestClient(create_app(settings)):
        deadline = time.monotonic() + 60
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 3
    where, info = calls[0]
    assert where == f"/internal/hosts Bearer {TOKEN}"
    assert info["host_id"] == settings.host_id and info["url"] == "http://agent-1:8779"
    assert (info["vcpus"], info["memory_mib"], info["accelerator"]) == (2, 4096, "tcg")
    assert (tmp_path / "state/host-id").read_text().strip() == settings.host_id


def test_heartbeat_retries_until_the_controller_is_up(tmp_path: Path) -> None:
    # Nothing listens on this port: the agent must still start and serve, logging the failed registration.
    settings = make_settings(tmp_path, controller_url="http://127.0.0.1:9", heartbeat_seconds=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        time.sleep(0.2)
        assert c.get("/healthz", headers=AUTH).json() == {"status": "ok"}
        assert c.app.state.heartbeat.beats == 0  # type: ignore[attr-defined]


def test_unexpected_crash_is_500_in_the_error_shape_with_the_request_id(tmp_path: Path) -> None:
    class Crashing(AgentService):
        def host_info(self) -> HostInfo:
            raise RuntimeError("bug")

    settings = make_settings(tmp_path)
    host = LibvirtHost(settings.libvirt_uri)
    images = ImageCache(image_cache_dir(settings.state_dir))
    crashing = Crashing(settings, host=host, network=NullNetwork(), images=images, accelerator="tcg")
    try:
        with TestClient(create_app(settings, crashing)) as c:
            response = c.get("/v1/host", headers={**AUTH, "X-Request-Id": "req-crash"})
    finally:
        host.close()
    assert_error(response, 500, "Agent.0000")
    assert response.json()["message"] == "internal error: RuntimeError"
    assert response.headers["X-Request-Id"] == "req-crash"
