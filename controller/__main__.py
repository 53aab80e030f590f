"""`python -m controller`: serve the API with uvicorn, settings from `LABCLOUD_…` variables."""

from __future__ import annotations

import uvicorn

from controller.config import Settings
from controller.logs import configure_logging
from controller.main import create_app


def main() -> None:
    configure_logging()
    settings = Settings()
    app = create_app(settings)
    uvicorn.run(app, host=settings.listen_host, port=settings.listen_port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
