"""`create_schema` on real databases: new ones, ones under migrations already, ones made by `create_all` before
migrations existed, and (PostgreSQL) controllers starting at once."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel

import controller.models  # noqa: F401  (registers every table)
from controller import migrations
from controller.db import SchemaMismatch, create_schema, make_engine, session_scope
from controller.models.project import Project
from tests.support.postgres import on_both_databases


@on_both_databases()
def test_a_new_database_gets_the_head_schema_and_keeps_its_rows_on_the_next_start(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        with session_scope(engine) as session:
            session.add(Project(id="p1", name="one"))
        create_schema(engine)  # the next start: an upgrade with nothing to do
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
            assert migrations.schema_diff(conn) == []
        with Session(engine) as session:
            assert session.get(Project, "p1") is not None
    finally:
        engine.dispose()


@on_both_databases()
def test_a_database_made_by_create_all_before_migrations_is_adopted(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        SQLModel.metadata.create_all(engine)
        with session_scope(engine) as session:
            session.add(Project(id="p1", name="one"))
        create_schema(engine)
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
        with Session(engine) as session:
            assert session.get(Project, "p1") is not None
    finally:
        engine.dispose()


@on_both_databases()
def test_an_older_database_without_migrations_is_refused_with_what_differs(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        SQLModel.metadata.create_all(engine)
        with engine.begin() as conn:  # as it was before hosts had a disabled_reason
            conn.execute(text("ALTER TABLE host DROP COLUMN disabled_reason"))
        with pytest.raises(SchemaMismatch, match=r"add_column host\.disabled_reason.*new, empty database"):
            create_schema(engine)
        with engine.connect() as conn:
            assert migrations.VERSION_TABLE not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_controllers_starting_together_create_the_schema_once(database_url: str) -> None:
    engines = [make_engine(database_url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        try:
            create_schema(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with engines[0].connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).all()
            assert [r[0] for r in rows] == [migrations.head_revision()]
            assert migrations.schema_diff(conn) == []
    finally:
        for engine in engines:
            engine.dispose()
