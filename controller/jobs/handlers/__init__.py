"""Job handlers; importing this package registers every job kind."""

from controller.jobs.handlers import servers  # noqa: F401
