"""Revision 0009 adds the host usage counters filled from the servers already placed, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import command

from controller import migrations
from controller.db import make_engine
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()


def _row(table: sa.Table, **values: Any) -> dict[str, Any]:
    """`values`, plus a filler for every other NOT NULL column without a default (this test reads none)."""
    filler: dict[str, Any] = {}
    for column in table.columns:
        if column.name in values or column.nullable or column.server_default is not None:
            continue
        python_type = column.type.python_type if not isinstance(column.type, sa.JSON) else list
        filler[column.name] = {
            int: 0,
            bool: True,
            list: [],
            str: f"{column.name}-x",
        }.get(python_type, sa.func.now())
    return {**filler, **values}


def test_0009_fills_the_counters_from_the_live_servers(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            command.upgrade(migrations.alembic_config(conn), "0008")
            meta = sa.MetaData()
            host, flavor, server = (
                sa.Table(n, meta, autoload_with=conn) for n in ("host", "flavor", "server")
            )
            for host_id in ("a", "b", "empty"):
                conn.execute(
                    host.insert().values(_row(host, id=host_id, vcpus=8, memory_mib=4096, disk_gib=100))
                )
            conn.execute(flavor.insert().values(_row(flavor, id="f1", name="f1", vcpus=1, ram_mib=256)))
            conn.execute(flavor.insert().values(_row(flavor, id="f2", name="f2", vcpus=2, ram_mib=1024)))
            placed = [
                ("s1", "a", "f1", 10, "ACTIVE"),
                ("s2", "a", "f2", 20, "ERROR"),
                ("s3", "b", "f2", 5, "SHUTOFF"),
            ]
            gone = [("s4", "a", "f2", 40, "DELETED"), ("s5", None, "f1", 10, "BUILD")]
            for sid, host_id, fid, root, status in placed + gone:
                values = dict(id=sid, host_id=host_id, flavor_id=fid, root_volume_size=root, status=status)
                conn.execute(server.insert().values(_row(server, **values)))
            conn.commit()

            migrations.upgrade(conn)
            conn.commit()
            rows = conn.execute(
                sa.text(
                    "SELECT id, claimed_vcpus, claimed_ram_mib, claimed_disk_gib, claimed_servers FROM host"
                )
            ).all()
        assert {r[0]: tuple(r[1:]) for r in rows} == {
            "a": (3, 1280, 30, 2),
            "b": (2, 1024, 5, 1),
            "empty": (0, 0, 0, 0),
        }
    finally:
        engine.dispose()
