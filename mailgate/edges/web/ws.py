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
  {"type": "submit", "ref": R, "step": STEP, "values": {...}}                   # an automation's form, as the token's user
  {"type": "message", "ref": R, "key": KEY, "name": NAME, "token": T|null, "data": {...}}
      # to the session's automation with that key whose class has publish_receivers = True

The answer to "submit" and "message" is a "result" ({"step", "node", "values", "automation"} or the
queued message) or an "error" (a refused submit adds "status": 403/400/409 and, for invalid values,
"errors" by field). Automations send "event"s of kind "automation": {id, class, state, open,
interactions}.

Open with ``/ws?token=T&last=N``: N is the id of the last event the page saw; the events after it are
sent first (at most ``[web] event_history``; more than that gives "reset" and then the newest
``event_history`` of them), paced by the page's send queue so that catching up never looks like a
slow client, while check-ins and runs are answered meanwhile. Every open connection of a
session receives every event, from the process's event feed (:mod:`mailgate.core.events`), whichever
process committed it; one that became visible only after a higher id was sent comes marked "late"
(the page applies it although its id is below the last one it saw). Each connection has a bounded send queue: a client too slow to drain
it is disconnected (code 1013, then its TCP connection is aborted) and catches up when it reconnects,
so it never stalls the others.

What a page may do is bounded: the handshake must name one of our hosts and an allowed origin
(:mod:`mailgate.edges.web.origins`), sockets per token and per client address are capped, every
frame (text, binary, ping, pong) counts against ``max_messages_per_second`` (1008 past it), binary
frames close the socket (1003), and a message that is not a JSON object of plain values (nested at
most ``MAX_DEPTH``, integers within JavaScript's safe range, finite numbers, text without lone
surrogates) is answered with an error, as is a ``run`` or ``checkin`` of an action that its interview
does not declare ``browser=True``. A bad message never ends the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from mailgate import metrics
from mailgate.automations.errors import FormError, FormInvalid
from mailgate.config import WebConfig
from mailgate.core.automation_views import automation_dict, message_dict
from mailgate.core.context import User
from mailgate.core.runtime import Runtime
from mailgate.core.tokens import TokenError
from mailgate.edges.web.hub import Connection, Hub, RateLimit
from mailgate.edges.web.keys import HUB, ORIGINS, RUNTIME
from mailgate.errors import MailgateError
from mailgate.store.base import EventRecord

log = logging.getLogger(__name__)
MAX_DEPTH = 32  # nesting of a message's values (a form's fields are flat; this leaves room for lists of objects)
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: a page cannot mean a bigger integer
MAX_EVENT_ID = 2**63 - 1  # event ids are 64-bit integers in both stores


class BadMessage(ValueError):
    """A message from a page that is not what the protocol allows (``ref``: its ref, if it had a usable one)."""

    def __init__(self, message: str, ref: int | str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


def refuse(status: type[web.HTTPException], error: str) -> web.HTTPException:
    return status(text=json.dumps({"error": error}), content_type="application/json")


async def websocket(request: web.Request) -> web.StreamResponse:
    runtime: Runtime = request.app[RUNTIME]
    hub: Hub = request.app[HUB]
    config: WebConfig = runtime.config.web
    seen, refusal = request.app[ORIGINS].check(request)
    if refusal is not None:
        raise refuse(web.HTTPForbidden, refusal)
    token = request.query.get("token", "")
    try:
        claims = runtime.signer.verify(token, "browser")
    except TokenError as exc:
        raise refuse(web.HTTPUnauthorized, f"{exc}") from None
    last_text = request.query.get("last", "0")
    if not (last_text.isascii() and last_text.isdigit() and len(last_text) <= 19 and int(last_text) <= MAX_EVENT_ID):
        raise refuse(web.HTTPBadRequest, "last must be the id of an event (an integer from 0 to 2^63-1)")
    last = int(last_text)
    session_id = str(claims["s"])
    if not await runtime.session_exists(session_id):
        raise refuse(web.HTTPNotFound, f"session {session_id} no longer exists")
    refusal = hub.refusal(token, seen.client)
    if refusal is not None:
        log.info("refusing a WebSocket of session %s: %s", session_id, refusal, extra={"event": "ws.refused", "session": session_id})
        raise refuse(web.HTTPTooManyRequests, refusal)

    # no aiohttp heartbeat and no autoping: Hub.heartbeat keeps connections alive, _read answers pings
    ws = web.WebSocketResponse(autoping=False, max_msg_size=config.max_frame_bytes)
    conn = Connection(ws, session_id, User.from_json(claims.get("u")), config,
                      transport=request.transport, token=token, address=seen.client)
    conn.last_queued = conn.floor = last
    hub.attach(conn)  # before the first await after the caps were checked: concurrent handshakes count
    sender: asyncio.Task[None] | None = None
    checkins = CheckinRunner(conn, runtime)
    try:
        await ws.prepare(request)
        sender = asyncio.create_task(conn.sender(), name="ws-sender")
        backlog = await _welcome(conn, hub, config, last)
        conn.spawn(_replay(conn, backlog))
        await _read(ws, conn, checkins, runtime, config)
    finally:
        hub.detach(conn)
        checkins.stop()
        for job in list(conn.jobs):
            if job is not asyncio.current_task():
                job.cancel()
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if ws.prepared and not ws.closed and not conn.closing:
            await conn.shut(WSCloseCode.OK, b"")
        elif conn.dropped:
            conn.abort()
    return ws


async def _welcome(conn: Connection, hub: Hub, config: WebConfig, last: int) -> list[EventRecord]:
    """Welcome the page; the events it missed, to be replayed (events arriving meanwhile wait in
    ``conn.paused``)."""
    backlog: list[EventRecord] = []
    reset = False
    if last > 0:
        backlog = await hub.runtime.session_events(conn.session_id, after_id=last, limit=config.event_history + 1)
        if len(backlog) > config.event_history:
            reset = True  # more than the history holds: the page reloads its state, then gets the newest
            backlog = await hub.runtime.session_events(conn.session_id, after_id=last, limit=config.event_history,
                                                       newest=True)
    else:
        conn.last_queued = hub.feed.cursor  # a new page starts from now: what the feed brings from here on
    conn.send({"type": "welcome", "session": conn.session_id, "checkin_interval": config.checkin_interval,
               "last_event": conn.last_queued})
    if reset:
        conn.send({"type": "reset"})
    return backlog


async def _replay(conn: Connection, backlog: list[EventRecord]) -> None:
    """Send the missed events as the page takes them (at most half its send queue waits at a time,
    so a page catching up on more than ``send_queue`` events is not taken for a slow one), then the
    events that arrived meanwhile."""
    for event in backlog:
        await conn.room()
        if conn.dropped:
            return
        conn.offer_now(event)
    conn.backlog_ids = {event.id for event in backlog}
    paused, conn.paused = conn.paused or [], None
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
        if not limit.allow():  # every kind of frame counts: pings and binary frames cost us as much
            log.info("closing a WebSocket of session %s: message flood", conn.session_id, extra={"event": "ws.flood"})
            await conn.shut(WSCloseCode.POLICY_VIOLATION, b"too many messages")
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
            await conn.shut(WSCloseCode.UNSUPPORTED_DATA, b"send JSON text frames")
            return
        try:
            data = parse_message(msg.data)
        except BadMessage as exc:
            conn.send({"type": "error", "ref": exc.ref, "error": str(exc)})
            continue
        kind = data.get("type")
        if kind == "checkin":
            checkins.submit(data)
        elif kind == "run":
            conn.spawn(_run(conn, runtime, data))
        elif kind in ("submit", "message"):
            conn.spawn(_automation(conn, runtime, data))
        else:
            conn.send({"type": "error", "ref": data.get("ref"),
                       "error": f"unknown message type {kind!r}; use checkin, run, submit or message"})


def parse_message(text: str) -> dict[str, Any]:
    """A page's message as a dict of plain values, or ``BadMessage`` saying why it is not one."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise BadMessage(f"a message may nest values at most {MAX_DEPTH} deep") from None
    except ValueError as exc:  # not JSON, NaN/Infinity, an integer of more than 4,300 digits
        raise BadMessage(f"messages must be JSON objects: {exc}") from None
    if not isinstance(data, dict):
        raise BadMessage("messages must be JSON objects")
    try:
        _check_values(data)
    except BadMessage as exc:
        ref = data.get("ref")
        usable = (type(ref) is int and abs(ref) <= MAX_SAFE_INTEGER) or (type(ref) is str and ref.isascii() and len(ref) <= 64)
        exc.ref = ref if usable else None
        raise
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_values(data: dict[str, Any]) -> None:
    """Refuse what a page cannot mean and what the store could not keep (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                _check_text(value)
        elif isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise BadMessage(f"a message may nest values at most {MAX_DEPTH} deep")
            for key, item in value.items():
                if not key.isascii():
                    _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                raise BadMessage(f"a message may nest values at most {MAX_DEPTH} deep")
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise BadMessage(f"integers must be within +-{MAX_SAFE_INTEGER} (JavaScript's safe integers); "
                                 "send bigger numbers as text")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadMessage("numbers must be finite")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMessage("text must be valid Unicode (a lone surrogate such as \\ud800 is not)") from None


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
        result = await runtime.run_action(conn.session_id, action, _args(data, "arguments"), conn.user, browser=True)
        conn.send({"type": "result", "ref": ref, "result": result.to_dict()})
    except MailgateError as exc:
        conn.send({"type": "error", "ref": ref, "error": str(exc)})
    except Exception as exc:  # a bug: say so to the page and in the log, and keep the socket
        log.error("run %r of session %s failed", data.get("action"), conn.session_id, exc_info=True,
                  extra={"event": "ws.run_failed"})
        conn.send({"type": "error", "ref": ref, "error": f"internal error: {type(exc).__name__}"})


async def _automation(conn: Connection, runtime: Runtime, data: dict[str, Any]) -> None:
    """A page submits an automation's form as its token's user, or messages its session's automation."""
    ref = data.get("ref")
    try:
        if data["type"] == "submit":
            step = data.get("step")
            if not isinstance(step, str) or not step:
                raise MailgateError("submit needs the form's step id")
            done = await runtime.automations.submit(step, conn.user, _args(data, "values"))
            conn.send({"type": "result", "ref": ref, "result": {"step": done.step.id, "node": done.step.node,
                                                                "values": done.values,
                                                                "automation": automation_dict(done.automation)}})
        else:
            key, name, token = data.get("key"), data.get("name"), data.get("token")
            if not isinstance(key, str) or not isinstance(name, str) or not name:
                raise MailgateError("message needs the automation's key and the message name")
            if token is not None and not isinstance(token, str):
                raise MailgateError("token must be text or null")
            msg = await runtime.automations.page_message(conn.session_id, key, name, token=token,
                                                         data=_args(data, "data"), user=conn.user)
            conn.send({"type": "result", "ref": ref, "result": message_dict(msg)})
    except FormError as exc:
        error: dict[str, Any] = {"type": "error", "ref": ref, "error": str(exc), "status": exc.status}
        if isinstance(exc, FormInvalid):
            error["errors"] = exc.errors
        conn.send(error)
    except MailgateError as exc:
        conn.send({"type": "error", "ref": ref, "error": str(exc)})
    except Exception as exc:  # a bug: say so to the page and in the log, and keep the socket
        log.error("%s of session %s failed", data.get("type"), conn.session_id, exc_info=True,
                  extra={"event": "ws.automation_failed"})
        conn.send({"type": "error", "ref": ref, "error": f"internal error: {type(exc).__name__}"})


class CheckinRunner:
    """Runs one connection's check-ins one at a time; a newer check-in replaces a waiting one."""

    def __init__(self, conn: Connection, runtime: Runtime) -> None:
        self.conn = conn
        self.runtime = runtime
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
                try:
                    await self._checkin(data)
                except Exception as exc:  # a bug: say so to the page and in the log; the next check-in runs
                    log.error("check-in %r of session %s failed", data.get("action"), self.conn.session_id,
                              exc_info=True, extra={"event": "ws.checkin_failed", "session": self.conn.session_id})
                    metrics.CHECKIN_ERRORS.inc()
                    self.conn.send({"type": "error", "ref": data.get("ref"), "error": f"internal error: {type(exc).__name__}"})
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
            metrics.CHECKINS.inc()
        except MailgateError as exc:
            metrics.CHECKIN_ERRORS.inc()
            self.conn.send({"type": "error", "ref": ref, "error": str(exc)})
            return
        # The reply goes out from here rather than through the page's queue (one task switch less per
        # check-in). It stays bounded: this runner waits for the socket to drain before the next one.
        reply = {"type": "checkin", "ref": ref, "commands": list(result.commands), "saved": result.saved}
        try:
            await self.conn.ws.send_str(json.dumps(reply, default=str))
        except ConnectionError:  # the page went away; its reader ends the connection
            pass
