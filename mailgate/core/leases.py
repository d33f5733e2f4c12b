"""Session leases: this process's lock of a session first, then the store's lease across processes.

A locked action (foreground, callback, cron, a check-in that saves against another writer) holds
both: the in-process lock orders the actions of this process without touching the store, and the
store lease (a row with a holder, an expiry the holder renews while it lives, and a budget) keeps
other processes out. A writer waits at most ``[sessions] lock_timeout`` and then fails with a
message naming the holder; a live holder's lease is never broken, only a dead one's expires.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mailgate.config import SessionsConfig
from mailgate.errors import LeaseTimeout
from mailgate.store.base import LeaseInfo, SessionRecord, Store

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A held session lease: whose, until when its time budget runs, and the session read under it."""

    session_id: str
    holder: str
    deadline: float  # monotonic time the budget ends
    budget: float
    released: bool = False
    session: SessionRecord | None = None  # read in the same store unit that took the lease

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


class SessionLocks:
    """This process's lock of each session: an entry while held, with its waiters in arrival order.

    Cheaper than an asyncio.Lock per session (kept in a weak dictionary): an uncontended acquire is
    one dictionary insert and never yields to the loop.
    """

    def __init__(self) -> None:
        self._held: dict[str, deque[asyncio.Future[None]]] = {}

    def locked(self, session_id: str) -> bool:
        return session_id in self._held

    async def acquire(self, session_id: str, timeout: float) -> None:
        waiters = self._held.get(session_id)
        if waiters is None:
            self._held[session_id] = deque()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException:
            if future.done() and not future.cancelled():  # handed the lock just as we gave up: pass it on
                self.release(session_id)
            elif future in waiters:
                waiters.remove(future)
            raise

    def release(self, session_id: str) -> None:
        waiters = self._held[session_id]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # the lock passes to this waiter
                return
        del self._held[session_id]


class Leases:
    """Takes and releases session leases for one process (``process_id`` names its holders)."""

    def __init__(self, config: SessionsConfig, store: Store, process_id: str) -> None:
        self.config = config
        self.store = store
        self.process_id = process_id
        self._locks = SessionLocks()
        self._holding: dict[str, str] = {}  # session -> what holds its lock in this process (for errors)
        self._counter = itertools.count(1)

    def store_clock(self) -> float:
        """The store's clock (POSIX seconds; tests may control it)."""
        return self.store.now()

    async def lock_local(self, session_id: str, what: str, wait: float | None = None) -> None:
        """Take this process's lock of the session, waiting at most ``wait`` (default and at most
        ``lock_timeout``); release with unlock_local."""
        budget = self.config.lock_timeout
        waited = budget if wait is None else max(0.0, min(wait, budget))
        try:
            await self._locks.acquire(session_id, waited)
        except TimeoutError:
            raise LeaseTimeout(
                f"session {session_id} stayed busy in this process for {waited:.3g} s"
                f"{' ([sessions] lock_timeout)' if waited == budget else ''}: "
                f"{self._holding.get(session_id, 'an action')} is running long; try again, or look for it in the log"
            ) from None
        self._holding[session_id] = what

    def unlock_local(self, session_id: str) -> None:
        self._holding.pop(session_id, None)
        self._locks.release(session_id)

    @asynccontextmanager
    async def locked(self, session_id: str, what: str, *, wait: float | None = None) -> AsyncIterator[Lease]:
        """Hold the session lease: first this process's lock, then the store's lease (cross-process).

        Waits for each at most ``lock_timeout``, or for both at most ``wait`` seconds if given (a
        cross-session call that must give up before its own action's budget ends)."""
        budget = self.config.lock_timeout
        give_up = None if wait is None else time.monotonic() + max(0.0, min(wait, budget))
        await self.lock_local(session_id, what, None if give_up is None else give_up - time.monotonic())
        try:
            holder = f"{self.process_id}#{next(self._counter)}"
            lease_wait = budget if give_up is None else max(0.0, give_up - time.monotonic())
            session = await self._acquire_lease(session_id, holder, lease_wait)
            lease = Lease(session_id, holder, time.monotonic() + budget, budget, session=session)
            # Renew only if the action runs long: most finish well before a third of the lease's life.
            renewals: list[asyncio.Task[None]] = []
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.config.lease_ttl / 3, lambda: renewals.append(
                loop.create_task(self._renew(lease), name=f"lease-renew-{session_id}")))
            try:
                yield lease
            finally:
                timer.cancel()
                for renewal in renewals:
                    renewal.cancel()
                if not lease.released:
                    await asyncio.shield(self.store.release_lease(session_id, holder))
        finally:
            self.unlock_local(session_id)

    async def _acquire_lease(self, session_id: str, holder: str, wait: float) -> SessionRecord | None:
        """Take the store lease, waiting at most ``wait`` seconds; returns the session as read under it
        (None if it does not exist)."""
        deadline = time.monotonic() + wait
        delay = 0.005
        while True:
            busy, session = await self.store.acquire_lease_and_read(session_id, holder, self.config.lease_ttl,
                                                                    self.config.lock_timeout)
            if busy is None:
                return session
            if time.monotonic() + delay > deadline:
                raise LeaseTimeout(self._busy_message(busy, wait))
            await asyncio.sleep(delay)  # polling another process's lease: there is no cross-process wake-up
            delay = min(delay * 2, 0.05)

    def _busy_message(self, busy: LeaseInfo, waited: float) -> str:
        now = self.store_clock()
        held = now - busy.acquired_at
        text = f"session {busy.session_id} is locked by {busy.holder} for {held:.1f} s; gave up after waiting {waited:.3g} s"
        if now > busy.budget_until:
            text += (
                f". The holder is past its {busy.budget_until - busy.acquired_at:g} s budget but still alive (it renews its "
                "lease), so mailgate does not break the lease; find the slow action in that process's log"
            )
        return text

    async def _renew(self, lease: Lease) -> None:
        interval = self.config.lease_ttl / 3
        while True:
            if not await self.store.renew_lease(lease.session_id, lease.holder, self.config.lease_ttl):
                log.error("lost the lease of session %s", lease.session_id, extra={"event": "lease.lost"})
                return
            await asyncio.sleep(interval)
