"""Alembic's entry script: migrate through the connection the controller passes in, or (from the `alembic`
command line) through an engine built from the controller's Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import controller.models  # noqa: F401  (registers every table on SQLModel.metadata)
from controller.config import Settings
from controller.db import make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: migrations there copy the table ("batch" mode).
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(Settings().sqlalchemy_url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("labcloud migrations run online only (against a database)")
main()
