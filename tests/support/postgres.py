"""A private PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temporary directory, reachable only on a
unix socket there (no TCP port), owned by the `postgres` system user when the tests run as root.

Missing binaries are an error, not a skip: `./install.sh --for-tests` installs them.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
PORT = 5432  # only names the socket file: the cluster listens on no TCP port
START_TIMEOUT_S = 120


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl (Debian keeps them off PATH, under /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    on_path = shutil.which("initdb")
    if found:
        return Path(found[-1]).parent
    if on_path:
        return Path(on_path).resolve().parent  # the real bindir, where psql and pg_ctl are too
    raise RuntimeError(
        "PostgreSQL is not installed (no initdb): the PostgreSQL test cases need it; "
        "run ./install.sh --for-tests (apt-get install postgresql)"
    )


class PostgresCluster:
    """One running cluster; `create_database()` hands out fresh empty databases by SQLAlchemy URL."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.socket_dir = root / "run"
        self._demote = _as_postgres_user() if os.geteuid() == 0 else None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}&port={PORT}"

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self._demote is not None:
            pw = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.socket_dir, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        # Durability is not what these tests check: skip fsyncs. Many engines run at once: allow connections.
        options = (
            f"-c listen_addresses='' -k {self.socket_dir} -p {PORT} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-w", "-t", str(START_TIMEOUT_S),
            "-l", str(self.root / "server.log"), "-o", options,
        )  # fmt: skip
        log.info("test PostgreSQL running in %s", self.root)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"lctest_{uuid.uuid4().hex[:12]}"
        self._psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        # FORCE ends connections a test left open (an engine it did not dispose of).
        self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _psql(self, sql: str) -> None:
        self._run("psql", "-h", str(self.socket_dir), "-p", str(PORT), "-U", SUPERUSER, "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-q", "-c", sql)  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            preexec_fn=self._demote,
            cwd=self.root,
            check=False,
        )
        if result.returncode != 0:
            logfile = self.root / "server.log"
            server_log = logfile.read_text()[-3000:] if logfile.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}\n{server_log}"
            )


def _as_postgres_user() -> Callable[[], None]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` system user."""
    try:
        pw = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise RuntimeError(
            "there is no 'postgres' system user to run the test cluster as; run ./install.sh --for-tests"
        ) from None

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setgroups([])
        os.setuid(pw.pw_uid)

    return demote


def start_cluster() -> PostgresCluster:
    """Start a cluster in a new temporary directory (the caller stops it with `stop_cluster`)."""
    bindir = find_bindir()
    # Not under pytest's tmp dir: the postgres user must be able to enter every parent directory.
    root = Path(tempfile.mkdtemp(prefix="lctest-pg-"))
    os.chmod(root, 0o700)
    cluster = PostgresCluster(root, bindir)
    try:
        cluster.start()
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: PostgresCluster) -> None:
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)


BACKENDS = ("sqlite", "postgresql")


def on_both_databases() -> pytest.MarkDecorator:
    """Run a test (or, as `pytestmark`, a module) once on SQLite and once on PostgreSQL: it parametrizes the
    `db_backend` fixture of tests/controller/conftest.py, which `database_url` and `api` follow."""
    return pytest.mark.parametrize("db_backend", BACKENDS, indirect=True)
