"""View stamps (`controller.models.view_stamp`): the database bumps a project's stamp on every insert, update
and delete of what server views are made of, whether the schema came from `create_all` or the migrations, on
SQLite and PostgreSQL; and the bump of a PostgreSQL transaction lands when it commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controller import migrations
from controller.db import create_schema, make_engine
from controller.models.common import utcnow
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.network import SecurityGroup
from controller.models.view_stamp import ALL_PROJECTS, ViewStamp
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()


def _by_create_all(engine: Engine) -> None:
    create_schema(engine)


def _by_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        migrations.upgrade(conn)
        conn.commit()


@pytest.fixture(params=[_by_create_all, _by_migrations], ids=["create_all", "migrations"])
def engine(request: pytest.FixtureRequest, database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    build: Callable[[Engine], None] = request.param
    build(made)
    yield made
    made.dispose()


def _stamp(engine: Engine, project_id: str) -> int:
    with Session(engine) as session:
        return session.exec(select(ViewStamp.version).where(ViewStamp.project_id == project_id)).first() or 0


def test_every_write_bumps_the_stamp_of_its_project(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(SecurityGroup(id="sg-1", project_id="p1", name="web"))
        session.commit()
        assert (_stamp(engine, "p1"), _stamp(engine, "p2")) == (1, 0)
        group = session.get(SecurityGroup, "sg-1")
        assert group is not None
        group.name = "db"
        session.commit()
        assert _stamp(engine, "p1") == 2
        session.delete(group)
        session.commit()
        assert _stamp(engine, "p1") == 3
        # Flavors are everyone's: they bump the shared stamp.
        before = _stamp(engine, ALL_PROJECTS)
        session.add(Flavor(id="x1.big", name="x1.big", vcpus=64, ram_mib=1024))
        session.commit()
        assert _stamp(engine, ALL_PROJECTS) == before + 1
    # Writes that skip the ORM are counted too.
    with engine.begin() as conn:
        conn.execute(text("UPDATE flavor SET vcpus = 32 WHERE id = 'x1.big'"))
    assert _stamp(engine, ALL_PROJECTS) == before + 2


def test_hosts_bump_when_taken_out_or_renamed_not_on_heartbeats(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(
            Host(
                id="h1",
                hostname="hv1",
                url="http://192.0.2.1:8081",
                accelerator="tcg",
                vcpus=2,
                memory_mib=2048,
                disk_gib=20,
                availability_zone="az1",
            )
        )
        session.commit()
    added = _stamp(engine, ALL_PROJECTS)
    with engine.begin() as conn:
        conn.execute(text("UPDATE host SET last_heartbeat = :now"), {"now": utcnow()})
    assert _stamp(engine, ALL_PROJECTS) == added
    with Session(engine) as session:  # a heartbeat as `register_host` records it: the same name again
        host = session.get(Host, "h1")
        assert host is not None
        host.hostname, host.last_heartbeat = "hv1", utcnow()
        session.commit()
    assert _stamp(engine, ALL_PROJECTS) == added
    with engine.begin() as conn:
        conn.execute(text("UPDATE host SET enabled = false"))
    assert _stamp(engine, ALL_PROJECTS) == added + 1
    with engine.begin() as conn:
        conn.execute(text("UPDATE host SET hostname = 'hv2'"))
        conn.execute(text("DELETE FROM host"))
    assert _stamp(engine, ALL_PROJECTS) == added + 3


def test_an_open_transaction_does_not_show_its_bump_to_others(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(SecurityGroup(id="sg-1", project_id="p1", name="web"))
        session.commit()
    with engine.connect() as writer:
        writer.execute(text("UPDATE securitygroup SET name = 'db' WHERE id = 'sg-1'"))
        assert _stamp(engine, "p1") == 1  # not committed: the rows and the stamp change together
        writer.commit()
    assert _stamp(engine, "p1") == 2
