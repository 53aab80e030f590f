"""Calling an agent from a job: find the host's client, and turn agent errors into defined job failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent.client import AgentCallError, AgentClient, AgentUnreachable
from controller.jobs.registry import JobFailed
from controller.jobs.worker import JobContext
from controller.models.host import Host
from controller.services.servers import AGENT_FAILED, AGENT_UNREACHABLE


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
