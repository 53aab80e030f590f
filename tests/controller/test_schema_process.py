"""The controller daemon's schema work in a child process (`controller.schema_process`): same outcomes as
`create_schema` in-process, and Alembic never loaded into the daemon itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel

import controller.models  # noqa: F401  (registers every table)
from controller import migrations
from controller.config import Settings
from controller.db import SchemaMismatch, make_engine, session_scope
from controller.models.project import Project
from controller.schema_process import prepare_schema
from tests.support.postgres import on_both_databases


@on_both_databases()
def test_the_child_makes_a_new_database_at_head_and_keeps_its_rows_on_the_next_start(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    prepare_schema(settings)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            session.add(Project(id="p1", name="one"))
        prepare_schema(settings)  # the next start
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
            assert migrations.schema_diff(conn) == []
        with Session(engine) as session:
            assert session.get(Project, "p1") is not None
    finally:
        engine.dispose()


def test_the_default_sqlite_file_is_made_under_a_new_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "new-home", database_url=None)
    prepare_schema(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
    finally:
        engine.dispose()


def test_an_older_database_without_migrations_is_refused_with_the_childs_message(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=None)
    settings.controller_dir.mkdir(parents=True)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        SQLModel.metadata.create_all(engine)
        with engine.begin() as conn:  # as it was before hosts had a disabled_reason
            conn.execute(text("ALTER TABLE host DROP COLUMN disabled_reason"))
        with pytest.raises(SchemaMismatch, match=r"add_column host\.disabled_reason.*new, empty database"):
            prepare_schema(settings)
        with engine.connect() as conn:
            assert migrations.VERSION_TABLE not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


# `python -m controller` as it is, with uvicorn.run replaced by a run of the app's lifespan and one request.
_DAEMON = """
import sys
import uvicorn
from fastapi.testclient import TestClient

def run(app, **_):
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "mako"))) or "none")

uvicorn.run = run
from controller.__main__ import main
main()
"""


def test_the_daemon_prepares_the_schema_without_loading_alembic(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCLOUD_")}
    env["LABCLOUD_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-P", "-c", _DAEMON], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["none"], done.stdout
    assert "created the database schema at revision" in done.stderr  # the child's log line reached ours
    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'controller' / 'labcloud.db'}")
    try:
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
    finally:
        engine.dispose()
