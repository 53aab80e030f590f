"""The schema work of a starting controller daemon, done in a short-lived child process.

Bringing a database to the models' schema needs Alembic, and through it Mako and Pygments: ~15 MiB of code that a
long-running controller would keep resident for its whole life although it uses it once, at start. So the daemon
(`python -m controller`) runs `create_schema` in a child (`python -m controller.schema_process`) and then builds
its app on the schema that child left (`create_app(..., schema_ready=True)`). Tests and in-process controllers
keep calling `create_schema` directly; the work and its outcomes are the same.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from controller.config import Settings
from controller.db import SchemaMismatch

log = logging.getLogger(__name__)

# How the parent names the database to the child: in the environment, so a password never shows in `ps`.
DATABASE_URL_VAR = "LABCLOUD_SCHEMA_DATABASE_URL"
_MISMATCH_EXIT = 3


def prepare_schema(settings: Settings) -> None:
    """Bring the settings' database to the head schema in a child process. Raises SchemaMismatch with the
    child's message for a database it refuses, RuntimeError if it failed otherwise (its log says why)."""
    settings.controller_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    argv = [sys.executable, *(["-P"] if sys.flags.safe_path else []), "-m", __name__]
    env = {**os.environ, DATABASE_URL_VAR: settings.sqlalchemy_url}
    # The child's log lines go to our stderr (the controller log); only a refusal's message comes back on stdout.
    done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode == _MISMATCH_EXIT:
        raise SchemaMismatch(done.stdout.strip())
    if done.returncode != 0:
        raise RuntimeError(
            f"preparing the database schema failed (python -m {__name__} exited {done.returncode}); "
            "its error is in the log above"
        )


def main() -> int:
    from controller.db import create_schema, make_engine
    from controller.logs import configure_logging

    configure_logging()
    engine = make_engine(os.environ[DATABASE_URL_VAR])
    try:
        create_schema(engine)
    except SchemaMismatch as exc:
        print(exc, flush=True)
        return _MISMATCH_EXIT
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
