"""Schema migrations (Alembic): bring a database to the models' schema, or recognise one that already is.

`controller.db.create_schema` is the one entry point; this module holds the Alembic plumbing it uses. New
revisions: `alembic -c controller/migrations/alembic.ini revision --autogenerate -m "what changed"` with
`LABCLOUD_DATABASE_URL` (or the default SQLite file) pointing at a database at the current head, then read and
tidy the generated file. `tests/controller/test_migrations.py` fails while the models and the revisions differ.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for this package; with `connection`, env.py migrates through it."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None, "controller/migrations/versions has no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> None:
    """Run every migration not yet applied, up to head, in the caller's transaction."""
    command.upgrade(alembic_config(connection), "head")


def stamp_head(connection: Connection) -> None:
    """Record that the schema is at head without running migrations (it was made by `create_all`)."""
    MigrationContext.configure(connection).stamp(_script(), "head")


def schema_diff(connection: Connection) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models (empty when they match)."""
    import controller.models  # noqa: F401  (registers every table)

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": False}
    )
    return [d for d in compare_metadata(context, SQLModel.metadata) if not _is_version_table(d)]


def _is_version_table(diff: Any) -> bool:
    table = diff[1] if isinstance(diff, tuple) and len(diff) > 1 else None
    return getattr(table, "name", None) == VERSION_TABLE
