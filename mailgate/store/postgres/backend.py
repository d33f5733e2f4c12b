"""The PostgreSQL backend: several daemons on several hosts share one database.

Driver: asyncpg (chosen by ``bench/pg_driver.py``: on the task path it used 0.64x psycopg 3's CPU per
task at the same throughput; see the README). A connection pool serves every call; one more
connection, outside the pool, listens for the event doorbell (:mod:`.listener`).

Round trips. Every call that writes several rows is one call of a server-side function
(``migrations/0002_functions.sql``), so it costs one round trip. Commits and deliveries are grouped
(:mod:`.grouper`): those that arrive while one group is on its way go together in the next
(``mailgate_commit``, ``mailgate_deliver``), so that under load a batch of finished tasks or of
received messages costs one round trip and one disk flush. A commit in a group stays all or nothing
on its own (a subtransaction); a group of deliveries that fails for another reason than the
connection is sent again one by one, so that one bad message cannot refuse the others.

Accepting mail. An RCPT lookup (:meth:`PgStore.find_mailbox`) is answered from a cache of the
mailboxes found before, while the doorbell connection listens: a trigger on ``mailboxes``
(``migrations/0005_accept.sql``) notifies every node of a deleted mailbox or one changed in a way
that could refuse mail, and the listener drops it; a reconnected listener empties the cache (it may
have missed some), and while it is not connected every lookup reads the database. An entry is kept
at most ``MAILBOX_TTL`` seconds, and one that looks expired is read again (expiries move later
without a word). The notification reaches another node a moment after the commit: the DATA-time
check (``NewInbound.mailboxes``) is part of the enqueue's own transaction, so a mailbox deleted
before the message is queued is refused at DATA whatever a node's cache held at RCPT. Reads of
sessions are grouped like commits (the processor asks for each message's sessions, many at once).

Time. Every comparison with "now" happens in SQL on the database's clock (``mailgate_now(NULL)``);
:meth:`PgStore.now` is this host's clock corrected by the offset to the database's, measured at open
and again every minute. Tests pass a ``clock``: then that time is sent with each call instead.

Errors. Every driver and network error becomes a StoreError in :func:`.errors.store_error`; the
functions' own SQLSTATEs (MG001-MG003) become VersionConflict, LeaseLost and NotFound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import asyncpg

from mailgate.errors import MailgateError, NotFound, StoreError, StoreUnavailable
from mailgate.store.base import (
    Changes,
    Claim,
    CommitResult,
    Delivery,
    EmailRecord,
    EventRecord,
    InboundDelivery,
    InboundRecord,
    LeaseInfo,
    LostTask,
    MailboxRecord,
    NewEmail,
    NewInbound,
    SessionRecord,
    StashRecord,
    Store,
    StoreOverview,
    StoreProgress,
    TaskRecord,
)
from mailgate.store.migrations import numbered
from mailgate.store.postgres.automations import PgAutomations, automations_json
from mailgate.store.postgres.errors import (
    DRIVER_ERRORS,
    Outage,
    domain_error,
    lost_connection,
    store_error,
)
from mailgate.store.postgres.grouper import Grouper
from mailgate.store.postgres.listener import (
    CHANNEL,
    INBOUND_CHANNEL,
    MAILBOX_CHANNEL,
    TASK_CHANNEL,
    Listener,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SESSION_COLS = "id, interview, answers, version, owner, created_at, modified_at, accessed_at"
STASH_COLS = "key, data, created_at, expires_at, ttl"
TASK_COLS = (
    'id, session_id, interview, action, arguments, "user", ui_notification, state, attempts, '
    "max_attempts, worker, lease_until, created_at, started_at, finished_at, result, error_type, "
    "error_message, error_trace, variables, automation_id"
)
TASK_FIELDS = tuple(c.strip().strip('"') for c in TASK_COLS.split(","))
EVENT_COLS = "id, session_id, kind, payload, created_at"
MAILBOX_COLS = "local_part, session_id, key, idx, owner, created_at, expires_at"
INBOUND_COLS = "id, seq, sha256, size, envelope, received_at, attempts, worker, lease_until"
EMAIL_COLS = "id, local_part, session_id, message_id, sha256, size, envelope, parsed, authentication, received_at"
CLOCK_REFRESH = 60.0  # seconds between measurements of the database's clock
COLLISIONS = ("40P01", "40001")  # deadlock detected, serialization failure: the transaction was rolled back whole
COLLISION_TRIES = 4  # an atomic call is sent at most this many times
CLOCK_READS = 3  # reads of the database's clock per measurement (the tightest bound is kept)
MAILBOX_TTL = 60.0  # seconds a cached mailbox is trusted without news (the doorbell tells of changes sooner)
MAILBOX_CACHE = 100_000  # mailboxes cached at most; past it the cache starts afresh
PROCESSOR_LINGER = 0.01  # seconds the processor's deliveries wait for company (see grouper)
ENQUEUE_PARALLEL = 4  # enqueue groups on their way at once (see grouper; bench/smtp_ingest.py: 0.43x with 2, 0.65x with 4)
MIGRATION_LOCK = 0x6D61696C67617465  # pg_advisory_xact_lock key of migrating processes ("mailgate")


def _migrations() -> list[tuple[int, str, str]]:
    return numbered("mailgate.store.postgres")


def _task(row: asyncpg.Record) -> TaskRecord:
    return TaskRecord(*(row[name] for name in TASK_FIELDS))


def _session(row: asyncpg.Record) -> SessionRecord:
    return SessionRecord(*row[:8])


def _changes_json(ch: Changes) -> dict[str, Any]:
    """``Changes`` as the JSON ``mailgate_apply`` reads (absent parts left out: SQL NULL there)."""
    s, f = ch.save, ch.finish
    out = {
        "save": None if s is None else {
            "session_id": s.session_id, "answers": s.answers, "expected_version": s.expected_version,
            "touch": s.touch, "allow_cron": s.allow_cron},
        "delete_session": ch.delete_session,
        "new_tasks": [{"id": t.id, "session_id": t.session_id, "interview": t.interview, "action": t.action,
                       "arguments": t.arguments, "user": t.user, "ui_notification": t.ui_notification,
                       "max_attempts": t.max_attempts, "automation_id": t.automation_id} for t in ch.new_tasks],
        "events": [{"session_id": e.session_id, "kind": e.kind, "payload": e.payload} for e in ch.events],
        "finish": None if f is None else {
            "task_id": f.task_id, "worker": f.worker, "state": f.state, "result": f.result,
            "error_type": f.error_type, "error_message": f.error_message, "error_trace": f.error_trace,
            "variables": f.variables},
        "release_lease": list(ch.release_lease) if ch.release_lease is not None else None,
        "mailboxes": [{"local_part": m.local_part, "session_id": m.session_id, "key": m.key, "index": m.index,
                       "owner": m.owner, "expires_at": m.expires_at} for m in ch.mailboxes],
        "unleased": list(ch.unleased) if ch.unleased is not None else None,
    }
    out.update(automations_json(ch))
    return {k: v for k, v in out.items() if v is not None}


def _text(value: T) -> T:
    """Free text for a ``text`` column, which cannot hold NUL: each NUL becomes U+FFFD. (The
    dedupe key ends in a fixed-length hash, so it stays unambiguous; JSON columns never hold NUL,
    which JSON escapes.)"""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value  # type: ignore[return-value]


def _emails_json(emails: Sequence[NewEmail]) -> list[dict[str, Any]]:
    """New e-mails as ``mailgate_deliver`` and ``mailgate_deliver_inbound`` read them."""
    return [{
        "id": e.id, "local_part": e.local_part, "session_id": e.session_id, "message_id": _text(e.message_id),
        "dedupe": _text(e.dedupe), "envelope": e.envelope, "parsed": e.parsed, "authentication": e.authentication,
        "changes": _changes_json(Changes(new_tasks=[e.task] if e.task else (), events=[e.event] if e.event else (),
                                          messages=e.messages)),
    } for e in emails]


def _events_of(emails: Sequence[NewEmail], new_ids: list[str], event_ids: list[Any], now: float) -> list[EventRecord]:
    """The events of the new e-mails, in order (an operator-mailbox e-mail has none)."""
    by_id = {e.id: e.event for e in emails}
    made = [event for event in (by_id[i] for i in new_ids) if event is not None]
    return [EventRecord(int(i), e.session_id, e.kind, e.payload, now) for e, i in zip(made, event_ids, strict=True)]


class PgStore(PgAutomations, Store):
    """A store on one PostgreSQL database. ``clock`` (tests only) replaces the database's clock."""

    def __init__(self, dsn: str, *, pool_size: int = 10, connect_timeout: float = 10.0,
                 statement_timeout: float = 30.0, clock: Callable[[], float] | None = None,
                 max_batch: int = 256) -> None:
        self.dsn = dsn
        self.clock = clock
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.max_batch = max_batch
        self.round_trips = 0  # calls sent to the database (for benchmarks)
        self.outage = Outage(dsn)
        self._pool: asyncpg.Pool | None = None
        self._offset = 0.0  # database clock minus this host's
        self._clock_task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._wakes: dict[str, Callable[[], None]] = {}
        self._commits = Grouper(self._commit_group, max_batch, "pg-commit")
        self._deliveries = Grouper(self._deliver_group, max(1, max_batch // 8), "pg-deliver")
        self._enqueues = Grouper(self._enqueue_group, max(1, max_batch // 8), "pg-enqueue", ENQUEUE_PARALLEL)
        self._session_reads = Grouper(self._sessions_group, max_batch, "pg-read-sessions")  # no linger: tasks wait on it
        self._notes: dict[str, Callable[[str], None]] = {MAILBOX_CHANNEL: self._mailbox_changed}
        self._mailboxes: dict[str, tuple[MailboxRecord, float]] = {}  # local part -> (record, cached at, monotonic)
        self._mailbox_generation = 0  # moves whenever entries may have gone stale: a read in flight is not cached
        self.mailbox_hits = 0  # RCPT lookups answered from the cache (for tests and benchmarks)
        self._rings: set[str] = set()  # doorbells to ring (channels), once the call on its way is back
        self._ring_task: asyncio.Task[None] | None = None
        self._processed = Grouper(self._deliver_inbound_group, max(1, max_batch // 8), "pg-deliver-inbound",
                                  linger=PROCESSOR_LINGER)

    # -- time ------------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock() if self.clock is not None else time.time() + self._offset

    def _t(self) -> float | None:
        """The time to send with a call: the test clock's, or None for the database's own."""
        return self.clock() if self.clock is not None else None

    async def _measure_clock(self) -> None:
        """The database clock minus this host's, as a lower bound: the database read its clock before
        the answer came back, so ``db_now - after`` is never more than the true offset, and the
        tightest of a few reads is kept. ``now()`` is then never ahead of the database (by more than
        the clocks drift apart until the next measurement): the automations runner, woken at a
        timer's ``wake_at`` by this clock, finds it due in the claim (the database's clock). With the
        midpoint of the round trip, a wait for a pooled connection before the read put ``now()``
        ahead by half the wait; a runner woken by it claimed nothing, took the timer for one it was
        running itself and slept ``timer_poll`` (1 s) with timers due (issue 17)."""
        async def read(conn: asyncpg.Connection) -> float:
            db_now = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
            return float(db_now) - time.time()  # before the connection goes back to the pool (a round trip)

        self._offset = max([await self._call(read) for _ in range(CLOCK_READS)])

    async def _keep_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_REFRESH)  # a periodic refresh, not synchronisation
            try:
                await self._measure_clock()
            except StoreError:
                pass  # the outage is logged once by the call itself; measured again next time

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, timeout=self.connect_timeout,
                command_timeout=self.statement_timeout, server_settings={"application_name": "mailgate"})
        except (asyncpg.PostgresError, ValueError, *DRIVER_ERRORS) as exc:
            raise store_error(exc, self.dsn) from exc
        if self.clock is None:
            await self._measure_clock()
            self._clock_task = asyncio.get_running_loop().create_task(self._keep_clock(), name="pg-clock")

    async def close(self) -> None:
        if self._ring_task is not None:  # the rings of the last commits still go out
            await asyncio.wait([self._ring_task], timeout=self.connect_timeout)
        if self._clock_task is not None:
            self._clock_task.cancel()
            self._clock_task = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout)
            except (asyncpg.PostgresError, *DRIVER_ERRORS):
                pool.terminate()

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process commits events: LISTEN on a connection of its own."""
        self._listen(CHANNEL, wake)

    def watch_tasks(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process queues tasks (the same listening connection)."""
        self._listen(TASK_CHANNEL, wake)

    def watch_inbound(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process queues inbound mail (the same listening connection)."""
        self._listen(INBOUND_CHANNEL, wake)

    def _listen(self, channel: str, wake: Callable[[], None] | None) -> None:
        if wake is not None:
            self._wakes.setdefault(channel, wake)
        if self._listener is None:
            self._listener = Listener(self.dsn, self._wakes, self.outage, self.connect_timeout, self._notes,
                                      self._forget_mailboxes)
            self._listener.start()

    def _ring(self, *channels: str) -> None:
        """Ring doorbells after the commit they announce (``mailgate_ring``, its own transaction,
        not waiting for a disk flush: see ``migrations/0005_accept.sql`` for why the queue's and the
        deliveries' transactions do not notify themselves). Rings asked for while one call is on its
        way go together in the next."""
        self._rings.update(channels)
        if self._ring_task is None:
            self._ring_task = asyncio.get_running_loop().create_task(self._send_rings(), name="pg-ring")

    async def _send_rings(self) -> None:
        try:
            while self._rings:
                channels, self._rings = sorted(self._rings), set()

                def ring(c: asyncpg.Connection, channels: list[str] = channels) -> Awaitable[str]:
                    return c.execute("SELECT mailgate_ring($1::text[])", channels)  # type: ignore[no-any-return]

                try:
                    await self._call(ring)
                except StoreError:
                    pass  # the outage is logged once by the call; the listeners poll meanwhile
        finally:
            self._ring_task = None

    def _forget_mailboxes(self) -> None:
        self._mailbox_generation += 1
        self._mailboxes.clear()

    def _mailbox_changed(self, local_part: str) -> None:
        """The doorbell: ``local_part`` was deleted or changed (all of them when empty)."""
        if not local_part:
            self._forget_mailboxes()
            return
        self._mailbox_generation += 1
        self._mailboxes.pop(local_part, None)

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.connected

    def latest_migration(self) -> int:
        return max(n for n, _, _ in _migrations())

    async def migrate(self, on_step: Callable[[int, int], None] | None = None) -> list[int]:
        async def run(conn: asyncpg.Connection) -> list[int]:
            applied: list[int] = []
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)  # one migrating process
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at double precision NOT NULL)")
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                pending = len([n for n, _, _ in _migrations() if n not in done])
                for number, name, sql in _migrations():
                    if number in done:
                        continue
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, COALESCE($3::float8, extract(epoch FROM clock_timestamp())))",
                                       number, name, self._t())
                    applied.append(number)
                    if on_step is not None:  # applied; committed with the others at the end
                        on_step(len(applied), pending)
            return applied

        applied = await self._call(run)
        for number in applied:
            log.info("applied migration %04d", number, extra={"event": "store.migrated"})
        return applied

    async def schema_version(self) -> int:
        exists = await self._call(lambda c: c.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"))
        if not exists:
            return 0
        return int(await self._call(lambda c: c.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")))

    async def _call(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, atomic: bool = False) -> T:
        """Every call of this backend runs here: one pooled connection, errors translated, the
        outage logged once when it starts and once when it ends.

        ``atomic``: ``work`` is one statement (a server-side function call), all or nothing, so a
        deadlock or serialization failure, which rolled it back whole, is sent again (after a short
        random pause, at most COLLISION_TRIES times) instead of failing every commit of a group.
        """
        for attempt in range(1, COLLISION_TRIES + 1):
            try:
                return await self._call_once(work)
            except StoreUnavailable as exc:
                if not atomic or attempt == COLLISION_TRIES or getattr(exc.__cause__, "sqlstate", None) not in COLLISIONS:
                    raise
            await asyncio.sleep(random.uniform(0, 0.01 * attempt))  # noqa: S311 - spreading retries, not a secret
        raise AssertionError("unreachable")

    async def _call_once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        self.round_trips += 1
        pool = self._pool
        started = time.monotonic()
        try:
            conn = await pool.acquire()
        except (asyncpg.PostgresError, *DRIVER_ERRORS) as exc:  # no connection: the server is away for us
            raise self.outage.failed(exc, store_error(exc, self.dsn), started, lost=True) from exc
        try:
            try:
                result = await work(conn)
            except BaseException as exc:
                if lost_connection(exc):
                    conn.terminate()  # never hand a broken connection back out; the pool opens a new one
                raise
            finally:
                await pool.release(conn)
        except asyncpg.PostgresError as exc:
            domain = domain_error(exc)
            if domain is not None:
                self.outage.ok(started)
                raise domain from None
            raise self.outage.failed(exc, store_error(exc, self.dsn), started) from exc
        except DRIVER_ERRORS as exc:
            raise self.outage.failed(exc, store_error(exc, self.dsn), started) from exc
        self.outage.ok(started)
        return result

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(lambda c: c.fetch(sql, *args))

    # -- sessions --------------------------------------------------------------------------------
    async def create_session(self, session_id: str, interview: str, answers: str, owner: str,
                             allow_cron: bool = False) -> SessionRecord:
        row = await self._call(lambda c: c.fetchrow(
            f"INSERT INTO sessions ({SESSION_COLS}, allow_cron) SELECT $1, $2, $3, 1, $4, n, n, n, $5 "
            f"FROM mailgate_now($6) AS n RETURNING {SESSION_COLS}",
            session_id, interview, answers, owner, allow_cron, self._t()))
        return _session(row)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch(f"SELECT {SESSION_COLS} FROM sessions WHERE id = $1", session_id)
        return _session(rows[0]) if rows else None

    async def get_sessions(self, session_ids: Sequence[str]) -> dict[str, SessionRecord]:
        """Read together with the other calls that arrive while one read is on its way."""
        ids = list(dict.fromkeys(session_ids))
        if not ids:
            return {}
        return await self._session_reads.submit(ids)

    async def _sessions_group(self, group: list[list[str]]) -> list[dict[str, SessionRecord] | Exception]:
        wanted = list(dict.fromkeys(i for ids in group for i in ids))
        rows = await self._fetch(f"SELECT {SESSION_COLS} FROM sessions WHERE id = ANY($1::text[])", wanted)
        found = {r["id"]: _session(r) for r in rows}
        return [{i: found[i] for i in ids if i in found} for ids in group]

    async def list_sessions(self, *, interview: str | None = None, limit: int = 100, after: str | None = None) -> list[SessionRecord]:
        rows = await self._fetch(
            f"SELECT {SESSION_COLS} FROM sessions WHERE ($1::text IS NULL OR interview = $1) "
            "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3", interview, after, limit)
        return [_session(r) for r in rows]

    async def delete_session(self, session_id: str) -> bool:
        try:
            return bool(await self._call(lambda c: c.fetchval("SELECT mailgate_delete_session($1)", session_id)))
        finally:  # this node's own deletion is seen at once, without waiting for the doorbell
            self._mailbox_generation += 1
            for local_part in [k for k, (m, _) in self._mailboxes.items() if m.session_id == session_id]:
                del self._mailboxes[local_part]

    # -- commit ------------------------------------------------------------------------------------
    async def commit(self, changes: Changes) -> CommitResult:
        result = await self._commits.submit(changes)
        for mailbox in changes.mailboxes:  # created or renewed here: this node's next lookup reads it afresh
            self._mailboxes.pop(mailbox.local_part, None)  # (other nodes read a renewal once theirs looks expired)
        return result

    async def _commit_group(self, group: list[Changes]) -> list[CommitResult | Exception]:
        batch = json.dumps([_changes_json(ch) for ch in group], separators=(",", ":"))
        raw = await self._call(lambda c: c.fetchval("SELECT mailgate_commit($1::jsonb, $2)", batch, self._t()), atomic=True)
        outcome = json.loads(raw)
        now = float(outcome["now"])
        out: list[CommitResult | Exception] = []
        for ch, result in zip(group, outcome["results"], strict=True):
            if "error" in result:
                out.append(domain_error(None, result["error"], result["message"]) or MailgateError(result["message"]))
                continue
            events = tuple(EventRecord(int(i), e.session_id, e.kind, e.payload, now)
                           for i, e in zip(result["events"], ch.events, strict=True))
            started = tuple((str(a["id"]), bool(a["created"])) for a in result.get("automations", ()))
            out.append(CommitResult(version=result["version"], events=events, automations=started))
        return out

    # -- leases ------------------------------------------------------------------------------------
    async def try_acquire_lease(self, session_id: str, holder: str, ttl: float, budget: float) -> LeaseInfo | None:
        busy, _ = await self.acquire_lease_and_read(session_id, holder, ttl, budget)
        return busy

    async def acquire_lease_and_read(self, session_id: str, holder: str, ttl: float,
                                     budget: float) -> tuple[LeaseInfo | None, SessionRecord | None]:
        row = await self._call(lambda c: c.fetchrow(
            "SELECT * FROM mailgate_acquire_lease($1, $2, $3, $4, $5)", session_id, holder, ttl, budget, self._t()))
        if row is None:  # the lease was released between the attempt and the read: try again
            return await self.acquire_lease_and_read(session_id, holder, ttl, budget)
        if not row["acquired"]:
            return LeaseInfo(session_id, row["holder"], row["acquired_at"], row["expires_at"], row["budget_until"]), None
        if not row["s_exists"]:
            return None, None
        return None, SessionRecord(session_id, row["s_interview"], row["s_answers"], row["s_version"], row["s_owner"],
                                   row["s_created_at"], row["s_modified_at"], row["s_accessed_at"])

    async def renew_lease(self, session_id: str, holder: str, ttl: float) -> bool:
        done = await self._call(lambda c: c.fetchval(
            "UPDATE session_leases SET expires_at = mailgate_now($3) + $4 WHERE session_id = $1 AND holder = $2 "
            "RETURNING true", session_id, holder, self._t(), ttl))
        return bool(done)

    async def release_lease(self, session_id: str, holder: str) -> None:
        await self._call(lambda c: c.execute(
            "DELETE FROM session_leases WHERE session_id = $1 AND holder = $2", session_id, holder))

    # -- tasks -------------------------------------------------------------------------------------
    async def claim_tasks(self, worker: str, limit: int, lease: float, lost: LostTask) -> Claim:
        rows = await self._fetch("SELECT * FROM mailgate_claim($1, $2, $3, $4)", worker, limit, lease, self._t())
        tasks = tuple(_task(r) for r in rows if r["id"] is not None)
        events: tuple[EventRecord, ...] = ()
        if rows and rows[0]["exhausted"]:
            events = await self._fail_exhausted(lost)
        return Claim(tasks, events)

    async def _fail_exhausted(self, lost: LostTask) -> tuple[EventRecord, ...]:
        """Fail the tasks whose worker died on every attempt, with their events, in one transaction."""
        async def run(conn: asyncpg.Connection) -> tuple[EventRecord, ...]:
            async with conn.transaction():
                failed = [_task(r) for r in await conn.fetch("SELECT * FROM mailgate_fail_exhausted($1)", self._t())]
                if not failed:
                    return ()
                changes = [lost(rec) for rec in failed]
                new_events = [e for ch in changes for e in ch.events]
                for rec in failed:
                    log.error("task %s failed: its worker died on every attempt", rec.id, extra={"event": "task.worker_lost", "task": rec.id, "session": rec.session_id})
                batch = json.dumps([_changes_json(Changes(events=new_events, messages=[m for ch in changes for m in ch.messages]))])
                outcome = json.loads(await conn.fetchval("SELECT mailgate_commit($1::jsonb, $2)", batch, self._t()))
            now = float(outcome["now"])
            ids = outcome["results"][0]["events"]
            return tuple(EventRecord(int(i), e.session_id, e.kind, e.payload, now) for i, e in zip(ids, new_events, strict=True))

        return await self._call(run)

    async def heartbeat(self, worker: str, task_ids: Sequence[str], lease: float) -> None:
        if task_ids:
            await self._call(lambda c: c.execute(
                "UPDATE tasks SET lease_until = mailgate_now($3) + $4 WHERE id = ANY($1::text[]) AND worker = $2 "
                "AND state = 'running'", list(task_ids), worker, self._t(), lease))

    async def release_tasks(self, worker: str, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self._call(lambda c: c.execute(
                "WITH given AS (UPDATE tasks SET state = 'queued', worker = NULL, lease_until = NULL, "
                "attempts = attempts - 1 WHERE id = ANY($1::text[]) AND worker = $2 AND state = 'running' RETURNING 1) "
                "SELECT pg_notify('mailgate_tasks', '') FROM (SELECT 1 FROM given LIMIT 1) AS any_given",
                list(task_ids), worker))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        rows = await self._fetch(f"SELECT {TASK_COLS} FROM tasks WHERE id = $1", task_id)
        return _task(rows[0]) if rows else None

    async def get_tasks(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        rows = await self._fetch(f"SELECT {TASK_COLS} FROM tasks WHERE id = ANY($1::text[])", ids)
        return {r["id"]: _task(r) for r in rows}

    async def list_tasks(self, *, session_id: str | None = None, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        rows = await self._fetch(
            f"SELECT {TASK_COLS} FROM tasks WHERE ($1::text IS NULL OR session_id = $1) "
            "AND ($2::text IS NULL OR state = $2) ORDER BY seq DESC LIMIT $3", session_id, state, limit)
        return [_task(r) for r in rows]

    async def retry_task(self, task_id: str) -> TaskRecord:
        async def run(conn: asyncpg.Connection) -> TaskRecord:
            async with conn.transaction():
                state = await conn.fetchval("SELECT state FROM tasks WHERE id = $1 FOR UPDATE", task_id)
                if state is None:
                    raise NotFound(f"no task {task_id!r}; list tasks with: mailgate tasks list")
                if state != "failed":
                    raise MailgateError(f"task {task_id} is {state}; only failed tasks can be retried")
                row = await conn.fetchrow(
                    "UPDATE tasks SET state = 'queued', attempts = 0, worker = NULL, lease_until = NULL, started_at = NULL, "
                    "finished_at = NULL, result = NULL, error_type = NULL, error_message = NULL, error_trace = NULL, "
                    f"variables = NULL WHERE id = $1 RETURNING {TASK_COLS}", task_id)
                await conn.execute("SELECT pg_notify('mailgate_tasks', '')")
                return _task(row)

        return await self._call(run)

    async def count_tasks(self) -> dict[str, int]:
        rows = await self._fetch("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        counts = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def task_queue(self) -> tuple[int, int, float | None]:
        # The partial index tasks_runnable and tasks_state (state, seq): never the finished tasks.
        rows = await self._fetch("SELECT state, COUNT(*) FROM tasks WHERE state IN ('queued', 'running') GROUP BY state")
        counts = {r[0]: int(r[1]) for r in rows}
        oldest = await self._fetch("SELECT created_at FROM tasks WHERE state = 'queued' ORDER BY seq LIMIT 1")
        return counts.get("queued", 0), counts.get("running", 0), float(oldest[0][0]) if oldest else None

    # -- scheduled tasks -------------------------------------------------------------------------------
    async def claim_period(self, type_: str, period: str, holder: str) -> bool:
        done = await self._call(lambda c: c.fetchval(
            "INSERT INTO cron_periods VALUES ($1, $2, $3, mailgate_now($4)) ON CONFLICT (type, period) DO NOTHING "
            "RETURNING true", type_, period, holder, self._t()))
        return bool(done)

    async def last_periods(self) -> dict[str, tuple[str, float]]:
        rows = await self._fetch(
            "SELECT DISTINCT ON (type) type, period, claimed_at FROM cron_periods ORDER BY type, claimed_at DESC, period DESC")
        return {r[0]: (r[1], float(r[2])) for r in rows}

    async def cron_session_ids(self, interviews: Sequence[str], after: str | None, limit: int) -> list[str]:
        if not interviews:
            return []
        rows = await self._fetch(
            "SELECT id FROM sessions WHERE interview = ANY($1::text[]) AND allow_cron AND id > $2 ORDER BY id LIMIT $3",
            list(interviews), after or "", limit)
        return [r[0] for r in rows]

    async def inactive_session_ids(self, before: float, interviews: Sequence[str] | None, exclude: Sequence[str],
                                   limit: int) -> list[str]:
        rows = await self._fetch(
            "SELECT id FROM sessions WHERE modified_at < $1 AND ($2::text[] IS NULL OR interview = ANY($2)) "
            "AND NOT (interview = ANY($3::text[])) ORDER BY id LIMIT $4",
            before, list(interviews) if interviews is not None else None, list(exclude), limit)
        return [r[0] for r in rows]

    # -- stashed data ----------------------------------------------------------------------------------
    async def put_stash(self, stash: StashRecord) -> None:
        await self._call(lambda c: c.execute(f"INSERT INTO stashes ({STASH_COLS}) VALUES ($1, $2, $3, $4, $5)",
                                             stash.key, stash.data, stash.created_at, stash.expires_at, stash.ttl))

    async def take_stash(self, key: str, now: float, *, delete: bool = False,
                         expires_at: float | None = None) -> StashRecord | None:
        if delete:
            rows = await self._fetch(f"DELETE FROM stashes WHERE key = $1 AND expires_at > $2 RETURNING {STASH_COLS}", key, now)
        elif expires_at is not None:
            rows = await self._fetch(f"UPDATE stashes SET expires_at = $3 WHERE key = $1 AND expires_at > $2 "
                                     f"RETURNING {STASH_COLS}", key, now, expires_at)
        else:
            rows = await self._fetch(f"SELECT {STASH_COLS} FROM stashes WHERE key = $1 AND expires_at > $2", key, now)
        return StashRecord(*rows[0]) if rows else None

    async def purge_stashes(self, now: float) -> int:
        done = await self._call(lambda c: c.execute("DELETE FROM stashes WHERE expires_at <= $1", now))
        return int(str(done).rsplit(" ", 1)[-1])

    # -- mail ------------------------------------------------------------------------------------------
    async def setting(self, name: str, default: str) -> str:
        value = await self._call(lambda c: c.fetchval("SELECT value FROM settings WHERE name = $1", name))
        if value is not None:
            return str(value)
        await self._call(lambda c: c.execute(
            "INSERT INTO settings VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, default))
        return str(await self._call(lambda c: c.fetchval("SELECT value FROM settings WHERE name = $1", name)))

    async def peek_setting(self, name: str) -> str | None:
        value = await self._call(lambda c: c.fetchval("SELECT value FROM settings WHERE name = $1", name))
        return None if value is None else str(value)

    async def find_mailbox(self, local_part: str) -> MailboxRecord | None:
        """From the cache while the doorbell listens (see the module's docstring), else a read."""
        if self._listener is None:
            self._listen(MAILBOX_CHANNEL, None)
        listening = self.listening
        if listening:
            hit = self._mailboxes.get(local_part)
            if hit is not None:
                cached, cached_at = hit
                if (time.monotonic() - cached_at < MAILBOX_TTL
                        and (cached.expires_at is None or cached.expires_at >= self.now())):
                    self.mailbox_hits += 1
                    return cached
        generation = self._mailbox_generation
        rows = await self._fetch(f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE local_part = $1", local_part)
        mailbox = MailboxRecord(*rows[0]) if rows else None
        # cached only if no word of a change came while the read was on its way, and none can be missed
        if mailbox is not None and listening and self.listening and generation == self._mailbox_generation:
            if len(self._mailboxes) >= MAILBOX_CACHE:
                self._mailboxes.clear()
            self._mailboxes[local_part] = (mailbox, time.monotonic())
        return mailbox

    async def list_mailboxes(self, *, session_id: str | None = None, limit: int = 100) -> list[MailboxRecord]:
        cols = ", ".join("m." + c for c in MAILBOX_COLS.split(", "))
        rows = await self._fetch(
            f"SELECT {cols}, COUNT(e.seq), MAX(e.received_at) FROM mailboxes m "
            "LEFT JOIN emails e ON e.local_part = m.local_part WHERE ($1::text IS NULL OR m.session_id = $1) "
            "GROUP BY m.local_part ORDER BY m.created_at, m.local_part LIMIT $2", session_id, limit)
        return [MailboxRecord(*r) for r in rows]

    async def deliver(self, delivery: Delivery) -> tuple[list[str], list[EventRecord]]:
        return await self._deliveries.submit(delivery)

    async def _deliver_group(self, group: list[Delivery]) -> list[tuple[list[str], list[EventRecord]] | Exception]:
        emails = json.dumps([_emails_json(d.emails) for d in group], separators=(",", ":"))
        # asyncpg sends the bytes as they are (binary protocol): no copy into an escaped text form
        raw = await self._call(lambda c: c.fetchval(
            "SELECT mailgate_deliver($1::text[], $2::bytea[], $3::jsonb, $4)",
            [d.sha256 for d in group], [d.raw for d in group], emails, self._t()), atomic=True)
        outcome = json.loads(raw)
        now = float(outcome["now"])
        out: list[tuple[list[str], list[EventRecord]] | Exception] = []
        for d, result in zip(group, outcome["results"], strict=True):
            new_ids: list[str] = result["emails"]
            out.append((new_ids, _events_of(d.emails, new_ids, result["events"], now)))
        return out

    # -- the inbound queue ---------------------------------------------------------------------------
    async def enqueue_inbound(self, entry: NewInbound) -> float | None:
        return await self._enqueues.submit(entry)

    async def _enqueue_group(self, group: list[NewInbound]) -> list[float | None | Exception]:
        # asyncpg sends the bytes as they are (binary protocol), one round trip for the group, the
        # DATA-time check of the recipients included
        boxes = json.dumps([[list(b) for b in e.mailboxes] if e.mailboxes else None for e in group],
                           separators=(",", ":"))
        row = await self._call(lambda c: c.fetchrow(
            "SELECT * FROM mailgate_enqueue($1::text[], $2::text[], $3::bytea[], $4::text[], $5::jsonb, $6)",
            [e.id for e in group], [e.sha256 for e in group], [e.raw for e in group], [e.envelope for e in group],
            boxes, self._t()))
        refused = set(row["refused"])
        now = float(row["received"])
        if len(refused) < len(group):
            self._ring(INBOUND_CHANNEL)  # the processors of the other nodes
        return [None if n in refused else now for n in range(1, len(group) + 1)]

    async def claim_inbound(self, worker: str, limit: int, lease: float,
                            held: Collection[str] = ()) -> list[InboundRecord]:
        rows = await self._fetch(
            "UPDATE inbound_queue q SET worker = $1, lease_until = mailgate_now($4) + $3, attempts = q.attempts + 1 "
            "FROM (SELECT seq FROM inbound_queue WHERE worker IS NULL OR lease_until < mailgate_now($4) "
            "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) AS picked WHERE q.seq = picked.seq "
            f"RETURNING {', '.join('q.' + c for c in INBOUND_COLS.split(', '))}, "
            "CASE WHEN q.id = ANY($5::text[]) THEN NULL ELSE q.raw END",
            worker, limit, lease, self._t(), list(held))
        return sorted((InboundRecord(*r) for r in rows), key=lambda r: r.seq)

    async def deliver_inbound(self, delivery: InboundDelivery) -> tuple[list[str], list[EventRecord]]:
        return await self._processed.submit(delivery)

    async def _deliver_inbound_group(self, group: list[InboundDelivery]
                                     ) -> list[tuple[list[str], list[EventRecord]] | Exception]:
        batch = json.dumps([{"entry": d.entry_id, "worker": d.worker, "emails": _emails_json(d.emails)} for d in group],
                           separators=(",", ":"))
        outcome = json.loads(await self._call(lambda c: c.fetchval(
            "SELECT mailgate_deliver_inbound($1::jsonb, $2)", batch, self._t()), atomic=True))
        self._ring(*([CHANNEL] if outcome["events"] else []), *([TASK_CHANNEL] if outcome["tasks"] else []))
        now = float(outcome["now"])
        out: list[tuple[list[str], list[EventRecord]] | Exception] = []
        for d, result in zip(group, outcome["results"], strict=True):
            if "error" in result:
                out.append(domain_error(None, result["error"], result["message"]) or MailgateError(result["message"]))
                continue
            new_ids = result["emails"]
            out.append((new_ids, _events_of(d.emails, new_ids, result["events"], now)))
        return out

    async def release_inbound(self, worker: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._call(lambda c: c.execute(
                "WITH given AS (UPDATE inbound_queue SET worker = NULL, lease_until = NULL, attempts = attempts - 1 "
                "WHERE id = ANY($1::text[]) AND worker = $2 RETURNING 1) "
                "SELECT pg_notify('mailgate_inbound', '') FROM (SELECT 1 FROM given LIMIT 1) AS any_given",
                list(entry_ids), worker))

    async def renew_inbound(self, worker: str, entry_ids: Sequence[str], lease: float) -> list[str]:
        if not entry_ids:
            return []
        rows = await self._fetch(
            "UPDATE inbound_queue SET lease_until = mailgate_now($4) + $3 WHERE id = ANY($1::text[]) AND worker = $2 "
            "RETURNING id", list(entry_ids), worker, lease, self._t())
        return [r["id"] for r in rows]

    async def inbound_holders(self) -> list[str]:
        rows = await self._fetch("SELECT DISTINCT worker FROM inbound_queue WHERE worker IS NOT NULL ORDER BY worker")
        return [r["worker"] for r in rows]

    async def release_dead_inbound(self, workers: Sequence[str]) -> int:
        if not workers:
            return 0
        return int(await self._call(lambda c: c.fetchval(
            "WITH given AS (UPDATE inbound_queue SET worker = NULL, lease_until = NULL WHERE worker = ANY($1::text[]) "
            "RETURNING 1), rang AS (SELECT pg_notify('mailgate_inbound', '') FROM (SELECT 1 FROM given LIMIT 1) AS any_given) "
            "SELECT (SELECT COUNT(*) FROM given) + 0 * (SELECT COUNT(*) FROM rang)", list(workers))))

    async def list_inbound(self, limit: int = 100) -> list[InboundRecord]:
        rows = await self._fetch(f"SELECT {INBOUND_COLS} FROM inbound_queue ORDER BY seq LIMIT $1", limit)
        return [InboundRecord(*r) for r in rows]

    async def count_inbound(self) -> int:
        return int(await self._call(lambda c: c.fetchval("SELECT COUNT(*) FROM inbound_queue")))

    async def get_emails(self, email_ids: Sequence[str]) -> dict[str, EmailRecord]:
        ids = list(dict.fromkeys(email_ids))
        if not ids:
            return {}
        rows = await self._fetch(f"SELECT {EMAIL_COLS} FROM emails WHERE id = ANY($1::text[])", ids)
        return {r["id"]: EmailRecord(*r) for r in rows}

    async def list_emails(self, *, session_id: str | None = None, local_part: str | None = None,
                          limit: int = 100) -> list[EmailRecord]:
        rows = await self._fetch(
            f"SELECT {EMAIL_COLS} FROM emails WHERE ($1::text IS NULL OR session_id = $1) "
            "AND ($2::text IS NULL OR local_part = $2) ORDER BY seq LIMIT $3", session_id, local_part, limit)
        return [EmailRecord(*r) for r in rows]

    async def get_raw(self, sha256: str) -> bytes | None:
        value = await self._call(lambda c: c.fetchval("SELECT raw FROM raw_messages WHERE sha256 = $1", sha256))
        return bytes(value) if value is not None else None

    # -- events ------------------------------------------------------------------------------------
    async def list_events(self, session_id: str, after_id: int = 0, limit: int = 100, *,
                          newest: bool = False) -> list[EventRecord]:
        order = "DESC" if newest else ""
        rows = await self._fetch(
            f"SELECT {EVENT_COLS} FROM events WHERE session_id = $1 AND id > $2 ORDER BY id {order} LIMIT $3",
            session_id, after_id, limit)
        events = [EventRecord(*r) for r in rows]
        return events[::-1] if newest else events

    async def events_after(self, after_id: int, limit: int = 1000) -> list[EventRecord]:
        rows = await self._fetch(f"SELECT {EVENT_COLS} FROM events WHERE id > $1 ORDER BY id LIMIT $2", after_id, limit)
        return [EventRecord(*r) for r in rows]

    async def events_with_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        wanted = sorted(set(ids))
        if not wanted:
            return []
        rows = await self._fetch(f"SELECT {EVENT_COLS} FROM events WHERE id = ANY($1::bigint[]) ORDER BY id", wanted)
        return [EventRecord(*r) for r in rows]

    async def last_event_id(self) -> int:
        return int(await self._call(lambda c: c.fetchval("SELECT COALESCE(MAX(id), 0) FROM events")))

    # -- operations (the admin CLI) -----------------------------------------------------------------
    async def cancel_task(self, task_id: str, lost: LostTask) -> tuple[TaskRecord, list[EventRecord]]:
        async def run(conn: asyncpg.Connection) -> tuple[TaskRecord, list[EventRecord]]:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "UPDATE tasks SET state = 'failed', finished_at = mailgate_now($2), lease_until = NULL, "
                    "error_type = 'Cancelled', error_message = 'cancelled by an operator (mailgate tasks cancel)' "
                    f"WHERE id = $1 AND state IN ('queued', 'running') RETURNING {TASK_COLS}", task_id, self._t())
                if row is None:
                    state = await conn.fetchval("SELECT state FROM tasks WHERE id = $1", task_id)
                    if state is None:
                        raise NotFound(f"no task {task_id!r}; list tasks with: mailgate tasks list")
                    raise MailgateError(f"task {task_id} is {state}; only queued and running tasks can be cancelled")
                rec = _task(row)
                lost_changes = lost(rec)
                new_events = list(lost_changes.events)
                batch = json.dumps([_changes_json(Changes(events=new_events, messages=lost_changes.messages))])
                outcome = json.loads(await conn.fetchval("SELECT mailgate_commit($1::jsonb, $2)", batch, self._t()))
            now = float(outcome["now"])
            ids = outcome["results"][0]["events"]
            return rec, [EventRecord(int(i), e.session_id, e.kind, e.payload, now) for i, e in zip(ids, new_events, strict=True)]

        return await self._call(run)

    async def purge_tasks(self, state: str, before: float | None, limit: int) -> int:
        status = await self._call(lambda c: c.execute(
            "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE state = $1 "
            "AND ($2::double precision IS NULL OR COALESCE(finished_at, created_at) < $2) ORDER BY seq LIMIT $3)",
            state, before, limit))
        return int(status.split()[-1])

    async def delete_email(self, email_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                sha = await conn.fetchval("DELETE FROM emails WHERE id = $1 RETURNING sha256", email_id)
                if sha is None:
                    return False
                await conn.execute("DELETE FROM raw_messages WHERE sha256 = $1 AND NOT EXISTS "
                                   "(SELECT 1 FROM emails WHERE sha256 = $1)", sha)
                return True

        return await self._call(run)

    async def overview(self, since: float) -> StoreOverview:
        tasks: dict[str, tuple[int, float | None]] = {s: (0, None) for s in ("queued", "running", "succeeded", "failed")}
        for r in await self._fetch("SELECT state, COUNT(*), MIN(created_at) FROM tasks GROUP BY state"):
            tasks[r[0]] = (int(r[1]), float(r[2]))
        r = (await self._fetch(
            "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM mailboxes), (SELECT COUNT(*) FROM emails), "
            "(SELECT COUNT(*) FROM emails WHERE received_at >= $1), pg_database_size(current_database())", since))[0]
        return StoreOverview(tasks, int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]))

    async def backup(self, path: str, progress: StoreProgress | None = None) -> int:
        raise MailgateError("a PostgreSQL store is backed up with PostgreSQL's own tools: "
                            f"pg_dump --format=custom --file={path} DATABASE (online and consistent)")

    async def restore(self, path: str, progress: StoreProgress | None = None) -> int:
        raise MailgateError("a PostgreSQL store is restored with PostgreSQL's own tools: "
                            f"pg_restore --clean --if-exists --dbname=DATABASE {path} (stop the daemon first)")
