"""Root-disk exports in AgentService over libvirt's test driver, with real qcow2 files: a stopped server's
overlay chain flattened into one standalone qcow2 with the guest's data, described by size and sha256, served
and removed through the agent API. (A running guest's live copy uses libvirt's backup job, which the test driver
lacks: tests/e2e/test_images.py covers it with a real guest.)"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.errors import NotFound
from agent.main import create_app
from tests.agent.test_service import Rig
from tests.agent.test_service_volumes import qemu_info, stopped_spec


def write_guest_data(disk: Path) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x7e 1M 2M", str(disk)], check=True, capture_output=True
    )


def test_a_stopped_server_is_flattened_into_a_standalone_qcow2(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    root = rig.state / "instances" / "srv-1" / "root.qcow2"
    write_guest_data(root)

    export = rig.service.export_root_disk("srv-1", "img-1")

    path = rig.state / "exports" / "img-1.qcow2"
    info = qemu_info(path)
    assert info["format"] == "qcow2" and info.get("backing-filename") is None
    assert export.virtual_size == info["virtual-size"] == 1024**3  # the spec's root disk size
    assert (export.size, export.checksum) == (
        path.stat().st_size,
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    assert (export.server_id, export.consistent_with) == ("srv-1", "shutoff")
    same = subprocess.run(["qemu-img", "compare", "-U", str(root), str(path)], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert [p.name for p in path.parent.iterdir()] == ["img-1.qcow2"]  # no staging leftovers

    rig.service.delete_export("img-1")
    rig.service.delete_export("img-1")  # idempotent
    assert not path.exists()


def test_exporting_an_unknown_server_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound):
        rig.service.export_root_disk("nope", "img-1")
    assert not (rig.state / "exports" / "img-1.qcow2").exists()


def test_export_routes_serve_and_remove_the_file(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    app = create_app(rig.settings, service=rig.service)
    with TestClient(app, headers={"Authorization": "Bearer t0ken"}) as http:
        made = http.post("/v1/servers/srv-1/root-export/img-2")
        assert made.status_code == 200, made.text
        got = http.get("/v1/exports/img-2/file")
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == made.json()["checksum"]
        assert http.delete("/v1/exports/img-2").status_code == 204
        missing = http.get("/v1/exports/img-2/file")
        assert missing.status_code == 404 and missing.json()["code"]
        assert http.get("/v1/exports/..%2Fx/file").status_code in (400, 404)
