"""An export's download token over the real agent app (TestClient, test driver, real qcow2 files): it fetches
that export's file and nothing else, and dies with the export. The whole move between two agents, and what
the target host is sent, is in tests/controller/api/test_volume_moves.py."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.api_token import load_or_create
from agent.main import create_app
from tests.agent.test_api import AUTH, TOKEN, make_settings


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, settings.state_dir


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def export_volume(client: TestClient, volume_id: str) -> dict[str, Any]:
    assert client.put(
        f"/v1/volumes/{volume_id}", json={"id": volume_id, "size_gib": 1}, headers=AUTH
    ).is_success
    response = client.post(f"/v1/volumes/{volume_id}/export/move-{volume_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    export: dict[str, Any] = response.json()
    return export


def test_the_download_token_fetches_its_export_and_nothing_else(agent: tuple[TestClient, Path]) -> None:
    client, state = agent
    one, two = export_volume(client, "vol-1"), export_volume(client, "vol-2")
    token = one["download_token"]
    assert len(token) >= 40 and token != two["download_token"]
    assert token not in (TOKEN, load_or_create(state))
    assert export_volume(client, "vol-1") == one  # a repeated export keeps its token
    token_file = state / "exports" / "move-vol-1.token"
    assert token_file.read_text() == token and stat.S_IMODE(token_file.stat().st_mode) == 0o600

    download = client.get("/v1/exports/move-vol-1/file", headers=bearer(token))
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == one["checksum"]
    assert client.get("/v1/exports/move-vol-1/file?x=1", headers=bearer(token)).status_code == 200

    refused = [
        ("GET", "/v1/exports/move-vol-2/file"),  # another export's file
        ("HEAD", "/v1/exports/move-vol-1/file"),
        ("GET", "/v1/exports/move-vol-1/file/"),
        ("GET", "/v1/exports/move-vol-1"),
        ("DELETE", "/v1/exports/move-vol-1"),
        ("POST", "/v1/volumes/vol-1/export/move-vol-1"),
        ("GET", "/v1/volumes/vol-1"),
        ("DELETE", "/v1/volumes/vol-1"),
        ("GET", "/v1/host"),
        ("GET", "/healthz"),
        ("PUT", "/v1/security-groups"),
    ]
    for method, path in refused:
        response = client.request(method, path, headers=bearer(token))
        assert response.status_code == 401, (method, path, response.text)
    for header in (f"Basic {token}", token, f"Bearer {token}x"):
        response = client.get("/v1/exports/move-vol-1/file", headers={"Authorization": header})
        assert response.status_code == 401, header
    assert sorted(p.name for p in (state / "volumes").iterdir()) == ["vol-1.qcow2", "vol-2.qcow2"]

    # Deleting the export kills its token; the other export's token is untouched. A new export under the same
    # id gets a new token, and the old one stays refused.
    assert client.delete("/v1/exports/move-vol-1", headers=AUTH).status_code == 204
    assert not token_file.exists()
    assert client.get("/v1/exports/move-vol-1/file", headers=bearer(token)).status_code == 401
    assert client.get("/v1/exports/move-vol-2/file", headers=bearer(two["download_token"])).status_code == 200
    again = export_volume(client, "vol-1")
    assert again["download_token"] != token
    assert client.get("/v1/exports/move-vol-1/file", headers=bearer(token)).status_code == 401
    assert (
        client.get("/v1/exports/move-vol-1/file", headers=bearer(again["download_token"])).status_code == 200
    )


def test_a_token_left_without_its_export_is_refused(agent: tuple[TestClient, Path]) -> None:
    """A token whose export file is gone (removed behind the agent's back) opens nothing; an export without a
    token (like a root-disk export, which the controller fetches with the agent's API token) opens to no
    download token."""
    client, state = agent
    token = export_volume(client, "vol-1")["download_token"]
    (state / "exports" / "move-vol-1.qcow2").unlink()
    assert client.get("/v1/exports/move-vol-1/file", headers=bearer(token)).status_code == 401

    other = export_volume(client, "vol-2")["download_token"]
    (state / "exports" / "move-vol-2.token").unlink()
    assert client.get("/v1/exports/move-vol-2/file", headers=bearer(other)).status_code == 401
    assert client.get("/v1/exports/move-vol-2/file", headers=bearer(load_or_create(state))).status_code == 200
