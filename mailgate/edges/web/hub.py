"""The pages of this process: each open WebSocket's bounded send queue, and the hub that routes the
event feed's events to the pages of their session."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web

from mailgate.config import WebConfig
from mailgate.core.context import User
from mailgate.core.runtime import Runtime
from mailgate.edges.web.metrics import Metrics
from mailgate.store.base import EventRecord

log = logging.getLogger(__name__)
PING_SLICE = 50  # heartbeat pings started per turn of the event loop


def event_message(event: EventRecord, late: bool = False) -> dict[str, Any]:
    message = {"type": "event", "id": event.id, "kind": event.kind, "data": json.loads(event.payload)}
    if late:
        message["late"] = True
    return message


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
        self.last_queued = 0  # highest id put on the queue (or that the page said it had)
        self.floor = 0  # the page has every event up to this id (its ``last``)
        self.backlog_ids: set[int] = set()  # ids sent from the history: the feed may bring them again
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
        """Queue an event for this page unless it already has it; never blocks.

        The feed brings each event once, so only the history read at connect can repeat one; an
        event below an id already sent is one that became visible late and goes out marked so.
        """
        if self.paused is not None:
            self.paused.append(event)
            return
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
            self.dropped = True
            self.metrics.slow_clients_dropped += 1
            log.info("dropping a slow WebSocket client of session %s", self.session_id, extra={"event": "ws.slow_client"})
            self.spawn(self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow; reconnect to catch up"))
            return
        self.queue.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def check_alive(self, now: float, period: float) -> bool:
        """Ping a page that has been quiet for ``period``; close it if it then stays quiet for half that.

        Returns whether it started either (a task that writes to the socket).
        """
        if self.ping_sent is not None and self.last_seen < self.ping_sent:
            if now - self.ping_sent >= period / 2:
                self.ping_sent = None
                log.info("closing a WebSocket of session %s: no answer to a ping", self.session_id,
                         extra={"event": "ws.dead_peer"})
                self.spawn(self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"no answer to ping"))
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
            await self.ws.send_str(json.dumps(message, default=str))
            if message.get("type") == "event":
                self.metrics.events_pushed += 1


class Hub:
    """Routes the feed's events to the open connections of their session (subscribed per session,
    so that a process without pages reads no events)."""

    def __init__(self, runtime: Runtime, config: WebConfig, metrics: Metrics) -> None:
        self.runtime = runtime
        self.feed = runtime.feed
        self.config = config
        self.metrics = metrics
        self.connections: dict[str, set[Connection]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}

    def close(self) -> None:
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()

    def dispatch(self, event: EventRecord) -> None:
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

    def attach(self, conn: Connection) -> None:
        conns = self.connections.get(conn.session_id)
        if conns is None:
            conns = self.connections[conn.session_id] = set()
            self._unsubscribe[conn.session_id] = self.feed.subscribe(self.dispatch, conn.session_id)
        conns.add(conn)
        self.metrics.ws_connections += 1

    def detach(self, conn: Connection) -> None:
        conns = self.connections.get(conn.session_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.connections[conn.session_id]
                unsubscribe = self._unsubscribe.pop(conn.session_id, None)
                if unsubscribe is not None:
                    unsubscribe()
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
