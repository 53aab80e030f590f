"""`python -m agent`: run the agent with settings from `LABCLOUD_AGENT_*` environment variables."""

from __future__ import annotations

import logging

import uvicorn

from agent.config import AgentSettings
from agent.main import configure_logging, create_app


def main() -> None:
    settings = AgentSettings()  # type: ignore[call-arg]  # join_token comes from the environment
    configure_logging(getattr(logging, settings.log_level.upper(), logging.INFO))
    app = create_app(settings)
    # log_config=None keeps our handler (with request ids); access_log=False: every request is logged by us
    # only when it matters, and heartbeat-rate polling would otherwise flood the log.
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
