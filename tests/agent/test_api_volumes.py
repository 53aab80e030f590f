"""The agent's volume routes over HTTP (TestClient, test driver, real qcow2 files): shapes, statuses, errors."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.agent.test_api import assert_error, spec_body


def test_volume_lifecycle_on_a_stopped_server(client: TestClient, tmp_path: Path) -> None:
    body = {**spec_body(tmp_path), "power": "shutoff"}
    assert client.put("/v1/servers/srv-1", json=body).status_code == 200

    put = client.put("/v1/volumes/vol-1", json={"id": "vol-1", "size_gib": 1})
    assert put.status_code == 200, put.text
    assert put.json() == {"id": "vol-1", "size_gib": 1, "server_id": None}
    attachment = {"volume_id": "vol-1", "device": "vdb", "serial": "vol-1"}
    attached = client.post("/v1/servers/srv-1/volumes", json=attachment)
    assert attached.status_code == 200, attached.text
    assert attached.json() == attachment
    assert client.get("/v1/volumes/vol-1").json()["server_id"] == "srv-1"
    assert_error(client.delete("/v1/volumes/vol-1"), 409, "Agent.0409")

    assert client.delete("/v1/servers/srv-1/volumes/vol-1").status_code == 204
    assert client.get("/v1/volumes/vol-1").json()["server_id"] is None
    assert client.delete("/v1/volumes/vol-1").status_code == 204
    assert_error(client.get("/v1/volumes/vol-1"), 404, "Agent.0404")


def test_bad_volume_requests(client: TestClient, tmp_path: Path) -> None:
    assert_error(client.put("/v1/volumes/vol-1", json={"id": "vol-2", "size_gib": 1}), 400, "Agent.0400")
    assert_error(client.put("/v1/volumes/vol-1", json={"id": "vol-1", "size_gib": 0}), 400, "Agent.0400")
    assert_error(client.put("/v1/volumes/_x", json={"id": "_x", "size_gib": 1}), 400, "Agent.0400")
    bad_device = {"volume_id": "vol-1", "device": "vda", "serial": "x"}
    assert_error(client.post("/v1/servers/srv-1/volumes", json=bad_device), 400, "Agent.0400")
    unknown = {"volume_id": "vol-1", "device": "vdb", "serial": "x"}
    assert_error(client.post("/v1/servers/srv-9/volumes", json=unknown), 404, "Agent.0404")
    assert not (tmp_path / "state" / "volumes" / "vol-1.qcow2").exists()
