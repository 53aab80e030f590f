"""Calling an agent from a job: find the host's client, and turn agent errors into defined job failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from agent.client import AgentCallError, AgentClient, AgentUnreachable
from controller.jobs.registry import JobFailed
from controller.jobs.worker import JobContext
from controller.models.host import Host
from controller.services.hosts import host_state
from controller.services.servers import AGENT_FAILED, AGENT_UNREACHABLE

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_INTERVAL_S = 1.0


def agent_for(jctx: JobContext, host_id: str) -> AgentClient | None:
    """The client of a registered host, or None if the host is gone."""
    with jctx.session() as session:
        host = session.get(Host, host_id)
    return jctx.ctx.agents.for_host(host) if host is not None else None


@contextmanager
def agent_errors(host_id: str, what: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Agent errors become defined job failures whose reason names the host and the step."""
    try:
        yield
    except AgentCallError as exc:
        if missing_ok and exc.status == 404:
            return
        raise JobFailed(AGENT_FAILED, f"{what} failed on host {host_id}: {exc.message} ({exc.code})") from exc
    except AgentUnreachable as exc:
        raise JobFailed(AGENT_UNREACHABLE, f"{what}: host {host_id} is unreachable ({exc.reason})") from exc


def call_agent_patiently(
    jctx: JobContext, host_id: str, what: str, call: Callable[[AgentClient], T], *, missing_ok: bool = False
) -> T | None:
    """`call` on the host's agent, its errors mapped as `agent_errors` does; None for a 404 with `missing_ok`.

    An agent that cannot be reached while its host still counts as up is an agent being restarted (a crash,
    `kill -9`, an upgrade): the call is repeated every second until it answers, and fails for good once the
    host is down (no heartbeat for `host_dead_seconds`) or after twice that long. Only for idempotent calls
    (PUT of a whole spec, DELETE, power actions), which the agent redoes or finishes whatever it was doing when
    it died.
    """
    deadline: float | None = None
    while True:
        client = agent_for(jctx, host_id)
        if client is None:
            raise JobFailed(AGENT_UNREACHABLE, f"{what}: host {host_id} is no longer registered")
        try:
            with agent_errors(host_id, what, missing_ok=missing_ok):
                return call(client)
            return None  # a 404 that missing_ok accepted
        except JobFailed as exc:
            now = time.monotonic()
            deadline = deadline or now + 2 * jctx.ctx.settings.host_dead_seconds
            if exc.code != AGENT_UNREACHABLE or now >= deadline or not _host_up(jctx, host_id):
                raise
            log.warning("%s: host %s does not answer but is not down yet; retrying: %s", what, host_id, exc)
        time.sleep(RETRY_INTERVAL_S)


def _host_up(jctx: JobContext, host_id: str) -> bool:
    with jctx.session() as session:
        host = session.get(Host, host_id)
    return host is not None and host_state(host, jctx.ctx.settings.host_dead_seconds) == "up"
