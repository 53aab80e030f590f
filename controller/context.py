"""What the controller's routes and job handlers share: settings, the database, the job workers, agent clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from agent.client import AgentClient
from controller.auth.deps import CredentialCache
from controller.config import Settings
from controller.ratelimit import RateLimiter
from controller.services.server_view_cache import ServerViewCache

if TYPE_CHECKING:
    from controller.jobs.worker import JobWorkers
    from controller.models.host import Host


@dataclass
class AgentClients:
    """One typed client per agent URL and bearer secret, created on first use.

    `token` is the shared join token; a host that reported its own `agent_token` is called with that.
    """

    token: str
    _clients: dict[tuple[str, str], AgentClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_host(self, host: Host) -> AgentClient:
        key = (host.url, host.agent_token or self.token)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = AgentClient(*key)
            return client


@dataclass
class ControllerContext:
    settings: Settings
    engine: Engine
    credentials: CredentialCache
    join_token: str
    agents: AgentClients
    rate_limiter: RateLimiter | None = None  # per access key; None: unlimited
    workers: JobWorkers | None = None
    view_cache: ServerViewCache = field(default_factory=ServerViewCache)

    def kick_jobs(self) -> None:
        if self.workers is not None:
            self.workers.kick()
