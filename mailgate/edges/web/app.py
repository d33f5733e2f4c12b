"""The aiohttp application and its server, run in the daemon's loop (``AppRunner`` + ``TCPSite``)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mailgate import metrics as prometheus
from mailgate.config import WebConfig
from mailgate.core.inbound import Inbound
from mailgate.core.runtime import Runtime
from mailgate.edges.web import api, api_automations, pages
from mailgate.edges.web.access import AccessLogger
from mailgate.edges.web.hub import Hub
from mailgate.edges.web.keys import HUB, INBOUND, ORIGINS, RUNTIME
from mailgate.edges.web.origins import Origins
from mailgate.edges.web.ws import websocket

log = logging.getLogger(__name__)


class UnparsableRequests(logging.Filter):
    """One line instead of a traceback for requests aiohttp cannot parse as HTTP.

    Bytes a header may not hold, a Content-Encoding aiohttp cannot decode: aiohttp answers these
    400 itself, before the application and its JSON errors, and logs each with a traceback at ERROR.
    They are the client's mistake, so they get one INFO line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "unparsable HTTP request from %s answered %d: %s", (
                remote, exc.code, (exc.message.strip().splitlines() or ["?"])[0][:200])  # not the header line it quotes next: it may hold a key
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
            record.event = "http.unparsable"
        return True


def quiet_unparsable_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnparsableRequests) for f in server_log.filters):
        server_log.addFilter(UnparsableRequests())


async def healthz(request: web.Request) -> web.Response:
    runtime: Runtime = request.app[RUNTIME]
    version, latest = await runtime.schema_status()
    ok = version == latest
    # orphaned automations (class or open node gone) found by this process's runner: they need an operator,
    # not a restart, so they do not make the probe fail (mailgate healthcheck reports them). null when
    # this process runs no runner (no worker role): it cannot know, a worker node's /healthz does
    runner = runtime.automation_runner
    orphaned = len(runner.orphaned()) if runner.active else None
    return web.json_response({"ok": ok, "schema_version": version, "orphaned_automations": orphaned},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text. Everything but the runnable tasks and the inbound queue is counted as it
    happens; the tasks are read through their index (``Store.task_queue``), never by reading the
    tasks table; the inbound queue holds only messages waiting to be processed."""
    runtime = request.app[RUNTIME]
    queued, running, oldest = await runtime.tasks.queue()
    prometheus.set_task_queue(queued, running, oldest)
    prometheus.set_inbound_queue(await runtime.emails.queue_depth())
    return web.Response(body=prometheus.exposition(),
                        headers={"Content-Type": prometheus.CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})


def build_operator_app(runtime: Runtime) -> web.Application:
    """What ``[web] metrics_listen`` serves, without a key: ``/metrics`` and the OpenAPI document."""
    app = web.Application()
    app[RUNTIME] = runtime
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", api.openapi)
    return app


def build_app(runtime: Runtime, inbound: Inbound | None, hub: Hub) -> web.Application:
    config = runtime.config.web
    quiet_unparsable_requests()
    app = web.Application(middlewares=[api.errors_middleware, api.api_key_middleware, pages.html_errors], client_max_size=1024 * 1024)
    app[RUNTIME] = runtime
    app[INBOUND] = inbound
    app[HUB] = hub
    app[ORIGINS] = Origins(config)
    app.router.add_routes(api.routes)
    app.router.add_routes(api_automations.routes)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    pages.add_routes(app, demo=config.demo_pages)
    return app


class WebServer:
    """The listening HTTP/WebSocket server; ``port`` is the bound port (useful with ``port = 0``)."""

    def __init__(self, runtime: Runtime, config: WebConfig, inbound: Inbound | None) -> None:
        self.runtime = runtime
        self.config = config
        self.hub = Hub(runtime, config)
        self.app = build_app(runtime, inbound, self.hub)
        self._runner: web.AppRunner | None = None
        self._operator: web.AppRunner | None = None
        self.port = 0
        self.metrics_port = 0  # the bound port of [web] metrics_listen (0: not listening)

    async def start(self) -> None:
        access = {"access_log": logging.getLogger(AccessLogger.__module__), "access_log_class": AccessLogger} if self.config.access_log else {"access_log": None}
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=2.0, **access)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        address: Any = self._runner.addresses[0]
        self.port = int(address[1])
        log.info("web listening on %s:%d", self.config.host, self.port, extra={"event": "web.listening"})

    async def start_metrics(self) -> None:
        """Listen on ``[web] metrics_listen`` (the daemon calls this when it is set)."""
        listen = self.config.metrics_address()
        if listen is not None:
            access = {"access_log": logging.getLogger(AccessLogger.__module__), "access_log_class": AccessLogger} if self.config.access_log else {"access_log": None}
            self._operator = web.AppRunner(build_operator_app(self.runtime), handle_signals=False, shutdown_timeout=2.0,
                                           **access)
            await self._operator.setup()
            await web.TCPSite(self._operator, listen[0], listen[1]).start()
            self.metrics_port = int(self._operator.addresses[0][1])
            log.info("metrics listening on %s:%d", listen[0], self.metrics_port, extra={"event": "web.metrics_listening"})

    async def heartbeat(self) -> None:
        await self.hub.heartbeat()

    async def stop(self) -> None:
        self.hub.close()
        for conns in list(self.hub.connections.values()):
            for conn in list(conns):
                await conn.ws.close(code=1001, message=b"server shutting down")
        for runner in (self._operator, self._runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._operator = None
