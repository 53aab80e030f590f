"""`labcloud server create --az ZONE` places the server in that zone; `server list` shows its zone and host.

A real controller and two real agents (libvirt's test driver) in zones lab-1a and lab-1b.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from controller.models.server import Server
from tests.controller.conftest import AgentFactory


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def _servers(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(Server)).one())


def _rows(out: str) -> list[dict[str, str]]:
    """A CLI table as dicts (no cell here contains spaces)."""
    lines = [line.split() for line in out.splitlines() if line.strip()]
    header_at = next(i for i, cells in enumerate(lines) if cells[:2] == ["ID", "NAME"])
    header = lines[header_at]
    return [dict(zip(header, cells, strict=True)) for cells in lines[header_at + 1 :]]


def test_server_create_az_places_in_that_zone_and_list_shows_zone_and_host(
    cli, api, agents: AgentFactory
) -> None:  # type: ignore[no-untyped-def]
    agents.start("h1", availability_zone="lab-1a")
    h2 = agents.start("h2", availability_zone="lab-1b")
    for name in ("z1", "z2"):
        code, out, err = cli("server", "create", "--name", name, "--az", "lab-1b", "--wait")
        assert code == 0, (out, err)
    code, out, _ = cli("server", "list")
    assert code == 0
    rows = _rows(out)
    assert sorted(r["NAME"] for r in rows) == ["z1", "z2"]
    assert {(r["STATUS"], r["AZ"], r["HOST"]) for r in rows} == {("ACTIVE", "lab-1b", h2.host_id)}

    # The long spelling still works; a zone that does not exist is the API's error, and nothing is created.
    before = _servers(api)
    code, out, err = cli("server", "create", "--name", "z3", "--availability-zone", "nowhere", "--wait")
    assert code == 1 and err.startswith("error Ecs.0005: ") and "nowhere" in err, (out, err)
    assert _servers(api) == before
