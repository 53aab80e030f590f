"""`python -m controller`: serve the API with uvicorn, settings from `LABCLOUD_…` variables."""

from __future__ import annotations

import uvicorn

from controller.config import Settings
from controller.logs import configure_logging
from controller.main import create_app
from controller.schema_process import prepare_schema


def main() -> None:
    configure_logging()
    settings = Settings()
    prepare_schema(settings)  # in a child process: Alembic never loads into the long-running daemon
    app = create_app(settings, schema_ready=True)
    uvicorn.run(app, host=settings.listen_host, port=settings.listen_port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
