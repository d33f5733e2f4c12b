"""The event feed: one process's view of the committed session events, for its subscribers.

Every event is a store row; the feed reads them from the store and hands each to the subscribers
of its session (and to those of all sessions), once per process. Subscribers are plain callables
run on the event loop; they must not block (put the event on a bounded queue and return).

Cursor. The feed keeps one cursor per process: the highest event id it has seen. It never jumps
past an id it has not seen: a read of the store returns every visible id above it (and any id it
skips is remembered as a gap, below), and this process's own commits move it only when their ids
directly follow it. Moving it to the ids of the process's own commits, whatever lay between, was
how events got lost when several daemons shared one store: the lower ids other processes had
committed meanwhile were never asked for.

Own commits. A commit in this process hands the events the store returned to
:meth:`EventFeed.committed`. When their ids are exactly the ones that follow the cursor, nothing
can lie between, so they are delivered at once and the cursor moves past them without a read.
Otherwise (another process committed in between, or
ids out of order) the feed is woken to read the store. A wake-up only sets a flag: a burst of
commits while a read runs costs one more read, not one per commit. Other processes' commits ring
:meth:`wake` where the store can ring (:meth:`~mailgate.store.base.Store.watch`: PostgreSQL's
``NOTIFY``), and are found by polling every ``poll_interval`` seconds (``[web]
event_poll_interval``) where it cannot, or while its doorbell is down.

Gaps. Ids are handed out at insert, but a store may make rows visible in another order (PostgreSQL
sequences: transactions commit in any order), so a read can return id 12 while 11 is still
invisible. Each id skipped below the cursor is remembered as a gap, with a deadline ``gap_timeout``
seconds away, and every read asks the store for the pending gaps by id
(:meth:`~mailgate.store.base.Store.events_with_ids`); an event found that way is delivered then,
marked late for subscribers that care (:attr:`EventFeed.late`). A gap still empty at its deadline is
given up: its transaction rolled back, or its session was deleted. The gaps are bounded in number
(``max_gaps``, oldest dropped first with a warning) so that a jump in ids cannot grow memory. On a
store with one writer (SQLite), ids become visible in order and gaps only come from rows deleted
before the feed saw them; asking for them costs one indexed read per wake-up until they expire.

Idle. With no subscriber, a read only moves the cursor to the store's last id (and forgets the
gaps): nobody is listening, and a page that connects later catches up from the store's history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from mailgate.errors import StoreError
from mailgate.store.base import EventRecord, Store

log = logging.getLogger(__name__)
Subscriber = Callable[[EventRecord], None]

GAP_TIMEOUT = 30.0  # seconds a missing id is asked for again: longer than any transaction that holds one
MAX_GAPS = 10_000
READ_BATCH = 1000


class EventFeed:
    """One process's feed of committed events (see the module docstring for the design)."""

    def __init__(self, store: Store, poll_interval: float, *, gap_timeout: float = GAP_TIMEOUT,
                 max_gaps: int = MAX_GAPS, batch: int = READ_BATCH) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.gap_timeout = gap_timeout
        self.max_gaps = max_gaps
        self.batch = batch
        self.cursor = 0  # the highest id the store has returned
        self.late = False  # True while the events being delivered are gaps filled late
        self.reads = 0
        self.delivered = 0
        self.gaps_given_up = 0
        self._gaps: dict[int, float] = {}  # missing id -> loop time it is given up at (ascending ids)
        self._by_session: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._opened = False

    # -- subscribers --------------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber, session_id: str | None = None) -> Callable[[], None]:
        """Call ``callback`` for each event (of one session, or all); returns the unsubscribe function."""
        if session_id is None:
            self._all.add(callback)
            return lambda: self._all.discard(callback)
        subs = self._by_session.setdefault(session_id, set())
        subs.add(callback)

        def unsubscribe() -> None:
            subs.discard(callback)
            if not subs and self._by_session.get(session_id) is subs:
                del self._by_session[session_id]

        return unsubscribe

    @property
    def pending_gaps(self) -> tuple[int, ...]:
        return tuple(self._gaps)

    # -- reading ------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Events were committed (announced by the store, or out of this feed's order): read soon."""
        self._wake.set()

    def committed(self, events: Sequence[EventRecord]) -> None:
        """Events this process just committed, as the store returned them from the commit.

        If they are exactly the ids that follow the cursor, nothing else can lie between: they are
        delivered now and the cursor moves past them, with no read (the common case with one
        writer). Anything else (another process committed in between, or ids out of order) wakes
        the feed to read the store, which finds what lies between.
        """
        if not events:
            return
        ordered = sorted(events, key=lambda e: e.id)
        follows = self._opened and ordered[0].id == self.cursor + 1 and ordered[-1].id == self.cursor + len(ordered)
        if not follows:
            self.wake()
            return
        self.cursor = ordered[-1].id
        if self._all or self._by_session:
            self._deliver(ordered)

    async def open(self) -> None:
        """Start from the store's last event: what was committed before is history, not news."""
        if not self._opened:
            self.cursor = max(self.cursor, await self.store.last_event_id())
            self._opened = True
            self.store.watch(self.wake)  # other processes' commits ring here, where the store can ring

    async def run(self) -> None:
        """Read after every wake-up, and every ``poll_interval`` without one. Runs until cancelled.

        A store that fails for a while (locked, unreadable) is logged once per outage and read again
        at the next poll, from the same cursor: nothing is skipped, and the pages stay open.
        """
        failing = False
        while True:
            if not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    pass
            # Cleared before reading: a commit that wakes us during the read is read next time.
            self._wake.clear()
            try:
                await self.read()
            except StoreError as exc:
                if not failing:
                    log.warning("reading events failed: %s; retrying", exc, extra={"event": "events.read_failed"})
                failing = True
            else:
                if failing:
                    log.info("reading events works again", extra={"event": "events.read_recovered"})
                failing = False

    async def read(self) -> None:
        """One read: the pending gaps, then everything above the cursor, delivered to subscribers."""
        await self.open()
        self.reads += 1
        if not self._all and not self._by_session:
            self.cursor = max(self.cursor, await self.store.last_event_id())
            self._gaps.clear()
            return
        if self._gaps:
            await self._fill_gaps()
        while True:
            events = await self.store.events_after(self.cursor, self.batch)
            self._advance(events)
            if len(events) < self.batch:
                break

    async def _fill_gaps(self) -> None:
        now = asyncio.get_running_loop().time()
        expired = [i for i, deadline in self._gaps.items() if deadline <= now]
        for i in expired:
            del self._gaps[i]
        if expired:
            self.gaps_given_up += len(expired)
            log.debug("gave up waiting for %d event ids (rolled back or deleted)", len(expired),
                      extra={"event": "events.gaps_given_up"})
        if not self._gaps:
            return
        found = await self.store.events_with_ids(list(self._gaps))
        found = [e for e in found if self._gaps.pop(e.id, None) is not None]
        if found:
            self.late = True
            try:
                self._deliver(sorted(found, key=lambda e: e.id))
            finally:
                self.late = False

    def _advance(self, events: list[EventRecord]) -> None:
        # this process's own commits may have moved the cursor while the read was under way
        events = [e for e in events if e.id > self.cursor]
        if not events:
            return
        deadline = asyncio.get_running_loop().time() + self.gap_timeout
        expected = self.cursor + 1
        for event in events:
            if event.id > expected:
                self._remember_gaps(expected, event.id, deadline)
            expected = event.id + 1
        self.cursor = events[-1].id
        self._deliver(events)

    def _remember_gaps(self, first: int, stop: int, deadline: float) -> None:
        first = max(first, stop - self.max_gaps)
        for i in range(first, stop):
            self._gaps[i] = deadline
        excess = len(self._gaps) - self.max_gaps
        if excess > 0:
            for i in list(self._gaps)[:excess]:
                del self._gaps[i]
            self.gaps_given_up += excess
            log.warning("more than %d event ids missing at once; no longer waiting for the %d oldest",
                        self.max_gaps, excess, extra={"event": "events.gaps_dropped"})

    def _deliver(self, events: Iterable[EventRecord]) -> None:
        for event in events:
            self.delivered += 1
            for callback in (*self._all, *self._by_session.get(event.session_id, ())):
                try:
                    callback(event)
                except Exception:  # one broken subscriber must not stop the others
                    log.exception("event subscriber failed", extra={"event": "events.subscriber_failed"})
