"""``/ws``: one WebSocket per page, bound to one session by a signed browser token.

Protocol (JSON text frames):

server -> browser
  {"type": "welcome", "session": ID, "checkin_interval": 6.0, "last_event": N}
  {"type": "event", "id": N, "kind": "command"|"email"|"task", "data": {...}}   # per-session ordered
  {"type": "event", ..., "late": true}   # an event that became visible after a higher id was sent
  {"type": "reset"}                      # missed more than the history holds: reload the page's state
  {"type": "checkin", "ref": R, "commands": [...], "saved": bool}
  {"type": "result", "ref": R, "result": {...}}                                 # answer to "run"
  {"type": "error", "ref": R|null, "error": "what went wrong"}

browser -> server
  {"type": "checkin", "ref": R, "action": NAME, "fields": {...}, "changed": FIELD|null}
  {"type": "run", "ref": R, "action": NAME, "arguments": {...}}                 # a foreground action

Open with ``/ws?token=T&last=N``: N is the id of the last event the page saw; the events after it are
sent first (at most ``[web] event_history``; more than that gives "reset"). Every open connection of a
session receives every event, from the process's event feed (:mod:`mailgate.core.events`), whichever
process committed it; one that became visible only after a higher id was sent comes marked "late"
(the page applies it although its id is below the last one it saw). Each connection has a bounded send queue: a client too slow to drain
it is disconnected (code 1013) and catches up when it reconnects, so it never stalls the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from mailgate.config import WebConfig
from mailgate.core.context import User
from mailgate.core.runtime import Runtime
from mailgate.core.tokens import TokenError
from mailgate.edges.web.hub import Connection, Hub, RateLimit
from mailgate.edges.web.keys import HUB, METRICS, RUNTIME
from mailgate.edges.web.metrics import Metrics
from mailgate.errors import MailgateError
from mailgate.store.base import EventRecord

log = logging.getLogger(__name__)


def origin_allowed(request: web.Request, config: WebConfig) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; the token still decides
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin in config.allowed_origins


async def websocket(request: web.Request) -> web.StreamResponse:
    runtime: Runtime = request.app[RUNTIME]
    hub: Hub = request.app[HUB]
    config: WebConfig = runtime.config.web
    metrics: Metrics = request.app[METRICS]
    if not origin_allowed(request, config):
        raise web.HTTPForbidden(text=json.dumps({"error": f"origin {request.headers.get('Origin')!r} is not allowed; "
                                                 "add it to [web] allowed_origins"}), content_type="application/json")
    token = request.query.get("token", "")
    try:
        claims = runtime.signer.verify(token, "browser")
    except TokenError as exc:
        raise web.HTTPUnauthorized(text=json.dumps({"error": f"{exc}"}), content_type="application/json") from None
    try:
        last = int(request.query.get("last", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "last must be an event id (integer)"}), content_type="application/json") from None
    session_id = str(claims["s"])
    if not await runtime.session_exists(session_id):
        raise web.HTTPNotFound(text=json.dumps({"error": f"session {session_id} no longer exists"}), content_type="application/json")

    # no aiohttp heartbeat and no autoping: Hub.heartbeat keeps connections alive, _read answers pings
    ws = web.WebSocketResponse(autoping=False, max_msg_size=config.max_frame_bytes)
    await ws.prepare(request)
    conn = Connection(ws, session_id, User.from_json(claims.get("u")), config, metrics)
    conn.last_queued = conn.floor = last
    hub.attach(conn)
    sender = asyncio.create_task(conn.sender(), name="ws-sender")
    checkins = CheckinRunner(conn, runtime, metrics)
    try:
        await _catch_up(conn, hub, config, last)
        await _read(ws, conn, checkins, runtime, config)
    finally:
        hub.detach(conn)
        checkins.stop()
        for job in list(conn.jobs):
            job.cancel()
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if not ws.closed:
            await ws.close()
    return ws


async def _catch_up(conn: Connection, hub: Hub, config: WebConfig, last: int) -> None:
    """Welcome the page and send what it missed; events arriving meanwhile wait in ``conn.paused``."""
    backlog: list[EventRecord] = []
    reset = False
    if last > 0:
        backlog = await hub.runtime.session_events(conn.session_id, after_id=last, limit=config.event_history + 1)
        if len(backlog) > config.event_history:
            reset = True
            backlog = backlog[-config.event_history:]
    else:
        conn.last_queued = hub.feed.cursor  # a new page starts from now: what the feed brings from here on
    conn.send({"type": "welcome", "session": conn.session_id, "checkin_interval": config.checkin_interval,
               "last_event": conn.last_queued})
    if reset:
        conn.send({"type": "reset"})
    paused, conn.paused = conn.paused or [], None
    for event in backlog:
        conn.offer(event)
    conn.backlog_ids = {event.id for event in backlog}
    for event in paused:
        conn.offer(event)


async def _read(ws: web.WebSocketResponse, conn: Connection, checkins: CheckinRunner, runtime: Runtime,
                config: WebConfig) -> None:
    limit = RateLimit(config.max_messages_per_second)
    clock = asyncio.get_running_loop().time
    async for msg in ws:
        conn.last_seen = clock()
        if msg.type == WSMsgType.ERROR:
            return
        if msg.type == WSMsgType.PING:
            try:
                await ws.pong(msg.data)
            except ConnectionError:  # the page went away mid-answer
                return
            continue
        if msg.type == WSMsgType.PONG:
            continue
        if msg.type != WSMsgType.TEXT:
            conn.send({"type": "error", "ref": None, "error": "send JSON text frames"})
            continue
        if not limit.allow():
            log.info("closing a WebSocket of session %s: message flood", conn.session_id, extra={"event": "ws.flood"})
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many messages")
            return
        try:
            data = json.loads(msg.data)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            conn.send({"type": "error", "ref": None, "error": "messages must be JSON objects"})
            continue
        kind = data.get("type")
        if kind == "checkin":
            checkins.submit(data)
        elif kind == "run":
            conn.spawn(_run(conn, runtime, data))
        else:
            conn.send({"type": "error", "ref": data.get("ref"), "error": f"unknown message type {kind!r}; use checkin or run"})


def _args(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise MailgateError(f"{key} must be an object of name -> value")
    return value


async def _run(conn: Connection, runtime: Runtime, data: dict[str, Any]) -> None:
    ref = data.get("ref")
    try:
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise MailgateError("run needs an action name")
        result = await runtime.run_action(conn.session_id, action, _args(data, "arguments"), conn.user)
        conn.send({"type": "result", "ref": ref, "result": result.to_dict()})
    except MailgateError as exc:
        conn.send({"type": "error", "ref": ref, "error": str(exc)})


class CheckinRunner:
    """Runs one connection's check-ins one at a time; a newer check-in replaces a waiting one."""

    def __init__(self, conn: Connection, runtime: Runtime, metrics: Metrics) -> None:
        self.conn = conn
        self.runtime = runtime
        self.metrics = metrics
        self._next: dict[str, Any] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None  # started by the first check-in: idle pages cost less

    def submit(self, data: dict[str, Any]) -> None:
        self._next = data
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="ws-checkins")
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, self._next = self._next, None
            if data is not None:
                await self._checkin(data)
            elif self._next is None:
                self._waiter = loop.create_future()
                await self._waiter

    async def _checkin(self, data: dict[str, Any]) -> None:
        ref = data.get("ref")
        try:
            action = data.get("action")
            if not isinstance(action, str) or not action:
                raise MailgateError("checkin needs the check-in action's name")
            arguments = {**_args(data, "fields"), "_changed": data.get("changed")}  # made for this check-in
            result = await self.runtime.run_checkin(self.conn.session_id, action, arguments, self.conn.user)
            self.metrics.checkins += 1
        except MailgateError as exc:
            self.metrics.checkin_errors += 1
            self.conn.send({"type": "error", "ref": ref, "error": str(exc)})
            return
        # The reply goes out from here rather than through the page's queue (one task switch less per
        # check-in). It stays bounded: this runner waits for the socket to drain before the next one.
        reply = {"type": "checkin", "ref": ref, "commands": list(result.commands), "saved": result.saved}
        try:
            await self.conn.ws.send_str(json.dumps(reply, default=str))
        except ConnectionError:  # the page went away; its reader ends the connection
            pass
