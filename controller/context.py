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

if TYPE_CHECKING:
    from controller.jobs.worker import JobWorkers
    from controller.models.host import Host


@dataclass
class AgentClients:
    """One typed client per agent URL, created on first use."""

    token: str
    _clients: dict[str, AgentClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_host(self, host: Host) -> AgentClient:
        with self._lock:
            client = self._clients.get(host.url)
            if client is None:
                client = self._clients[host.url] = AgentClient(host.url, self.token)
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

    def kick_jobs(self) -> None:
        if self.workers is not None:
            self.workers.kick()
