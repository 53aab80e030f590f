"""Fixtures shared by the agent's service and API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.main import create_app
from tests.agent.test_api import AUTH, make_settings
from tests.agent.test_service import Rig, make_base_image


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """One agent service on a fresh test-driver node with a tiny base image (see `Rig`)."""
    r = Rig(tmp_path, make_base_image(tmp_path))
    yield r
    r.close()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The agent's HTTP API in-process, every request carrying the API token."""
    app = create_app(make_settings(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers.update(AUTH)
        yield c
