"""The pages of this process: each open WebSocket's bounded send queue, and the hub that routes the
event feed's events to the pages of their session."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web

from mailgate import metrics
from mailgate.config import WebConfig
from mailgate.core.context import User
from mailgate.core.runtime import Runtime
from mailgate.store.base import EventRecord

log = logging.getLogger(__name__)
PING_SLICE = 50  # heartbeat pings started per turn of the event loop
# Seconds a closing page gets to answer the close frame (RFC 6455 section 7.1.1: the server should
# close the TCP connection first) before its connection is aborted: a page that stopped reading would
# otherwise keep the connection, and what the kernel buffered for it, for as long as it likes.
CLOSE_GRACE = 1.0


def event_message(event: EventRecord, late: bool = False) -> dict[str, Any]:
    message = {"type": "event", "id": event.id, "kind": event.kind, "data": json.loads(event.payload)}
    if late:
        message["late"] = True
    return message


class Connection:
    """One open page. Messages wait in a bounded queue for the sender task; a page that lets the
    queue fill up is dropped (it reconnects and catches up from its last event id)."""

    def __init__(self, ws: web.WebSocketResponse, session_id: str, user: User, config: WebConfig,
                 *, transport: asyncio.Transport | None = None, token: str = "", address: str = "") -> None:
        self.ws = ws
        self.transport = transport  # the TCP connection, aborted when the page is closed
        self.token = token
        self.address = address  # the client's address (as a trusted proxy reported it)
        self.session_id = session_id
        self.user = user
        # a deque and one waiter rather than asyncio.Queue: one reply per check-in is the hot path
        self.queue: deque[dict[str, Any]] = deque()
        self.queue_limit = config.send_queue
        self.low_water = max(1, config.send_queue // 2)  # a replay waits for the queue to drain below this
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None  # a replay waiting for room in the queue
        self.last_queued = 0  # highest id put on the queue (or that the page said it had)
        self.floor = 0  # the page has every event up to this id (its ``last``)
        self.backlog_ids: set[int] = set()  # ids sent from the history: the feed may bring them again
        self.paused: list[EventRecord] | None = []  # events that arrive while the backlog is read
        self.dropped = False
        self.closing = False
        self.jobs: set[asyncio.Task[Any]] = set()  # "run" requests and closes in flight (kept referenced)
        self.last_seen = asyncio.get_running_loop().time()  # when the page last sent anything
        self.ping_sent: float | None = None

    def spawn(self, coro: Any) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    def offer(self, event: EventRecord) -> None:
        """Queue an event for this page unless it already has it; never blocks.

        The feed brings each event once, so only the history read at connect can repeat one; an
        event below an id already sent is one that became visible late and goes out marked so.
        """
        if self.paused is not None:
            self.paused.append(event)
            if len(self.paused) > self.queue_limit:  # the replay before them does not move: a page that does not read
                self.drop()
            return
        self.offer_now(event)

    def offer_now(self, event: EventRecord) -> None:
        """:meth:`offer` for the events the page missed, read from the history (not paused)."""
        if event.id <= self.floor or event.id in self.backlog_ids:
            return
        late = event.id < self.last_queued
        if not late:
            self.last_queued = event.id
        self.send(event_message(event, late))

    def send(self, message: dict[str, Any]) -> None:
        if self.dropped:
            return
        if len(self.queue) >= self.queue_limit:
            self.drop()
            return
        self.queue.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drop(self) -> None:
        """Disconnect a page that does not keep up (it reconnects and catches up from its last event)."""
        if self.dropped:
            return
        self.dropped = True
        self.queue.clear()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)  # the replay stops
        metrics.SLOW_CLIENTS_DROPPED.inc()
        log.info("dropping a slow WebSocket client of session %s", self.session_id, extra={"event": "ws.slow_client", "session": self.session_id})
        self.close(WSCloseCode.TRY_AGAIN_LATER, b"too slow; reconnect to catch up")

    def close(self, code: int, message: bytes) -> None:
        """Close the page's socket from outside its reader (see :meth:`shut`)."""
        if not self.closing:
            self.spawn(self.shut(code, message))

    async def shut(self, code: int, message: bytes) -> None:
        """Send the close frame, give the page ``CLOSE_GRACE`` to answer, then abort the TCP connection,
        dropping whatever is still buffered for it: its reader then ends and the page leaves the hub."""
        if self.closing:
            return
        self.closing = True
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), CLOSE_GRACE)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Reset the TCP connection, discarding what the kernel still holds for the page (SO_LINGER 0:
        a plain close would leave it queued there until the page reads it or TCP gives up)."""
        if self.transport is None or self.transport.is_closing() and self.transport.get_extra_info("socket") is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # closed meanwhile
                pass
        self.transport.abort()

    async def room(self) -> None:
        """Wait until the send queue has drained below half (a replay of missed events is paced by it)."""
        while len(self.queue) >= self.low_water and not self.dropped:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    def check_alive(self, now: float, period: float) -> bool:
        """Ping a page that has been quiet for ``period``; close it if it then stays quiet for half that.

        Returns whether it started either (a task that writes to the socket).
        """
        if self.ping_sent is not None and self.last_seen < self.ping_sent:
            if now - self.ping_sent >= period / 2:
                self.ping_sent = None
                log.info("closing a WebSocket of session %s: no answer to a ping", self.session_id,
                         extra={"event": "ws.dead_peer", "session": self.session_id})
                self.close(WSCloseCode.GOING_AWAY, b"no answer to ping")
                return True
            return False
        if now - self.last_seen >= period:
            self.ping_sent = now
            self.spawn(self._ping())
            return True
        return False

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
            room = self._room
            if room is not None and len(self.queue) < self.low_water:
                self._room = None
                if not room.done():
                    room.set_result(None)
            await self.ws.send_str(json.dumps(message, default=str))
            if message.get("type") == "event":
                metrics.EVENTS_PUSHED.inc()


class Hub:
    """Routes the feed's events to the open connections of their session (subscribed per session,
    so that a process without pages reads no events)."""

    def __init__(self, runtime: Runtime, config: WebConfig) -> None:
        self.runtime = runtime
        self.feed = runtime.feed
        self.config = config
        self.connections: dict[str, set[Connection]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self.per_token: dict[str, int] = {}
        self.per_address: dict[str, int] = {}

    def close(self) -> None:
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()

    def dispatch(self, event: EventRecord) -> None:
        metrics.PUSH_LATENCY.observe(max(0.0, time.time() - event.created_at))
        for conn in self.connections.get(event.session_id, ()):
            conn.offer(event)

    async def heartbeat(self) -> None:
        """Keep-alive for every page, in one task. Runs forever.

        aiohttp's own heartbeat re-arms a timer on every message it receives, which costs every
        check-in a callback; here each message only notes its time, and this sweep pings the pages
        that have been quiet for ``[web] heartbeat`` seconds and closes those that do not answer
        within half of that (a dead peer's TCP connection may never report an error).

        Pages that connected together fall quiet together, so one sweep may ping thousands of them:
        the sweep hands the loop back after every ``PING_SLICE`` pings, so that the pushes and
        check-ins due meanwhile wait for a slice of pings (a millisecond or two), not for all of
        them (at 1,000 idle pages that was a stall of 40-60 ms, under ``bench/push.py``).
        """
        loop = asyncio.get_running_loop()
        period = self.config.heartbeat
        while True:
            await asyncio.sleep(period / 4)
            now = loop.time()
            started = 0
            for conn in [c for conns in self.connections.values() for c in conns]:
                if conn not in self.connections.get(conn.session_id, ()):
                    continue  # closed while the sweep yielded
                if conn.check_alive(now, period):
                    started += 1
                    if started % PING_SLICE == 0:
                        await asyncio.sleep(0)  # yield to the loop: the slice's pings and whatever else is ready run

    def refusal(self, token: str, address: str) -> str | None:
        """Why one more socket with ``token`` from ``address`` is refused (None: it is not)."""
        cap = self.config.max_sockets_per_token
        if cap and self.per_token.get(token, 0) >= cap:
            return f"{cap} WebSockets are open with this token already ([web] max_sockets_per_token)"
        cap = self.config.max_sockets_per_address
        if cap and self.per_address.get(address, 0) >= cap:
            return f"{cap} WebSockets are open from {address} already ([web] max_sockets_per_address)"
        return None

    def attach(self, conn: Connection) -> None:
        conns = self.connections.get(conn.session_id)
        if conns is None:
            conns = self.connections[conn.session_id] = set()
            self._unsubscribe[conn.session_id] = self.feed.subscribe(self.dispatch, conn.session_id)
        conns.add(conn)
        self.per_token[conn.token] = self.per_token.get(conn.token, 0) + 1
        self.per_address[conn.address] = self.per_address.get(conn.address, 0) + 1
        metrics.WS_CONNECTIONS.inc()

    def detach(self, conn: Connection) -> None:
        conns = self.connections.get(conn.session_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.connections[conn.session_id]
                unsubscribe = self._unsubscribe.pop(conn.session_id, None)
                if unsubscribe is not None:
                    unsubscribe()
        _decrement(self.per_token, conn.token)
        _decrement(self.per_address, conn.address)
        metrics.WS_CONNECTIONS.dec()


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


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
