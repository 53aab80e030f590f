"""Rendered server views (listings and single servers), kept while nothing they were made of has changed.

A view is a pure function of the project's rows (servers, ports, EIPs, volumes, groups, flavors), which the
database stamps (`models.view_stamp`), and of the state of the hosts its servers run on, which changes with
time alone (a host whose heartbeats stop turns DOWN). So a view is kept under (project, filters or server id,
stamps) and served again only while the stamps are the same and its hosts look as they did when rendered.

The stamps are read before the rows: a page rendered from rows newer than its stamps is harmless (nobody
asks for those stamps once the write has committed), one older than them cannot happen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, or_
from sqlmodel import Session, col, select

from controller.api.rendering import render_list
from controller.models.view_stamp import ALL_PROJECTS, ViewStamp
from controller.services.server_views import (
    ServerFilters,
    host_views,
    list_servers,
    load_related,
    server_detail_json,
    server_row,
)

PAGES_KEPT = 256  # views kept; a page of 1,000 servers is ~1.5 MB, one server ~1.5 kB

_STAMPS = (
    select(ViewStamp.project_id, ViewStamp.version)
    .where(or_(ViewStamp.project_id == bindparam("project_id"), ViewStamp.project_id == ALL_PROJECTS))
    .order_by(col(ViewStamp.project_id))
)


@dataclass(frozen=True)
class _Page:
    body: bytes
    hosts: dict[str, tuple[str, str]]  # host id -> (hypervisor hostname, host_status) when rendered


class ServerViewCache:
    def __init__(self, pages: int = PAGES_KEPT) -> None:
        self._pages: OrderedDict[tuple[object, ...], _Page] = OrderedDict()
        self._size = pages
        self._lock = threading.Lock()

    def listing(self, session: Session, project_id: str, filters: ServerFilters, dead_after: float) -> bytes:
        """The `GET /cloudservers/detail` body."""

        def render() -> _Page:
            total, rows = list_servers(session, project_id, filters)
            related = load_related(session, rows, dead_after)
            body = render_list({"count": total}, "servers", (server_detail_json(s, related) for s in rows))
            return _Page(body, related.host_views)

        return self._cached(session, project_id, filters, dead_after, render)

    def detail(self, session: Session, project_id: str, server_id: str, dead_after: float) -> bytes | None:
        """The `GET /cloudservers/{id}` body; None for a server the project does not have."""

        def render() -> _Page:
            row = server_row(session, project_id, server_id)
            if row is None:
                return _Page(b"", {})
            related = load_related(session, [row], dead_after)
            return _Page(b'{"server":' + server_detail_json(row, related) + b"}", related.host_views)

        return self._cached(session, project_id, server_id, dead_after, render) or None

    def _cached(
        self, session: Session, project_id: str, what: object, dead_after: float, render: Callable[[], _Page]
    ) -> bytes:
        stamps = tuple((p, v) for p, v in session.connection().execute(_STAMPS, {"project_id": project_id}))
        key = (project_id, what, stamps)
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
        if page is not None and host_views(session, set(page.hosts), dead_after) == page.hosts:
            return page.body
        page = render()
        with self._lock:
            self._pages[key] = page
            self._pages.move_to_end(key)
            while len(self._pages) > self._size:
                self._pages.popitem(last=False)
        return page.body
