"""Rendered server views (listings and single servers), kept while nothing they were made of has changed.

A view is a pure function of rows the database stamps (`models.view_stamp`: servers, ports, EIPs, volumes,
groups, flavors, and hosts taken out of service or renamed) and of time: a host whose heartbeats stop turns
DOWN. So a view is kept under (project, filters or server id, stamps), and served again while the stamps are
the same and, as far as its hosts go, until the first of them could turn DOWN; then their heartbeats are read
again, and if they still look as they did, the view lives on until the new first deadline. A view that shows
a host DOWN checks its hosts on every use (it turns UP with a heartbeat, which stamps nothing).

The stamps are read before the rows: a view rendered from rows newer than its stamps is harmless (nobody asks
for those stamps once the write has committed), one older than them cannot happen.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.models.view_stamp import ALL_PROJECTS, ViewStamp
from controller.services.server_views import (
    HostView,
    ServerFilters,
    host_views,
    list_servers,
    load_related,
    render_page,
    server_detail_json,
    server_row,
)

# Views kept, by number and by size (a page of 1,000 servers is ~1.5 MB, one server ~1.5 kB); least recently
# used first out. One view per (project, filters or server id): a newer stamp replaces the older view.
VIEWS_KEPT = 256
VIEW_BYTES_KEPT = 64 * 1024 * 1024

_STAMPS = (
    select(ViewStamp.project_id, ViewStamp.version)
    .where(or_(ViewStamp.project_id == bindparam("project_id"), ViewStamp.project_id == ALL_PROJECTS))
    .order_by(col(ViewStamp.project_id))
)


@dataclass
class _Page:
    body: bytes
    hosts: dict[str, HostView]  # as rendered
    fresh_until: float = 0.0  # monotonic time until which `hosts` cannot have changed

    def checked(self, hosts: dict[str, HostView], dead_after: float) -> None:
        """`hosts` were just read and match: the page holds until the first UP host could turn DOWN (taking a
        host out of service or back is stamped)."""
        if any(view.status == "DOWN" for view in hosts.values()):
            self.fresh_until = 0.0  # a heartbeat brings it back UP and stamps nothing: look every time
            return
        ages = [view.heartbeat_age for view in hosts.values() if view.status == "UP"]
        self.fresh_until = time.monotonic() + dead_after - max(ages, default=0.0)


class ServerViewCache:
    def __init__(self) -> None:
        # (project, what) -> (the stamps it was rendered under, the view)
        self._views: OrderedDict[tuple[str, object], tuple[tuple[object, ...], _Page]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def listing(self, engine: Engine, project_id: str, filters: ServerFilters, dead_after: float) -> bytes:
        """The `GET /cloudservers/detail` body."""

        def render(session: Session) -> _Page:
            total, rows = list_servers(session, project_id, filters)
            related = load_related(session, rows, dead_after)
            body = render_page(total, (server_detail_json(s, related) for s in rows))
            return _Page(body, related.hosts)

        return self._cached(engine, project_id, filters, dead_after, render)

    def detail(self, engine: Engine, project_id: str, server_id: str, dead_after: float) -> bytes | None:
        """The `GET /cloudservers/{id}` body; None for a server the project does not have."""

        def render(session: Session) -> _Page:
            row = server_row(session, project_id, server_id)
            if row is None:
                return _Page(b"", {})
            related = load_related(session, [row], dead_after)
            return _Page(b'{"server":' + server_detail_json(row, related) + b"}", related.hosts)

        return self._cached(engine, project_id, server_id, dead_after, render) or None

    def _cached(
        self,
        engine: Engine,
        project_id: str,
        what: object,
        dead_after: float,
        render: Callable[[Session], _Page],
    ) -> bytes:
        # A plain connection, and an ORM session only to render: a hit costs one query and no session.
        with engine.connect() as conn:
            stamps = tuple((p, v) for p, v in conn.execute(_STAMPS, {"project_id": project_id}))
            key = (project_id, what)
            with self._lock:
                kept = self._views.get(key)
                page = kept[1] if kept is not None and kept[0] == stamps else None
                if page is not None:
                    self._views.move_to_end(key)
            if page is not None:
                if time.monotonic() < page.fresh_until:
                    return page.body
                hosts = host_views(conn, set(page.hosts), dead_after)
                if _shown(hosts) == _shown(page.hosts):
                    page.checked(hosts, dead_after)
                    return page.body
            with Session(bind=conn) as session:
                page = render(session)
        page.checked(page.hosts, dead_after)
        self._keep(key, stamps, page)
        return page.body

    def _keep(self, key: tuple[str, object], stamps: tuple[object, ...], page: _Page) -> None:
        with self._lock:
            replaced = self._views.pop(key, None)
            if replaced is not None:
                self._bytes -= len(replaced[1].body)
            self._views[key] = (stamps, page)
            self._bytes += len(page.body)
            while len(self._views) > VIEWS_KEPT or self._bytes > VIEW_BYTES_KEPT:
                _, (_, evicted) = self._views.popitem(last=False)
                self._bytes -= len(evicted.body)


def _shown(hosts: dict[str, HostView]) -> dict[str, tuple[str, str]]:
    return {host_id: (view.hostname, view.status) for host_id, view in hosts.items()}
