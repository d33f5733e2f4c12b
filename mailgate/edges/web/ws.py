"""``/ws``: one WebSocket per page, bound to one session by a signed browser token.

Protocol (JSON text frames):

server -> browser
  {"type": "welcome", "session": ID, "checkin_interval": 6.0, "last_event": N}
  {"type": "event", "id": N, "kind": "command"|"email"|"task", "data": {...}}   # per-session ordered
  {"type": "reset"}                      # missed more than the history holds: reload the page's state
  {"type": "checkin", "ref": R, "commands": [...], "saved": bool}
  {"type": "result", "ref": R, "result": {...}}                                 # answer to "run"
  {"type": "error", "ref": R|null, "error": "what went wrong"}

browser -> server
  {"type": "checkin", "ref": R, "action": NAME, "fields": {...}, "changed": FIELD|null}
  {"type": "run", "ref": R, "action": NAME, "arguments": {...}}                 # a foreground action

Open with ``/ws?token=T&last=N``: N is the id of the last event the page saw; the events after it are
sent first (at most ``[web] event_history``; more than that gives "reset"). Every open connection of a
session receives every event. Each connection has a bounded send queue: a client too slow to drain
it is disconnected (code 1013) and catches up when it reconnects, so it never stalls the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from mailgate.config import WebConfig
from mailgate.core.context import User
from mailgate.core.runtime import Runtime
from mailgate.core.tokens import TokenError
from mailgate.edges.web.keys import HUB, METRICS, RUNTIME
from mailgate.edges.web.metrics import Metrics
from mailgate.errors import MailgateError, StoreError
from mailgate.store.base import EventRecord

log = logging.getLogger(__name__)


def event_message(event: EventRecord) -> dict[str, Any]:
    return {"type": "event", "id": event.id, "kind": event.kind, "data": json.loads(event.payload)}


class Connection:
    """One open page. Messages wait in a bounded queue for the sender task; a page that lets the
    queue fill up is dropped (it reconnects and catches up from its last event id)."""

    def __init__(self, ws: web.WebSocketResponse, session_id: str, user: User, config: WebConfig, metrics: Metrics) -> None:
        self.ws = ws
        self.session_id = session_id
        self.user = user
        # a deque and one waiter rather than asyncio.Queue: one reply per check-in is the hot path
        self.queue: deque[dict[str, Any]] = deque()
        self.queue_limit = config.send_queue
        self._waiter: asyncio.Future[None] | None = None
        self.last_queued = 0  # id of the last event put on the queue
        self.paused: list[EventRecord] | None = []  # events that arrive while the backlog is read
        self.metrics = metrics
        self.dropped = False
        self.jobs: set[asyncio.Task[Any]] = set()  # "run" requests and closes in flight (kept referenced)
        self.last_seen = asyncio.get_running_loop().time()  # when the page last sent anything
        self.ping_sent: float | None = None

    def spawn(self, coro: Any) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    def offer(self, event: EventRecord) -> None:
        """Queue an event for this page unless it already has it; never blocks."""
        if self.paused is not None:
            self.paused.append(event)
            return
        if event.id <= self.last_queued:
            return
        self.last_queued = event.id
        self.send(event_message(event))

    def send(self, message: dict[str, Any]) -> None:
        if self.dropped:
            return
        if len(self.queue) >= self.queue_limit:
            self.dropped = True
            self.metrics.slow_clients_dropped += 1
            log.info("dropping a slow WebSocket client of session %s", self.session_id, extra={"event": "ws.slow_client"})
            self.spawn(self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow; reconnect to catch up"))
            return
        self.queue.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def check_alive(self, now: float, period: float) -> None:
        """Ping a page that has been quiet for ``period``; close it if it then stays quiet for half that."""
        if self.ping_sent is not None and self.last_seen < self.ping_sent:
            if now - self.ping_sent >= period / 2:
                self.ping_sent = None
                log.info("closing a WebSocket of session %s: no answer to a ping", self.session_id,
                         extra={"event": "ws.dead_peer"})
                self.spawn(self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"no answer to ping"))
            return
        if now - self.last_seen >= period:
            self.ping_sent = now
            self.spawn(self._ping())

    async def _ping(self) -> None:
        try:
            await self.ws.ping()
        except (ConnectionError, RuntimeError):  # closing already: its reader ends the connection
            pass

    async def sender(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self._waiter = loop.create_future()
                await self._waiter
            message = self.queue.popleft()
            await self.ws.send_str(json.dumps(message, default=str))
            if message.get("type") == "event":
                self.metrics.events_pushed += 1


class Hub:
    """Routes committed events to the open connections of their session."""

    def __init__(self, runtime: Runtime, config: WebConfig, metrics: Metrics) -> None:
        self.runtime = runtime
        self.config = config
        self.metrics = metrics
        self.connections: dict[str, set[Connection]] = {}
        self.last_seen = 0
        self._unsubscribe = runtime.bus.subscribe(self.dispatch)

    async def start(self) -> None:
        self.last_seen = await self.runtime.store.last_event_id()

    def close(self) -> None:
        self._unsubscribe()

    def dispatch(self, event: EventRecord) -> None:
        self.last_seen = max(self.last_seen, event.id)
        for conn in self.connections.get(event.session_id, ()):
            conn.offer(event)

    async def poll(self) -> None:
        """Fan out events committed by other processes (the CLI, other daemons). Runs forever."""
        failing = False
        while True:
            await asyncio.sleep(self.config.event_poll_interval)
            try:
                if not self.connections:
                    self.last_seen = max(self.last_seen, await self.runtime.store.last_event_id())
                while self.connections:
                    events = await self.runtime.store.events_after(self.last_seen, 1000)
                    for event in events:
                        self.dispatch(event)  # connections skip ids they already have
                    if len(events) < 1000:
                        break
            except StoreError as exc:  # locked or unreadable for now: the next poll picks up from last_seen
                if not failing:  # once per outage, not once per poll
                    log.warning("polling for events failed: %s; retrying", exc, extra={"event": "ws.poll_failed"})
                failing = True
            else:
                if failing:
                    log.info("polling for events works again", extra={"event": "ws.poll_recovered"})
                failing = False

    async def heartbeat(self) -> None:
        """Keep-alive for every page, in one task. Runs forever.

        aiohttp's own heartbeat re-arms a timer on every message it receives, which costs every
        check-in a callback; here each message only notes its time, and this sweep pings the pages
        that have been quiet for ``[web] heartbeat`` seconds and closes those that do not answer
        within half of that (a dead peer's TCP connection may never report an error).
        """
        loop = asyncio.get_running_loop()
        period = self.config.heartbeat
        while True:
            await asyncio.sleep(period / 4)
            now = loop.time()
            for conns in list(self.connections.values()):
                for conn in list(conns):
                    conn.check_alive(now, period)

    def attach(self, conn: Connection) -> None:
        self.connections.setdefault(conn.session_id, set()).add(conn)
        self.metrics.ws_connections += 1

    def detach(self, conn: Connection) -> None:
        conns = self.connections.get(conn.session_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.connections[conn.session_id]
        self.metrics.ws_connections -= 1


class RateLimit:
    """Token bucket: ``rate`` messages per second, bursts up to twice that."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 2)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


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
    if await runtime.store.get_session(session_id) is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"session {session_id} no longer exists"}), content_type="application/json")

    # no aiohttp heartbeat and no autoping: Hub.heartbeat keeps connections alive, _read answers pings
    ws = web.WebSocketResponse(autoping=False, max_msg_size=config.max_frame_bytes)
    await ws.prepare(request)
    conn = Connection(ws, session_id, User.from_json(claims.get("u")), config, metrics)
    conn.last_queued = last
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
        backlog = await hub.runtime.store.list_events(conn.session_id, after_id=last, limit=config.event_history + 1)
        if len(backlog) > config.event_history:
            reset = True
            backlog = backlog[-config.event_history:]
    else:
        conn.last_queued = hub.last_seen  # a new page starts from now
    conn.send({"type": "welcome", "session": conn.session_id, "checkin_interval": config.checkin_interval,
               "last_event": conn.last_queued})
    if reset:
        conn.send({"type": "reset"})
    paused, conn.paused = conn.paused or [], None
    for event in [*backlog, *paused]:
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
