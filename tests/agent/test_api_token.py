"""The agent's API token: made once in the state directory (0600), accepted as a bearer token besides the join
token by the real agent app, and nothing else is."""

from __future__ import annotations

import stat
from pathlib import Path

from fastapi.testclient import TestClient

from agent.api_token import API_TOKEN_FILE, load_or_create
from agent.main import create_app
from tests.agent.test_api import TOKEN, make_settings


def test_the_token_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "state")
    assert len(first) >= 40 and load_or_create(tmp_path / "state") == first
    path = tmp_path / "state" / API_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [API_TOKEN_FILE]  # no temporary files left


def test_the_agent_accepts_its_api_token_and_its_join_token_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        api_token = load_or_create(settings.state_dir)
        for token, status in ((TOKEN, 200), (api_token, 200), ("guess", 401), (api_token + "x", 401)):
            response = client.get("/v1/host", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == status, (token, response.text)
