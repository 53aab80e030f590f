"""Job handlers; importing this package registers every job kind."""

from controller.jobs.handlers import servers, volumes  # noqa: F401
