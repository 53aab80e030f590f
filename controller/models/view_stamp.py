"""View stamps: a per-project counter the database itself bumps on every write to what server views are made of.

Cached views (`services.server_view_cache`) are keyed by the stamps they were read after, so a cached page is
never served once anything in it may have changed, whichever controller or code path wrote it. Triggers do the
bumping: no write path can forget, and two controllers sharing one PostgreSQL see the same counter.

- Tables with a `project_id` bump their project's row; flavors and hosts, shared by every project, bump the
  row `*` (hosts only when taken out or back or renamed: heartbeats would bump it every few seconds, and the
  state they imply goes stale with time alone, which the cache checks itself).
- SQLite: plain row triggers (SQLite has one writer at a time, so the counter costs no extra waiting).
- PostgreSQL: deferred constraint triggers, run at commit: the counter row is the last lock a transaction
  takes and it holds it only while committing, so it adds no lock cycles (deadlocks) between writers.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

ALL_PROJECTS = "*"

# The tables server views are read from, and the project whose views a row is part of.
STAMPED_TABLES: dict[str, str | None] = {
    "server": "project_id",
    "port": "project_id",
    "eip": "project_id",
    "volume": "project_id",
    "securitygroup": "project_id",
    "flavor": None,  # shared: ALL_PROJECTS
    "host": None,
}
# Only these columns' updates bump (every write of the other tables does).
_UPDATED_COLUMNS = {"host": "enabled, hostname"}

_BUMP = (
    "INSERT INTO view_stamp (project_id, version) VALUES ({project}, 1) "
    "ON CONFLICT (project_id) DO UPDATE SET version = view_stamp.version + 1"
)


class ViewStamp(SQLModel, table=True):
    __tablename__ = "view_stamp"

    project_id: str = Field(primary_key=True)  # or ALL_PROJECTS
    version: int = 0


def trigger_ddl(dialect: str) -> list[str]:
    """The statements that create the triggers (and, on PostgreSQL, their function)."""
    if dialect == "sqlite":
        statements = []
        for table, column in STAMPED_TABLES.items():
            for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                project = f"{row}.{column}" if column else f"'{ALL_PROJECTS}'"
                event_ = (
                    f"UPDATE OF {_UPDATED_COLUMNS[table]}"
                    if op == "UPDATE" and table in _UPDATED_COLUMNS
                    else op
                )
                statements.append(
                    f"CREATE TRIGGER view_stamp_{table}_{op.lower()} AFTER {event_} ON {table} FOR EACH ROW "
                    f"BEGIN {_BUMP.format(project=project)}; END"
                )
        return statements
    function = f"""
CREATE OR REPLACE FUNCTION view_stamp_bump() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE project text;
BEGIN
  IF TG_NARGS > 0 THEN project := TG_ARGV[0];
  ELSIF TG_OP = 'DELETE' THEN project := OLD.project_id;
  ELSE project := NEW.project_id;
  END IF;
  {_BUMP.format(project="project")};
  RETURN NULL;
END $$"""
    statements = [function]
    for table, column in STAMPED_TABLES.items():
        argument = "" if column else f"'{ALL_PROJECTS}'"
        update = f"UPDATE OF {_UPDATED_COLUMNS[table]}" if table in _UPDATED_COLUMNS else "UPDATE"
        statements.append(
            f"CREATE CONSTRAINT TRIGGER view_stamp_{table} AFTER INSERT OR {update} OR DELETE ON {table} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION view_stamp_bump({argument})"
        )
    return statements


def drop_ddl(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [
            f"DROP TRIGGER IF EXISTS view_stamp_{table}_{op}"
            for table in STAMPED_TABLES
            for op in ("insert", "update", "delete")
        ]
    return [f"DROP TRIGGER IF EXISTS view_stamp_{table} ON {table}" for table in STAMPED_TABLES] + [
        "DROP FUNCTION IF EXISTS view_stamp_bump()"
    ]


def create_triggers(connection: Connection) -> None:
    """(Re)create the triggers: idempotent."""
    dialect = connection.dialect.name
    for statement in drop_ddl(dialect) + trigger_ddl(dialect):
        connection.exec_driver_sql(statement)


@event.listens_for(SQLModel.metadata, "after_create")
def _after_create_all(_metadata: object, connection: Connection, **_: object) -> None:
    """`create_all` makes a new database at head, so it makes the triggers as migration 0010 does."""
    create_triggers(connection)
