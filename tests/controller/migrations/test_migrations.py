"""The migrations build exactly the models' schema: Alembic's autogenerate finds nothing to add or change
between a database upgraded from empty and `SQLModel.metadata`, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from controller import migrations
from controller.db import make_engine
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()


def test_upgrading_an_empty_database_gives_the_models_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn)
            conn.commit()
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
            diff = migrations.schema_diff(conn)
        # Not empty: a model changed without a revision. Write one (controller/migrations/__init__.py says how).
        assert diff == []
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_every_table_and_upgrade_rebuilds_them(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn)
            conn.commit()
            command.downgrade(migrations.alembic_config(conn), "base")
            conn.commit()
            assert set(inspect(conn).get_table_names()) == {migrations.VERSION_TABLE}
            migrations.upgrade(conn)
            conn.commit()
            assert migrations.schema_diff(conn) == []
    finally:
        engine.dispose()
