"""The embedded SQLite backend: WAL, durable (``synchronous=FULL``) group commits.

Writes go through one writer thread with group commits (:mod:`.writer`); reads through an
aiosqlite connection, which WAL lets run beside the writer; sessions through a cache that is
checked against the database before use (:mod:`.cache`).

SQL: the schema is in ``migrations/*.sql`` (numbered; ``tests/store/test_sqlite_schema.py`` holds
them to a snapshot), and every statement on it is in this module, except the writer's transaction
control and PRAGMAs and the cache's one version lookup. Errors: every sqlite3 and OS error becomes
a StoreError in :func:`.writer.store_error`, applied by the writer and by :meth:`SqliteStore._read`.

Cross-process safety comes from SQLite itself: ``BEGIN IMMEDIATE`` takes the database's write lock
and waits up to ``busy_timeout`` for another process (the CLI, a second daemon) to let go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import time
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any

import aiosqlite

from mailgate.errors import LeaseLost, MailgateError, NotFound, StoreUnavailable, VersionConflict
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
from mailgate.store.sqlite.automations import (
    SqliteAutomations,
    apply_automations,
    delete_session_automations,
)
from mailgate.store.sqlite.cache import SessionCache
from mailgate.store.sqlite.writer import SqliteWriter, store_error

log = logging.getLogger(__name__)

SESSION_COLS = "id, interview, answers, version, owner, created_at, modified_at, accessed_at"
STASH_COLS = "key, data, created_at, expires_at, ttl"
TASK_COLS = (
    "id, session_id, interview, action, arguments, user, ui_notification, state, attempts, "
    "max_attempts, worker, lease_until, created_at, started_at, finished_at, result, error_type, "
    "error_message, error_trace, variables, automation_id"
)
EVENT_COLS = "id, session_id, kind, payload, created_at"
MAILBOX_COLS = "local_part, session_id, key, idx, owner, created_at, expires_at"
INBOUND_COLS = "id, seq, sha256, size, envelope, received_at, attempts, worker, lease_until"
EMAIL_COLS = "id, local_part, session_id, message_id, sha256, size, envelope, parsed, authentication, received_at"


def _migrations() -> list[tuple[int, str, str]]:
    return numbered("mailgate.store.sqlite")


class SqliteStore(SqliteAutomations, Store):
    """SQLite file store. ``clock`` returns POSIX seconds; tests may pass a controllable one."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0, clock: Callable[[], float] = time.time,
                 cache_sessions: int = 10_000, max_pages: int = 0) -> None:
        self.path = path
        self.clock = clock
        self._busy_timeout = busy_timeout
        self._writer = SqliteWriter(path, busy_timeout, on_commit=self._committed, max_pages=max_pages)
        self._reader: aiosqlite.Connection | None = None
        self._cache_size = cache_sessions
        self._cache: SessionCache | None = None
        self._automation_wakes: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    async def open(self) -> None:
        await self._writer.open()
        try:
            self._reader = await aiosqlite.connect(self.path, isolation_level=None, timeout=self._busy_timeout)
            if self._cache_size > 0:
                self._cache = SessionCache(sqlite3.connect(self.path, isolation_level=None, timeout=0), self._cache_size)
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self.path, self._busy_timeout) from exc

    async def close(self) -> None:
        await self._writer.close()
        if self._cache is not None:
            cache, self._cache = self._cache, None
            cache.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()

    def latest_migration(self) -> int:
        return max(n for n, _, _ in _migrations())

    async def migrate(self, on_step: Callable[[int, int], None] | None = None) -> list[int]:
        clock = self.now

        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
            applied_now: list[int] = []
            known = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            pending = len([n for n, _, _ in _migrations() if n not in known])
            for number, name, sql in _migrations():
                conn.execute("BEGIN IMMEDIATE")  # serialises migrating processes
                try:
                    done = conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (number,)).fetchone()
                    if not done:
                        for statement in _statements(sql):
                            conn.execute(statement)
                        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (number, name, clock()))
                        applied_now.append(number)
                    conn.execute("COMMIT")
                    if not done and on_step is not None:
                        on_step(len(applied_now), max(pending, len(applied_now)))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return applied_now

        applied = await self._writer.run(run)
        for number in applied:
            log.info("applied migration %04d", number, extra={"event": "store.migrated"})
        return applied

    async def schema_version(self) -> int:
        rows = await self._read("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'")
        if not rows:
            return 0
        rows = await self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every read of this backend runs here (writes run in the writer): SQLite's and the OS's
        errors become StoreErrors at this one place."""
        if self._reader is None:
            raise StoreUnavailable("the store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self.path, self._busy_timeout) from exc

    # -- sessions --------------------------------------------------------------------------------
    async def create_session(self, session_id: str, interview: str, answers: str, owner: str,
                             allow_cron: bool = False) -> SessionRecord:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO sessions ({SESSION_COLS}, allow_cron) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (session_id, interview, answers, owner, now, now, now, allow_cron),
            )

        await self._writer.submit(unit)
        return SessionRecord(session_id, interview, answers, 1, owner, now, now, now)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        cache = self._cache
        if cache is None:
            return await self._read_session_uncached(session_id)
        rec = cache.get(session_id)
        if rec is not None:
            return rec
        seen = cache.check()
        rec = await self._read_session_uncached(session_id)
        if rec is not None and self._cache is cache:  # not closed meanwhile
            cache.put(rec, seen)
        return rec

    async def _read_session_uncached(self, session_id: str) -> SessionRecord | None:
        rows = await self._read(f"SELECT {SESSION_COLS} FROM sessions WHERE id = ?", (session_id,))
        return SessionRecord(*rows[0]) if rows else None

    def _committed(self) -> None:
        if self._cache is not None:
            self._cache.stale()

    def cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the session cache since the store was opened."""
        return (self._cache.hits, self._cache.misses) if self._cache is not None else (0, 0)

    async def get_sessions(self, session_ids: Sequence[str]) -> dict[str, SessionRecord]:
        """The sessions that exist among ``session_ids``: from the cache where it has them (the
        recipients of mail, message after message), the rest in reads of 500."""
        out: dict[str, SessionRecord] = {}
        ids = list(dict.fromkeys(session_ids))
        cache = self._cache
        seen = None
        if cache is not None:
            missing = []
            for session_id in ids:
                rec = cache.get(session_id)
                if rec is None:
                    missing.append(session_id)
                else:
                    out[session_id] = rec
            ids = missing
            seen = cache.check() if ids else None
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in await self._read(f"SELECT {SESSION_COLS} FROM sessions WHERE id IN ({marks})", chunk):
                rec = out[row[0]] = SessionRecord(*row)
                if cache is not None and self._cache is cache:  # not closed meanwhile
                    cache.put(rec, seen)
        return out

    async def list_sessions(self, *, interview: str | None = None, limit: int = 100, after: str | None = None) -> list[SessionRecord]:
        where, params = ["1=1"], []
        if interview is not None:
            where.append("interview = ?")
            params.append(interview)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        rows = await self._read(
            f"SELECT {SESSION_COLS} FROM sessions WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [SessionRecord(*r) for r in rows]

    async def delete_session(self, session_id: str) -> bool:
        try:
            return bool(await self._writer.submit(lambda conn: _delete_session(conn, session_id)))
        finally:
            if self._cache is not None:
                self._cache.drop(session_id)

    # -- commit ------------------------------------------------------------------------------------
    async def commit(self, changes: Changes) -> CommitResult:
        now = self.now()
        result: CommitResult = await self._writer.submit(lambda conn: _apply_changes(conn, changes, now))
        if changes.automations or changes.messages or changes.new_automations:
            self._ring_automations()
        cache = self._cache
        if cache is not None:
            if changes.save is not None and result.version is not None:
                s = changes.save
                cache.saved(s.session_id, s.answers, result.version, now, s.touch)
            if changes.delete_session is not None:
                cache.drop(changes.delete_session)
        return result

    # -- leases ------------------------------------------------------------------------------------
    async def try_acquire_lease(self, session_id: str, holder: str, ttl: float, budget: float) -> LeaseInfo | None:
        busy, _ = await self.acquire_lease_and_read(session_id, holder, ttl, budget)
        return busy

    async def acquire_lease_and_read(self, session_id: str, holder: str, ttl: float,
                                     budget: float) -> tuple[LeaseInfo | None, SessionRecord | None]:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> tuple[LeaseInfo | None, SessionRecord | None]:
            cur = conn.execute(
                "INSERT INTO session_leases VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(session_id) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, "
                "expires_at = excluded.expires_at, budget_until = excluded.budget_until "
                "WHERE session_leases.expires_at < ?",
                (session_id, holder, now, now + ttl, now + budget, now),
            )
            if cur.rowcount == 1:
                session = conn.execute(f"SELECT {SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
                return None, SessionRecord(*session) if session else None
            row = conn.execute("SELECT session_id, holder, acquired_at, expires_at, budget_until FROM session_leases WHERE session_id = ?", (session_id,)).fetchone()
            return LeaseInfo(*row), None

        return await self._writer.submit(unit)

    async def renew_lease(self, session_id: str, holder: str, ttl: float) -> bool:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE session_leases SET expires_at = ? WHERE session_id = ? AND holder = ?", (now + ttl, session_id, holder))
            return cur.rowcount == 1

        return bool(await self._writer.submit(unit))

    async def release_lease(self, session_id: str, holder: str) -> None:
        await self._writer.submit(
            lambda conn: conn.execute("DELETE FROM session_leases WHERE session_id = ? AND holder = ?", (session_id, holder))
        )

    # -- tasks -------------------------------------------------------------------------------------
    async def claim_tasks(self, worker: str, limit: int, lease: float, lost: LostTask) -> Claim:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> Claim:
            exhausted = conn.execute(
                "UPDATE tasks SET state = 'failed', finished_at = ?, lease_until = NULL, error_type = 'WorkerLost', "
                "error_message = 'the worker running this task stopped (killed or crashed) ' || attempts || "
                "' times; giving up. Fix the cause, then run: mailgate tasks retry ' || id "
                f"WHERE state = 'running' AND lease_until < ? AND attempts >= max_attempts RETURNING {TASK_COLS}",
                (now, now),
            ).fetchall()
            events: list[EventRecord] = []
            for row in exhausted:
                failed = TaskRecord(*row)
                log.error("task %s failed: its worker died on every attempt", failed.id, extra={"event": "task.worker_lost", "task": failed.id, "session": failed.session_id})
                events.extend(_apply_changes(conn, lost(failed), now).events)
            rows = conn.execute(
                f"UPDATE tasks SET state = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, started_at = ? "
                "WHERE seq IN (SELECT seq FROM tasks WHERE state = 'queued' OR (state = 'running' AND lease_until < ?) "
                f"ORDER BY seq LIMIT ?) RETURNING {TASK_COLS}",
                (worker, now + lease, now, now, limit),
            ).fetchall()
            return Claim(tuple(TaskRecord(*r) for r in rows), tuple(events))

        return await self._writer.submit(unit)

    async def heartbeat(self, worker: str, task_ids: Sequence[str], lease: float) -> None:
        if not task_ids:
            return
        until = self.now() + lease
        ids = list(task_ids)
        await self._writer.submit(
            lambda conn: conn.executemany(
                "UPDATE tasks SET lease_until = ? WHERE id = ? AND worker = ? AND state = 'running'",
                [(until, i, worker) for i in ids],
            )
        )

    async def release_tasks(self, worker: str, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        ids = list(task_ids)
        await self._writer.submit(
            lambda conn: conn.executemany(
                "UPDATE tasks SET state = 'queued', worker = NULL, lease_until = NULL, attempts = attempts - 1 "
                "WHERE id = ? AND worker = ? AND state = 'running'",
                [(i, worker) for i in ids],
            )
        )

    async def get_task(self, task_id: str) -> TaskRecord | None:
        rows = await self._read(f"SELECT {TASK_COLS} FROM tasks WHERE id = ?", (task_id,))
        return TaskRecord(*rows[0]) if rows else None

    async def get_tasks(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        out: dict[str, TaskRecord] = {}
        ids = list(dict.fromkeys(task_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in await self._read(f"SELECT {TASK_COLS} FROM tasks WHERE id IN ({marks})", chunk):
                rec = TaskRecord(*row)
                out[rec.id] = rec
        return out

    async def list_tasks(self, *, session_id: str | None = None, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        where, params = ["1=1"], []
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        rows = await self._read(f"SELECT {TASK_COLS} FROM tasks WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [TaskRecord(*r) for r in rows]

    async def retry_task(self, task_id: str) -> TaskRecord:
        def unit(conn: sqlite3.Connection) -> TaskRecord:
            row = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise NotFound(f"no task {task_id!r}; list tasks with: mailgate tasks list")
            if row[0] != "failed":
                raise MailgateError(f"task {task_id} is {row[0]}; only failed tasks can be retried")
            cur = conn.execute(
                "UPDATE tasks SET state = 'queued', attempts = 0, worker = NULL, lease_until = NULL, started_at = NULL, "
                "finished_at = NULL, result = NULL, error_type = NULL, error_message = NULL, error_trace = NULL, "
                f"variables = NULL WHERE id = ? RETURNING {TASK_COLS}",
                (task_id,),
            )
            return TaskRecord(*cur.fetchone())

        return await self._writer.submit(unit)

    async def count_tasks(self) -> dict[str, int]:
        rows = await self._read("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        counts = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def task_queue(self) -> tuple[int, int, float | None]:
        # Both read the partial index tasks_runnable (state, seq), never the finished tasks. SQLite
        # uses a partial index only when the query repeats its WHERE (hence "IN (...) AND"); INDEXED
        # BY keeps it from walking the table in seq (rowid) order from the first task ever made.
        rows = await self._read("SELECT state, COUNT(*) FROM tasks WHERE state IN ('queued', 'running') GROUP BY state")
        counts = {state: int(n) for state, n in rows}
        oldest = await self._read("SELECT created_at FROM tasks INDEXED BY tasks_runnable "
                                  "WHERE state IN ('queued', 'running') AND state = 'queued' ORDER BY seq LIMIT 1")
        return counts.get("queued", 0), counts.get("running", 0), float(oldest[0][0]) if oldest else None

    # -- scheduled tasks -------------------------------------------------------------------------------
    async def claim_period(self, type_: str, period: str, holder: str) -> bool:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT INTO cron_periods VALUES (?, ?, ?, ?) ON CONFLICT(type, period) DO NOTHING",
                               (type_, period, holder, now))
            return cur.rowcount == 1

        return bool(await self._writer.submit(unit))

    async def last_periods(self) -> dict[str, tuple[str, float]]:
        rows = await self._read("SELECT type, period, claimed_at FROM cron_periods c WHERE claimed_at = "
                                "(SELECT MAX(claimed_at) FROM cron_periods WHERE type = c.type)")
        return {t: (p, float(at)) for t, p, at in rows}

    async def cron_session_ids(self, interviews: Sequence[str], after: str | None, limit: int) -> list[str]:
        if not interviews:
            return []
        marks = ",".join("?" * len(interviews))
        rows = await self._read(
            f"SELECT id FROM sessions WHERE interview IN ({marks}) AND allow_cron = 1 AND id > ? ORDER BY id LIMIT ?",
            (*interviews, after or "", limit),
        )
        return [r[0] for r in rows]

    async def inactive_session_ids(self, before: float, interviews: Sequence[str] | None, exclude: Sequence[str],
                                   limit: int) -> list[str]:
        where: list[str] = ["modified_at < ?"]
        params: list[Any] = [before]
        if interviews is not None:
            where.append(f"interview IN ({','.join('?' * len(interviews))})")
            params.extend(interviews)
        if exclude:
            where.append(f"interview NOT IN ({','.join('?' * len(exclude))})")
            params.extend(exclude)
        rows = await self._read(f"SELECT id FROM sessions WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, limit))
        return [r[0] for r in rows]

    # -- stashed data ----------------------------------------------------------------------------------
    async def put_stash(self, stash: StashRecord) -> None:
        def unit(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO stashes ({STASH_COLS}) VALUES (?, ?, ?, ?, ?)",
                         (stash.key, stash.data, stash.created_at, stash.expires_at, stash.ttl))

        await self._writer.submit(unit)

    async def take_stash(self, key: str, now: float, *, delete: bool = False,
                         expires_at: float | None = None) -> StashRecord | None:
        def unit(conn: sqlite3.Connection) -> StashRecord | None:
            row = conn.execute(f"SELECT {STASH_COLS} FROM stashes WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
            if row is None:
                return None
            rec = StashRecord(*row)
            if delete:
                conn.execute("DELETE FROM stashes WHERE key = ?", (key,))
            elif expires_at is not None:
                conn.execute("UPDATE stashes SET expires_at = ? WHERE key = ?", (expires_at, key))
                rec = dataclasses.replace(rec, expires_at=expires_at)
            return rec

        if not delete and expires_at is None:
            rows = await self._read(f"SELECT {STASH_COLS} FROM stashes WHERE key = ? AND expires_at > ?", (key, now))
            return StashRecord(*rows[0]) if rows else None
        result: StashRecord | None = await self._writer.submit(unit)
        return result

    async def purge_stashes(self, now: float) -> int:
        def unit(conn: sqlite3.Connection) -> int:
            return int(conn.execute("DELETE FROM stashes WHERE expires_at <= ?", (now,)).rowcount)

        return int(await self._writer.submit(unit))

    # -- mail ------------------------------------------------------------------------------------------
    async def setting(self, name: str, default: str) -> str:
        def unit(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(name) DO NOTHING", (name, default))
            return str(conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()[0])

        rows = await self._read("SELECT value FROM settings WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else await self._writer.submit(unit)

    async def peek_setting(self, name: str) -> str | None:
        rows = await self._read("SELECT value FROM settings WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    async def find_mailbox(self, local_part: str) -> MailboxRecord | None:
        rows = await self._read(f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE local_part = ?", (local_part,))
        return MailboxRecord(*rows[0]) if rows else None

    async def list_mailboxes(self, *, session_id: str | None = None, limit: int = 100) -> list[MailboxRecord]:
        where, params = ("WHERE m.session_id = ?", [session_id]) if session_id is not None else ("", [])
        rows = await self._read(
            f"SELECT {', '.join('m.' + c for c in MAILBOX_COLS.split(', '))}, COUNT(e.seq), MAX(e.received_at) "
            f"FROM mailboxes m LEFT JOIN emails e ON e.local_part = m.local_part {where} "
            "GROUP BY m.local_part ORDER BY m.created_at, m.local_part LIMIT ?",
            (*params, limit),
        )
        return [MailboxRecord(*r) for r in rows]

    async def deliver(self, delivery: Delivery) -> tuple[list[str], list[EventRecord]]:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> tuple[list[str], list[EventRecord]]:
            _insert_raw(conn, delivery.sha256, delivery.raw)
            return _insert_emails(conn, delivery.emails, delivery.sha256, len(delivery.raw), now, now)

        result = await self._writer.submit(unit)
        if any(e.messages for e in delivery.emails):
            self._ring_automations()
        return result

    # -- the inbound queue ---------------------------------------------------------------------------
    async def enqueue_inbound(self, entry: NewInbound) -> float | None:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> float | None:
            if entry.mailboxes and not any(conn.execute(
                    "SELECT 1 FROM mailboxes m JOIN sessions s ON s.id = m.session_id WHERE m.local_part = ? "
                    "AND m.session_id = ? AND (m.expires_at IS NULL OR m.expires_at >= ?)", (local, session, now)
            ).fetchone() for local, session in entry.mailboxes):
                return None  # every recipient's mailbox is gone since RCPT: nothing queued
            cur = conn.execute("INSERT INTO inbound_queue (id, sha256, size, envelope, received_at) VALUES (?, ?, ?, ?, ?)",
                               (entry.id, entry.sha256, len(entry.raw), entry.envelope, now))
            _insert_blob(conn, "INSERT INTO inbound_raw (seq, raw) VALUES (?, {raw})", (cur.lastrowid,), (), entry.raw,
                         "inbound_raw")
            return now

        received = await self._writer.submit(unit)
        return None if received is None else float(received)

    async def claim_inbound(self, worker: str, limit: int, lease: float,
                            held: Collection[str] = ()) -> list[InboundRecord]:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> list[InboundRecord]:
            rows = conn.execute(
                "UPDATE inbound_queue SET worker = ?, lease_until = ?, attempts = attempts + 1 "
                "WHERE seq IN (SELECT seq FROM inbound_queue WHERE worker IS NULL OR lease_until < ? "
                f"ORDER BY seq LIMIT ?) RETURNING {INBOUND_COLS}",
                (worker, now + lease, now, limit),
            ).fetchall()
            records = sorted((InboundRecord(*r) for r in rows), key=lambda r: r.seq)
            # the bytes straight into the one bytes object handed over (see _read_blob)
            return [r if r.id in held else dataclasses.replace(r, raw=_read_blob(conn, "inbound_raw", r.seq))
                    for r in records]

        return list(await self._writer.submit(unit))

    async def deliver_inbound(self, delivery: InboundDelivery) -> tuple[list[str], list[EventRecord]]:
        def unit(conn: sqlite3.Connection) -> tuple[list[str], list[EventRecord]]:
            entry = conn.execute("SELECT seq, sha256, size, received_at FROM inbound_queue WHERE id = ? AND worker = ?",
                                 (delivery.entry_id, delivery.worker)).fetchone()
            if entry is None:
                raise LeaseLost(f"queued message {delivery.entry_id} is no longer held by {delivery.worker} (its lease "
                                "expired and another processor claimed it, or it was delivered already)")
            seq, sha256, size, received_at = entry
            if delivery.emails:
                _move_raw(conn, seq, sha256, size)
            result = _insert_emails(conn, delivery.emails, sha256, size, received_at, self.now())
            conn.execute("DELETE FROM inbound_queue WHERE seq = ?", (seq,))
            conn.execute("DELETE FROM inbound_raw WHERE seq = ?", (seq,))
            return result

        delivered = await self._writer.submit(unit)
        if any(e.messages for e in delivery.emails):
            self._ring_automations()
        return delivered

    async def release_inbound(self, worker: str, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        ids = list(entry_ids)
        await self._writer.submit(
            lambda conn: conn.executemany(
                "UPDATE inbound_queue SET worker = NULL, lease_until = NULL, attempts = attempts - 1 "
                "WHERE id = ? AND worker = ?",
                [(i, worker) for i in ids],
            )
        )

    async def renew_inbound(self, worker: str, entry_ids: Sequence[str], lease: float) -> list[str]:
        if not entry_ids:
            return []
        ids = list(entry_ids)
        until = self.now() + lease

        def unit(conn: sqlite3.Connection) -> list[str]:
            held: list[str] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = conn.execute(f"UPDATE inbound_queue SET lease_until = ? WHERE worker = ? AND id IN "
                                    f"({','.join('?' * len(chunk))}) RETURNING id", (until, worker, *chunk)).fetchall()
                held.extend(r[0] for r in rows)
            return held

        return list(await self._writer.submit(unit))

    async def inbound_holders(self) -> list[str]:
        rows = await self._read("SELECT DISTINCT worker FROM inbound_queue WHERE worker IS NOT NULL")
        return sorted(r[0] for r in rows)

    async def release_dead_inbound(self, workers: Sequence[str]) -> int:
        if not workers:
            return 0
        names = list(workers)

        def unit(conn: sqlite3.Connection) -> int:
            return sum(conn.execute("UPDATE inbound_queue SET worker = NULL, lease_until = NULL WHERE worker = ?",
                                    (w,)).rowcount for w in names)

        return int(await self._writer.submit(unit))

    async def list_inbound(self, limit: int = 100) -> list[InboundRecord]:
        rows = await self._read(f"SELECT {INBOUND_COLS} FROM inbound_queue ORDER BY seq LIMIT ?", (limit,))
        return [InboundRecord(*r) for r in rows]

    async def count_inbound(self) -> int:
        rows = await self._read("SELECT COUNT(*) FROM inbound_queue")
        return int(rows[0][0])

    async def get_emails(self, email_ids: Sequence[str]) -> dict[str, EmailRecord]:
        out: dict[str, EmailRecord] = {}
        ids = list(dict.fromkeys(email_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in await self._read(f"SELECT {EMAIL_COLS} FROM emails WHERE id IN ({marks})", chunk):
                out[row[0]] = EmailRecord(*row)
        return out

    async def list_emails(self, *, session_id: str | None = None, local_part: str | None = None,
                          limit: int = 100) -> list[EmailRecord]:
        where, params = ["1=1"], []
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if local_part is not None:
            where.append("local_part = ?")
            params.append(local_part)
        rows = await self._read(f"SELECT {EMAIL_COLS} FROM emails WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                                (*params, limit))
        return [EmailRecord(*r) for r in rows]

    async def get_raw(self, sha256: str) -> bytes | None:
        rows = await self._read(f"SELECT rowid, size, CASE WHEN size < {_RAW_IN_PIECES} THEN raw END FROM raw_messages "
                                "WHERE sha256 = ?", (sha256,))
        if not rows:
            return None
        rowid, _size, raw = rows[0]
        if raw is not None:
            return bytes(raw)
        # a big one: read into one bytes object, not through a row SQLite assembles and Python copies
        return await asyncio.to_thread(self._read_big_raw, rowid)

    def _read_big_raw(self, rowid: int) -> bytes | None:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self._busy_timeout)
            try:
                return _read_blob(conn, "raw_messages", rowid)
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            if "no such rowid" in str(exc):  # deleted since it was looked up
                return None
            raise store_error(exc, self.path, self._busy_timeout) from exc
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self.path, self._busy_timeout) from exc

    # -- events ------------------------------------------------------------------------------------
    async def list_events(self, session_id: str, after_id: int = 0, limit: int = 100, *,
                          newest: bool = False) -> list[EventRecord]:
        order = "DESC" if newest else ""
        rows = await self._read(
            f"SELECT {EVENT_COLS} FROM events WHERE session_id = ? AND id > ? ORDER BY id {order} LIMIT ?",
            (session_id, after_id, limit),
        )
        events = [EventRecord(*r) for r in rows]
        return events[::-1] if newest else events

    async def events_after(self, after_id: int, limit: int = 1000) -> list[EventRecord]:
        rows = await self._read(f"SELECT {EVENT_COLS} FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [EventRecord(*r) for r in rows]

    async def events_with_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        out: list[EventRecord] = []
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._read(f"SELECT {EVENT_COLS} FROM events WHERE id IN ({marks}) ORDER BY id", chunk)
            out.extend(EventRecord(*r) for r in rows)
        return out

    async def last_event_id(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(id), 0) FROM events")
        return int(rows[0][0])

    # -- operations (the admin CLI) -----------------------------------------------------------------
    async def cancel_task(self, task_id: str, lost: LostTask) -> tuple[TaskRecord, list[EventRecord]]:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> tuple[TaskRecord, list[EventRecord]]:
            row = conn.execute(
                "UPDATE tasks SET state = 'failed', finished_at = ?, lease_until = NULL, error_type = 'Cancelled', "
                "error_message = 'cancelled by an operator (mailgate tasks cancel)' "
                f"WHERE id = ? AND state IN ('queued', 'running') RETURNING {TASK_COLS}",
                (now, task_id),
            ).fetchone()
            if row is None:
                _refuse_cancel(conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone(), task_id)
            rec = TaskRecord(*row)
            return rec, list(_apply_changes(conn, lost(rec), now).events)

        return await self._writer.submit(unit)

    async def purge_tasks(self, state: str, before: float | None, limit: int) -> int:
        def unit(conn: sqlite3.Connection) -> int:
            return int(conn.execute(
                "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE state = ? "
                "AND (? IS NULL OR COALESCE(finished_at, created_at) < ?) ORDER BY seq LIMIT ?)",
                (state, before, before, limit),
            ).rowcount)

        return await self._writer.submit(unit)

    async def delete_email(self, email_id: str) -> bool:
        def unit(conn: sqlite3.Connection) -> bool:
            row = conn.execute("DELETE FROM emails WHERE id = ? RETURNING sha256", (email_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM raw_messages WHERE sha256 = ? AND NOT EXISTS (SELECT 1 FROM emails WHERE sha256 = ?)",
                         (row[0], row[0]))
            return True

        return bool(await self._writer.submit(unit))

    async def overview(self, since: float) -> StoreOverview:
        tasks: dict[str, tuple[int, float | None]] = {s: (0, None) for s in ("queued", "running", "succeeded", "failed")}
        for state, n, oldest in await self._read("SELECT state, COUNT(*), MIN(created_at) FROM tasks GROUP BY state"):
            tasks[state] = (int(n), float(oldest))
        (sessions, mailboxes, emails, emails_since), = await self._read(
            "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM mailboxes), (SELECT COUNT(*) FROM emails), "
            "(SELECT COUNT(*) FROM emails WHERE received_at >= ?)", (since,))
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.path.getsize(self.path + suffix)  # noqa: ASYNC240 - two stats of the store's own files
            except OSError:
                pass
        return StoreOverview(tasks, int(sessions), int(mailboxes), int(emails), int(emails_since), size)

    async def backup(self, path: str, progress: StoreProgress | None = None) -> int:
        """SQLite's online backup API, from one read transaction: a consistent snapshot that other
        processes' writes neither block nor restart (WAL), copied in steps so that it can show progress."""
        partial = path + ".partial"

        def run() -> int:
            if os.path.exists(path):
                raise MailgateError(f"{path} exists; give a new file name (a backup never overwrites)")
            folder = os.path.dirname(path) or "."
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise MailgateError(f"cannot write the backup into {folder}: no such folder, or not writable by this user")
            source = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout)
            target = sqlite3.connect(partial, isolation_level=None)
            try:
                source.execute("BEGIN")
                pages = int(source.execute("PRAGMA page_count").fetchone()[0])  # opens the read transaction
                step = max(64, pages // 50)
                source.backup(target, pages=step,
                              progress=(lambda _s, left, total: progress(total - left, total)) if progress else None)
                source.execute("COMMIT")
                target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            except BaseException:
                target.close()
                os.unlink(partial)
                raise
            finally:
                source.close()
            target.close()
            os.replace(partial, path)
            return os.path.getsize(path)

        try:
            return await asyncio.to_thread(run)
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self.path, self._busy_timeout) from exc

    async def restore(self, path: str, progress: StoreProgress | None = None) -> int:
        """The backup copied over the live store in one step of the backup API, under the
        database's write lock: other processes see the old store or the restored one, never a mix."""
        latest = self.latest_migration()

        def run(conn: sqlite3.Connection) -> None:
            if not os.path.isfile(path):
                raise MailgateError(f"no backup at {path}")
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            try:
                try:
                    row = source.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
                    check = source.execute("PRAGMA quick_check").fetchone()[0]
                except sqlite3.DatabaseError as exc:
                    raise MailgateError(f"{path} is not a mailgate SQLite backup ({exc})") from exc
                if check != "ok":
                    raise MailgateError(f"{path} is damaged (quick_check: {check}); nothing was restored")
                if row is None or row[0] is None or int(row[0]) > latest:
                    raise MailgateError(f"{path} has schema version {row[0] if row else None}; this mailgate knows "
                                        f"1 to {latest}; nothing was restored")
                pages = int(source.execute("PRAGMA page_count").fetchone()[0])
                source.backup(conn, pages=-1)
                if progress:
                    progress(pages, pages)
            finally:
                source.close()

        await self._writer.run(run)
        await self.migrate()
        return await self.schema_version()

    # -- introspection for tests and metrics ---------------------------------------------------------
    @property
    def commit_stats(self) -> tuple[int, int]:
        """(group commits, units committed) since open."""
        return self._writer.batches, self._writer.units


_RAW_IN_PIECES = 1 << 20  # raw messages this big are written through the blob API, in pieces


def _insert_raw(conn: sqlite3.Connection, sha256: str, raw: bytes) -> None:
    """Store the raw bytes once per content hash.

    A bound blob is copied by sqlite3 and again into the row SQLite assembles, so a 25 MB message
    would cost 50 MB more in the daemon; a big one is inserted as a zero blob and filled in place.
    """
    if len(raw) < _RAW_IN_PIECES:
        conn.execute("INSERT INTO raw_messages VALUES (?, ?, ?) ON CONFLICT(sha256) DO NOTHING", (sha256, len(raw), raw))
        return
    cur = conn.execute("INSERT INTO raw_messages VALUES (?, ?, zeroblob(?)) ON CONFLICT(sha256) DO NOTHING",
                       (sha256, len(raw), len(raw)))
    if cur.rowcount != 1 or cur.lastrowid is None:
        return  # already stored
    view = memoryview(raw)
    with conn.blobopen("raw_messages", "raw", cur.lastrowid) as blob:
        for start in range(0, len(raw), _RAW_IN_PIECES):
            blob.write(view[start : start + _RAW_IN_PIECES])


def _read_blob(conn: sqlite3.Connection, table: str, rowid: int) -> bytes:
    """The ``raw`` blob of row ``rowid``, read into one bytes object: a SELECT would have SQLite
    assemble the value and sqlite3 copy it, twice the message."""
    with conn.blobopen(table, "raw", rowid, readonly=True) as blob:
        return blob.read()


def _move_raw(conn: sqlite3.Connection, seq: int, sha256: str, size: int) -> None:
    """Store queued message ``seq``'s raw bytes in raw_messages (once per content hash), a big one
    piece by piece: ``INSERT ... SELECT`` would hold the message twice in memory."""
    if size < _RAW_IN_PIECES:
        conn.execute("INSERT INTO raw_messages SELECT ?, ?, raw FROM inbound_raw WHERE seq = ? "
                     "ON CONFLICT(sha256) DO NOTHING", (sha256, size, seq))
        return
    cur = conn.execute("INSERT INTO raw_messages VALUES (?, ?, zeroblob(?)) ON CONFLICT(sha256) DO NOTHING",
                       (sha256, size, size))
    if cur.rowcount != 1 or cur.lastrowid is None:
        return  # already stored
    with conn.blobopen("inbound_raw", "raw", seq, readonly=True) as source, \
            conn.blobopen("raw_messages", "raw", cur.lastrowid) as target:
        for _ in range(0, size, _RAW_IN_PIECES):
            target.write(source.read(_RAW_IN_PIECES))


def _insert_blob(conn: sqlite3.Connection, sql: str, before: tuple[Any, ...], after: tuple[Any, ...], raw: bytes | bytearray,
                 table: str) -> None:
    """``sql`` with ``{raw}`` standing for the blob column, as :func:`_insert_raw` writes it: bound
    when small, a zero blob filled in place when big."""
    if len(raw) < _RAW_IN_PIECES:
        conn.execute(sql.format(raw="?"), (*before, raw, *after))
        return
    cur = conn.execute(sql.format(raw=f"zeroblob({len(raw)})"), (*before, *after))
    assert cur.lastrowid is not None
    view = memoryview(raw)
    with conn.blobopen(table, "raw", cur.lastrowid) as blob:
        for start in range(0, len(raw), _RAW_IN_PIECES):
            blob.write(view[start : start + _RAW_IN_PIECES])


def _insert_emails(conn: sqlite3.Connection, emails: Sequence[NewEmail], sha256: str, size: int, received_at: float,
                   now: float) -> tuple[list[str], list[EventRecord]]:
    """Each new e-mail with its task and event (a duplicate, already stored once, is skipped)."""
    new_ids: list[str] = []
    events: list[EventRecord] = []
    for e in emails:
        cur = conn.execute(
            f"INSERT INTO emails ({EMAIL_COLS}, dedupe) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(local_part, dedupe) DO NOTHING",
            (e.id, e.local_part, e.session_id, e.message_id, sha256, size, e.envelope, e.parsed, e.authentication,
             received_at, e.dedupe),
        )
        if cur.rowcount != 1:
            continue  # a duplicate: already stored (and its task queued) once
        new_ids.append(e.id)
        events.extend(_apply_changes(conn, Changes(new_tasks=[e.task] if e.task else (), events=[e.event] if e.event else (),
                                                   messages=e.messages), now).events)
    return new_ids, events


def _refuse_cancel(row: tuple[str] | None, task_id: str) -> typing.NoReturn:
    if row is None:
        raise NotFound(f"no task {task_id!r}; list tasks with: mailgate tasks list")
    raise MailgateError(f"task {task_id} is {row[0]}; only queued and running tasks can be cancelled")


def _statements(sql: str) -> list[str]:
    """Split a migration file into statements (the files hold no semicolons inside statements)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _delete_session(conn: sqlite3.Connection, session_id: str) -> bool:
    cur = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    hashes = [h for (h,) in conn.execute("DELETE FROM emails WHERE session_id = ? RETURNING sha256", (session_id,))]
    conn.executemany(
        "DELETE FROM raw_messages WHERE sha256 = ? AND NOT EXISTS (SELECT 1 FROM emails WHERE sha256 = ?)",
        [(h, h) for h in set(hashes)],
    )
    conn.execute("DELETE FROM mailboxes WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM tasks WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM session_leases WHERE session_id = ?", (session_id,))
    delete_session_automations(conn, session_id)
    return cur.rowcount == 1


def _check_unleased(conn: sqlite3.Connection, session_id: str, expected_version: int, now: float) -> None:
    holder = conn.execute("SELECT holder FROM session_leases WHERE session_id = ? AND expires_at >= ?", (session_id, now)).fetchone()
    if holder is not None:
        raise VersionConflict(f"session {session_id} is leased by {holder[0]}; nothing was saved")
    current = conn.execute("SELECT version FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if current is None:
        raise NotFound(f"session {session_id} was deleted while the action ran; nothing was saved")
    if current[0] != expected_version:
        raise VersionConflict(f"session {session_id} is at version {current[0]}, not {expected_version}; nothing was saved")


def _apply_changes(conn: sqlite3.Connection, ch: Changes, now: float) -> CommitResult:
    version: int | None = None
    # An unleased save of the same session at the same version checks the lease in its UPDATE.
    guard_in_save = ch.save is not None and ch.unleased == (ch.save.session_id, ch.save.expected_version)
    if ch.unleased is not None and not guard_in_save:
        _check_unleased(conn, *ch.unleased, now)
    started: list[tuple[str, bool]] = []
    if ch.automations or ch.messages or ch.new_automations or ch.broadcasts_unreached:
        started = apply_automations(conn, ch, now)
    if ch.finish is not None:
        f = ch.finish
        cur = conn.execute(
            "UPDATE tasks SET state = ?, result = ?, error_type = ?, error_message = ?, error_trace = ?, variables = ?, "
            "finished_at = ?, lease_until = NULL WHERE id = ? AND worker = ? AND state = 'running'",
            (f.state, f.result, f.error_type, f.error_message, f.error_trace, f.variables, now, f.task_id, f.worker),
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"task {f.task_id} is no longer claimed by worker {f.worker} (its lease expired and it was claimed again)")
    if ch.save is not None:
        s = ch.save
        sql = ("UPDATE sessions SET answers = ?, version = version + 1, modified_at = ?, allow_cron = ?, "
               "accessed_at = CASE WHEN ? THEN ? ELSE accessed_at END WHERE id = ? AND version = ?")
        params: tuple[Any, ...] = (s.answers, now, s.allow_cron, s.touch, now, s.session_id, s.expected_version)
        if guard_in_save:
            sql += " AND NOT EXISTS (SELECT 1 FROM session_leases WHERE session_id = ? AND expires_at >= ?)"
            params += (s.session_id, now)
        # rowcount, not RETURNING: one step of the statement (each step lets go of the GIL)
        if conn.execute(sql, params).rowcount != 1:
            if guard_in_save:
                _check_unleased(conn, s.session_id, s.expected_version, now)  # raises the precise error
            current = conn.execute("SELECT version FROM sessions WHERE id = ?", (s.session_id,)).fetchone()
            if current is None:
                raise NotFound(f"session {s.session_id} was deleted while the action ran; nothing was saved")
            raise VersionConflict(
                f"session {s.session_id} is at version {current[0]}, not {s.expected_version}: someone saved it "
                "since it was read; nothing was saved"
            )
        version = s.expected_version + 1
    if ch.delete_session is not None:
        _delete_session(conn, ch.delete_session)
    if ch.new_tasks:
        conn.executemany(
            "INSERT INTO tasks (id, session_id, interview, action, arguments, user, ui_notification, state, max_attempts, "
            "created_at, automation_id) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            [(t.id, t.session_id, t.interview, t.action, t.arguments, t.user, t.ui_notification, t.max_attempts, now,
              t.automation_id) for t in ch.new_tasks],
        )
    events = []
    for e in ch.events:
        row = conn.execute(
            "INSERT INTO events (session_id, kind, payload, created_at) VALUES (?, ?, ?, ?) RETURNING id",
            (e.session_id, e.kind, e.payload, now),
        ).fetchone()
        events.append(EventRecord(int(row[0]), e.session_id, e.kind, e.payload, now))
    if ch.mailboxes:
        conn.executemany(
            f"INSERT INTO mailboxes ({MAILBOX_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(local_part) DO UPDATE SET expires_at = excluded.expires_at",
            [(m.local_part, m.session_id, m.key, m.index, m.owner, now, m.expires_at) for m in ch.mailboxes],
        )
    if ch.release_lease is not None:
        conn.execute("DELETE FROM session_leases WHERE session_id = ? AND holder = ?", ch.release_lease)
    return CommitResult(version=version, events=tuple(events), automations=tuple(started))

