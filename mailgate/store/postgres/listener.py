"""The doorbells: one connection per process that LISTENs for ``mailgate_events`` (committed events),
``mailgate_tasks`` (queued tasks) and ``mailgate_inbound`` (queued inbound mail) and ``mailgate_automations`` (automations due now).

A pooled connection would lose its LISTEN when the pool closes or replaces it, so the listener has a
connection of its own. Each notification calls its channel's ``wake`` (the event feed then reads the
store; the worker pool claims). When the connection drops, the listener reconnects with a growing
pause (at most ``MAX_PAUSE``) and calls every ``wake`` once connected again, so that each catches up
on what it missed; meanwhile their own polling (``[web] event_poll_interval``, ``[tasks]
poll_interval``) is the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from mailgate.store.postgres.errors import DRIVER_ERRORS, Outage, store_error

log = logging.getLogger("mailgate.store.postgres")
CHANNEL = "mailgate_events"
TASK_CHANNEL = "mailgate_tasks"
INBOUND_CHANNEL = "mailgate_inbound"
AUTOMATION_CHANNEL = "mailgate_automations"
MAX_PAUSE = 5.0


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()


class Listener:
    def __init__(self, dsn: str, wakes: dict[str, Callable[[], None]], outage: Outage, connect_timeout: float) -> None:
        self.dsn = dsn
        self.wakes = wakes  # channel -> callback; the store adds to it while the listener runs
        self.outage = outage
        self.connect_timeout = connect_timeout
        self.connected = False
        self.notifications = 0
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pg-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _notified(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        self.notifications += 1
        wake = self.wakes.get(channel)
        if wake is not None:
            wake()

    def _wake_all(self) -> None:
        for wake in list(self.wakes.values()):
            wake()

    async def _run(self) -> None:
        pause = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            started = time.monotonic()
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                lost = self._lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                for channel in (CHANNEL, TASK_CHANNEL, INBOUND_CHANNEL, AUTOMATION_CHANNEL):
                    await conn.add_listener(channel, self._notified)
                self.connected = True
                self.outage.ok(started)
                pause = 0.1
                self._wake_all()  # catch up on whatever was committed while not listening
                await lost.wait()
                log.warning("the event listener lost its connection; reconnecting", extra={"event": "store.listen_lost"})
            except (asyncpg.PostgresError, *DRIVER_ERRORS) as exc:
                self.outage.failed(exc, store_error(exc, self.dsn), started, lost=True)
            finally:
                self.connected = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(pause)  # back-off before reconnecting, not synchronisation
            pause = min(MAX_PAUSE, pause * 2)
