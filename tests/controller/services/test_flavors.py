"""Flavor seeding and lookup on a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controller.db import create_schema, make_engine, session_scope
from controller.errors import NotFound
from controller.models.flavor import Flavor
from controller.services import flavors


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'flavors.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def test_seeding_is_idempotent_and_keeps_admin_edits(engine: Engine) -> None:
    with session_scope(engine) as session:
        assert len(flavors.seed_flavors(session)) == len(flavors.DEFAULT_FLAVORS)
    with session_scope(engine) as session:
        edited = session.get(Flavor, "s6.small.1")
        assert edited is not None
        edited.ram_mib = 1536
        session.delete(session.get(Flavor, "s6.nano.1"))
    with session_scope(engine) as session:
        assert [f.id for f in flavors.seed_flavors(session)] == ["s6.nano.1"]
    with Session(engine) as session:
        assert flavors.get_flavor(session, "s6.small.1").ram_mib == 1536
        assert min(f.ram_mib for f in flavors.list_flavors(session)) >= 128


def test_unknown_and_disabled_flavors_are_404_for_new_servers(engine: Engine) -> None:
    with session_scope(engine) as session:
        flavors.seed_flavors(session)
        disabled = session.get(Flavor, "s6.large.2")
        assert disabled is not None
        disabled.disabled = True
    with Session(engine) as session:
        for flavor_id in ("m1.tiny", "s6.large.2"):
            with pytest.raises(NotFound) as info:
                flavors.get_flavor(session, flavor_id)
            assert (info.value.status, info.value.code) == (404, "Ecs.0038")
        assert flavors.get_flavor(session, "s6.large.2", include_disabled=True).vcpus == 2
        assert "s6.large.2" not in [f.id for f in flavors.list_flavors(session)]
