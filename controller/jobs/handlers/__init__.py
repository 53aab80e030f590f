"""Job handlers; importing this package registers every job kind."""

from controller.jobs.handlers import (  # noqa: F401
    backups,
    images,
    server_rebuild,
    server_resize,
    servers,
    snapshots,
    volumes,
)
