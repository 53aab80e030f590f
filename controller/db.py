"""Database engine, schema and sessions. SQLite by default; PostgreSQL by URL (`postgresql+psycopg://…`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel, create_engine

log = logging.getLogger(__name__)

# Any fixed number: the PostgreSQL advisory lock that serialises schema changes of controllers starting together.
_SCHEMA_LOCK_KEY = 0x6C616263  # "labc"


class SchemaMismatch(RuntimeError):
    """An existing database without migration history whose tables differ from this version's models."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def create_schema(engine: Engine) -> None:
    """Bring the database to the models' schema: the one call the controller and tests make at start.

    - brand-new (no tables at all): `create_all`, then stamp the Alembic head. Same result as running every
      migration (a test checks that), and much faster for the many throwaway databases tests make;
    - under Alembic already: upgrade to head;
    - made by `create_all` before labcloud had migrations: stamped when its tables match the models exactly,
      otherwise SchemaMismatch says what differs (before 1.0 such a database is not converted).
    """
    import controller.models  # noqa: F401  (registers every table)
    from controller import migrations

    with engine.connect() as conn:
        _lock_schema(conn)
        tables = set(inspect(conn).get_table_names())
        if not tables:
            SQLModel.metadata.create_all(conn)
            migrations.stamp_head(conn)
            log.info("created the database schema at revision %s", migrations.head_revision())
        elif migrations.VERSION_TABLE in tables:
            before = migrations.current_revision(conn)
            migrations.upgrade(conn)
            if before != migrations.head_revision():
                log.info("migrated the database from %s to %s", before, migrations.head_revision())
        else:
            _adopt_legacy(conn, engine)
        conn.commit()


def _lock_schema(conn: Connection) -> None:
    """Two controllers starting at once against one PostgreSQL: the second waits for the first's schema work
    (the lock ends with the transaction). SQLite deployments run one controller."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})


def _adopt_legacy(conn: Connection, engine: Engine) -> None:
    from controller import migrations

    diff = migrations.schema_diff(conn)
    if diff:
        shown = "; ".join(describe_change(d) for d in diff[:8])
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise SchemaMismatch(
            f"The database {engine.url.render_as_string(hide_password=True)} was created before labcloud "
            f"had schema migrations and differs from this version's schema: {shown}{more}. Before 1.0 such "
            "a database is not converted: keep a copy of it and start this version with a new, empty database."
        )
    migrations.stamp_head(conn)
    log.info("adopted a database made before migrations: stamped revision %s", migrations.head_revision())


def describe_change(diff: Any) -> str:
    """One autogenerate difference in a few words, e.g. `add_column host.disabled_reason`."""
    if isinstance(diff, list):  # modify_* changes of one column come grouped
        return ", ".join(describe_change(d) for d in diff)
    kind, *rest = diff
    if kind in ("add_column", "remove_column"):
        return f"{kind} {rest[1]}.{rest[2].name}"
    if kind.startswith("modify_"):
        return f"{kind} {rest[1]}.{rest[2]}"
    obj = rest[0]
    table = getattr(obj, "table", None)
    name = getattr(obj, "name", None) or "(unnamed)"
    return f"{kind} {table.name + '.' if table is not None else ''}{name}"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
