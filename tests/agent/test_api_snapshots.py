"""The agent's snapshot and rollback routes over HTTP (TestClient, test driver, real qcow2 files)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.agent.storage.test_snapshots import holds_pattern, write_pattern
from tests.agent.test_api import assert_error


def test_snapshot_rollback_and_volume_from_snapshot(client: TestClient, tmp_path: Path) -> None:
    volumes = tmp_path / "state" / "volumes"
    assert client.put("/v1/volumes/vol-1", json={"id": "vol-1", "size_gib": 1}).status_code == 200
    write_pattern(volumes / "vol-1.qcow2", 0xA1)

    put = client.put("/v1/snapshots/snap-1", json={"id": "snap-1", "volume_id": "vol-1"})
    assert put.status_code == 200, put.text
    assert put.json() == {"id": "snap-1", "size_gib": 1}
    assert client.get("/v1/snapshots/snap-1").json() == {"id": "snap-1", "size_gib": 1}
    write_pattern(volumes / "vol-1.qcow2", 0xB2)

    source = {"kind": "snapshot", "id": "snap-1"}
    rolled = client.post("/v1/volumes/vol-1/rollback", json={"source": source})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json() == {"id": "vol-1", "size_gib": 1, "server_id": None}
    assert holds_pattern(volumes / "vol-1.qcow2", 0xA1)

    made = client.put("/v1/volumes/vol-2", json={"id": "vol-2", "size_gib": 2, "source": source})
    assert made.status_code == 200, made.text
    assert made.json()["size_gib"] == 2 and holds_pattern(volumes / "vol-2.qcow2", 0xA1)

    assert client.delete("/v1/snapshots/snap-1").status_code == 204
    assert client.delete("/v1/snapshots/snap-1").status_code == 204
    assert_error(client.get("/v1/snapshots/snap-1"), 404, "Agent.0404")


def test_bad_snapshot_requests(client: TestClient, tmp_path: Path) -> None:
    body = {"id": "snap-1", "volume_id": "vol-9"}
    assert_error(client.put("/v1/snapshots/snap-2", json=body), 400, "Agent.0400")
    assert_error(client.put("/v1/snapshots/snap-1", json=body), 404, "Agent.0404")
    bad_kind = {"source": {"kind": "tape", "id": "t-1"}}
    assert_error(client.post("/v1/volumes/vol-1/rollback", json=bad_kind), 400, "Agent.0400")
    assert_error(client.post("/v1/volumes/vol-1/rollback", json={}), 404, "Agent.0404")
    assert not (tmp_path / "state" / "snapshots").exists() or not any(
        (tmp_path / "state" / "snapshots").iterdir()
    )
