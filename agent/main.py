"""Agent application factory: wires settings, the service, the routes and the controller heartbeat."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from agent.api import (
    BearerAuthMiddleware,
    CrashGuardMiddleware,
    RequestIdFilter,
    RequestIdMiddleware,
    install_error_handlers,
    router,
)
from agent.api_backups import router as backup_router
from agent.api_token import load_or_create
from agent.api_volume_moves import router as volume_move_router
from agent.config import AgentSettings
from agent.memtrim import start_idle_trimmer
from agent.schemas import HostInfo
from agent.service import AgentService

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr with the request id of the current request in every line."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Heartbeat:
    """Registers this host with the controller and repeats the same call every `interval` seconds.

    The controller treats the first call as registration and later ones as heartbeats; failures are logged and
    retried at the next tick, so an agent started before its controller joins as soon as the controller is up.
    """

    def __init__(
        self,
        controller_url: str,
        token: str,
        interval: float,
        host_info: Callable[[], HostInfo],
        *,
        transport: httpx.BaseTransport | None = None,
        api_token: str | None = None,
        api_token_known: threading.Event | None = None,
    ) -> None:
        self._url = controller_url.rstrip("/") + "/internal/hosts"
        self._interval = interval
        self._host_info = host_info
        self._api_token = api_token  # reported so the controller can call this agent
        # Set once the controller accepted a heartbeat reporting it: the join token is then refused by our API.
        self._api_token_known = api_token_known
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=transport,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-heartbeat", daemon=True)
        self._healthy: bool | None = None
        self.beats = 0  # successful calls, for tests and logs

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=35.0)
        self._http.close()

    def beat(self) -> bool:
        """One registration/heartbeat call; True when the controller accepted it."""
        try:
            info = self._host_info()
            if self._api_token:
                info = info.model_copy(update={"agent_token": self._api_token})
            response = self._http.post(self._url, json=info.model_dump(mode="json"))
            if response.is_error:  # the controller's reason, e.g. why it refuses this host id
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        except Exception as exc:  # any failure is retried at the next tick
            self._set_healthy(False, f"{type(exc).__name__}: {exc}")
            return False
        self.beats += 1
        if self._api_token and self._api_token_known is not None:
            self._api_token_known.set()
        self._set_healthy(True, f"host {info.host_id} with {len(info.servers)} servers")
        return True

    def _set_healthy(self, healthy: bool, detail: str) -> None:
        # Log transitions loudly and repeats quietly, so a controller outage does not flood the log.
        if healthy and self._healthy is not True:
            log.info("registered with controller %s: %s", self._url, detail)
        elif not healthy and self._healthy is not False:
            log.warning("controller %s not reachable, will retry: %s", self._url, detail)
        else:
            log.debug("heartbeat to %s: %s", self._url, detail)
        self._healthy = healthy

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self._interval)


def _start_housekeeping(agent: AgentService, every: float = 30.0) -> threading.Event:
    """Periodic host chores: removing networks that stayed without ports past their grace time, and putting back
    firewall state (iptables chains, ipsets, the anti-spoofing table) that someone changed behind our back."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                agent.collect_idle_networks()
            except Exception:
                log.exception("collecting idle networks failed")
            try:
                agent.repair_networks()  # a bridge deleted or a dnsmasq killed behind our back
            except Exception:
                log.exception("repairing the networks failed")
            try:
                agent.repair_firewall()  # chains, rules, ipsets changed behind our back: within 2 ticks
            except Exception:
                log.exception("repairing the firewall failed")

    threading.Thread(target=loop, name="agent-housekeeping", daemon=True).start()
    return stop


def create_app(settings: AgentSettings, service: AgentService | None = None) -> FastAPI:
    """Build the agent app; without `service` it is built from `settings` (real libvirt and host network)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        agent = service or AgentService.from_settings(settings)
        app.state.service = agent
        settings.persist_host_id()
        agent.check()
        try:
            # In a worker thread: pyroute2 runs an event loop of its own, which cannot start inside this one
            # (here, netlink failed with "This event loop is already running" and nothing was rebuilt).
            await asyncio.to_thread(agent.resync)
        except Exception:  # keep serving: the controller's reconciler sees the drift and repairs it
            log.exception("resync from stored specs failed")
        heartbeat = None
        if settings.controller_url:
            heartbeat = Heartbeat(
                settings.controller_url,
                settings.join_token.get_secret_value(),
                settings.heartbeat_seconds,
                agent.host_info,
                api_token=api_token,
                api_token_known=api_token_known,
            )
            heartbeat.start()
        app.state.heartbeat = heartbeat
        stop_trimming = start_idle_trimmer()
        stop_housekeeping = _start_housekeeping(agent)
        log.info("agent %s serving at %s", settings.resolved_host_id, settings.url)
        try:
            yield
        finally:
            stop_trimming.set()
            stop_housekeeping.set()
            if heartbeat is not None:
                heartbeat.stop()
            if service is None:
                agent.close()

    app = FastAPI(title="labcloud agent", lifespan=lifespan)
    app.state.service = service
    # The last added is the outermost: the request id is set first, so refusals and crashes carry it too.
    app.add_middleware(CrashGuardMiddleware)
    api_token = load_or_create(settings.state_dir)
    api_token_known = threading.Event()
    app.add_middleware(
        BearerAuthMiddleware,
        token=settings.join_token.get_secret_value(),
        also=(api_token,),
        api_token_known=api_token_known,
        state_dir=settings.state_dir,
    )
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(backup_router)
    app.include_router(volume_move_router)
    return app
