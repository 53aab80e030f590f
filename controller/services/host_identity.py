"""Which agent a registered host id belongs to: a heartbeat with the shared join token must prove it.

Every host started with the shared bootstrap token holds it, so that token alone cannot say which host is
calling. Once a host is registered, a register/heartbeat for its id with the shared token must carry the API
secret the controller has on record for it (`HostInfo.agent_token`: only that agent and the controller know
it, and the agent keeps it across restarts in `<state>/api-token`). Without that proof nothing of the host's
record changes, so no other host can take its URL and receive the controller's calls meant for it. A host
registered before agents reported a secret keeps its URL until it reports one. A per-host join token bound to
the host is proof enough by itself (`controller.services.join_tokens.admit`).

`forget` is the admin's way out when the agent itself lost its secret (a reinstalled host): the host is marked
down and the next agent registering its id is trusted as on first registration.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, timedelta

from sqlmodel import Session

from agent.schemas import HostInfo
from controller.errors import Conflict, NotFound, Unauthorized
from controller.models.common import utcnow
from controller.models.host import Host

log = logging.getLogger(__name__)

AGENT_UNAUTHORIZED = "Agent.0401"
HOST_CONFLICT = "Agent.0409"
HOST_NOT_FOUND = "Ecs.0114"
FORGOTTEN_URL = ""  # a forgotten host's: nobody to call, and the next agent registering the id claims it


def check_shared_claim(host: Host, info: HostInfo) -> None:
    """401/409 unless a shared-token register/heartbeat for the existing `host` comes from its own agent."""
    if host.agent_token:
        presented = info.agent_token or ""
        if not hmac.compare_digest(presented.encode(), host.agent_token.encode()):
            log.warning("refused a registration claiming host %s from %s: not its agent", host.id, info.url)
            raise Unauthorized(
                f"host {host.id} is registered to another agent: a heartbeat for it must carry that agent's API "
                f"token; if the host was reinstalled, an admin runs `labcloud host forget {host.id}` first",
                code=AGENT_UNAUTHORIZED,
            )
        if info.url != host.url:
            log.info("host %s moved from %s to %s (its agent proved itself)", host.id, host.url, info.url)
        return
    if host.url != FORGOTTEN_URL and info.url != host.url:  # no secret on record to prove anything with
        log.warning(
            "refused moving host %s (no API token on record) from %s to %s", host.id, host.url, info.url
        )
        raise Conflict(
            f"host {host.id} is registered at {host.url}; its URL cannot change before its agent reports an API "
            f"token, unless an admin runs `labcloud host forget {host.id}` first",
            code=HOST_CONFLICT,
        )


def forget(session: Session, host_id: str, dead_after: float) -> Host:
    """Drop the host's URL and API secret on record and mark it down, so the next agent registering its id
    is accepted as its own (and the controller calls nobody meanwhile)."""
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound(f"Host {host_id} could not be found.", code=HOST_NOT_FOUND)
    host.agent_token, host.url = None, FORGOTTEN_URL
    # "down" everywhere is a heartbeat older than `dead_after` (scheduler, reconciler, views).
    silent_since = utcnow() - timedelta(seconds=dead_after + 1)
    last = host.last_heartbeat
    if (last if last.tzinfo is not None else last.replace(tzinfo=UTC)) > silent_since:  # SQLite: naive UTC
        host.last_heartbeat = silent_since
    session.add(host)
    session.flush()
    log.info("host %s forgotten: the next agent registering it is trusted", host_id)
    return host
