"""The SQLite backend's automations: tables of ``migrations/0007_automations.sql``, every statement on
them, and the fenced part of a commit (:func:`apply_automations`, called by the backend's one commit
path). :class:`SqliteAutomations` is mixed into :class:`~mailgate.store.sqlite.backend.SqliteStore`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from mailgate.errors import AutomationFenced, InteractionClosed, MailgateError, NotFound
from mailgate.store.base import (
    ENDED_AUTOMATION_STATES,
    AutomationRecord,
    AutomationStart,
    AutomationUpdate,
    Changes,
    ClaimedAutomation,
    JournalRecord,
    MessageRecord,
    NewAutomation,
    NewMessage,
    NewStep,
    Recheck,
    StepRecord,
    StepUpdate,
)
from mailgate.store.sqlite.writer import SqliteWriter

AUTOMATION_COLS = ("id, seq, cls, session_id, state, data, version, unique_key, key, owner, wake_at, claim_holder, "
                   "claim_until, created_at, updated_at, finished_at")
STEP_COLS = ("id, seq, automation_id, previous_id, split_id, node, state, message, result, error_type, error_message, "
             "error_trace, wake_at, attempts, created_at, started_at, finished_at, assignee_user, assignee_privileges, "
             "submitted_by")
MESSAGE_COLS = "id, seq, automation_id, broadcast_class, message, token, data, sender, state, result, created_at, delivered_at"
JOURNAL_COLS = "step_id, call_index, kind, result, created_at"
ENDED_STEPS = ("done", "skipped", "failed", "joined")
_ENDED_SQL = "('finished', 'failed', 'killed')"
# The runners' timer read (every ``timer_poll``): the partial index alone, whatever the number waiting.
RECHECK_CHUNK = 500  # rechecks per statement (3 variables each)
NEXT_WAKE = "SELECT MIN(wake_at) FROM automations INDEXED BY automations_wake WHERE state = 'running'"


def _marks(n: int) -> str:
    return ",".join("?" * n)


def insert_steps(conn: sqlite3.Connection, automation_id: str, steps: Sequence[NewStep], now: float) -> None:
    conn.executemany(
        "INSERT INTO automation_steps (id, automation_id, previous_id, split_id, node, state, message, result, error_type, "
        "error_message, error_trace, wake_at, attempts, created_at, started_at, finished_at, assignee_user, "
        "assignee_privileges) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(s.id, automation_id, s.previous_id, s.split_id, s.node, s.state, s.message, s.result, s.error_type,
          s.error_message, s.error_trace, s.wake_at, s.attempts, now,
          now if s.started or s.state == "running" or s.state in ENDED_STEPS else None,
          now if s.state in ENDED_STEPS else None, s.assignee_user, s.assignee_privileges) for s in steps],
    )


def update_step(conn: sqlite3.Connection, automation_id: str, s: StepUpdate, now: float, *,
                only_running: bool = False) -> int:
    """Write ``s`` to its step of ``automation_id`` (only if it is ``running``); rows changed."""
    ended_step = s.state in ENDED_STEPS
    return conn.execute(
        "UPDATE automation_steps SET state = ?, message = ?, result = ?, error_type = ?, error_message = ?, "
        "error_trace = ?, wake_at = ?, attempts = COALESCE(?, attempts), submitted_by = COALESCE(?, submitted_by), "
        "started_at = CASE WHEN ? THEN COALESCE(started_at, ?) ELSE started_at END, finished_at = ? "
        "WHERE id = ? AND automation_id = ? AND (NOT ? OR state = 'running')",
        (s.state, s.message, s.result, s.error_type, s.error_message, s.error_trace, s.wake_at, s.attempts,
         s.submitted_by, ended_step or s.state == "running", now, now if ended_step else None, s.step_id,
         automation_id, only_running),
    ).rowcount


def insert_messages(conn: sqlite3.Connection, messages: Sequence[NewMessage], now: float) -> list[MessageRecord]:
    """Queue each message; its running target becomes due now, a target not running gets it dropped.
    A message's ``closes_step`` is written to that step if it is still running."""
    out = []
    for m in messages:
        if m.closes_step is not None and m.automation_id is not None:
            update_step(conn, m.automation_id, m.closes_step, now, only_running=True)
        state = "queued"
        if m.automation_id is not None:
            woken = conn.execute("UPDATE automations SET wake_at = MIN(COALESCE(wake_at, ?), ?) "
                                 "WHERE id = ? AND state = 'running'", (now, now, m.automation_id)).rowcount
            state = "queued" if woken == 1 else "dropped"
        elif m.broadcast_class is None:
            raise MailgateError(f"message {m.id} names neither an automation nor a class to broadcast to")
        row = conn.execute(
            "INSERT INTO automation_messages (id, automation_id, broadcast_class, message, token, data, sender, state, "
            f"created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {MESSAGE_COLS}",
            (m.id, m.automation_id, m.broadcast_class, m.message, m.token, m.data, m.sender, state, now),
        ).fetchone()
        out.append(MessageRecord(*row))
    return out


def start_automation(conn: sqlite3.Connection, start: AutomationStart, now: float) -> tuple[AutomationRecord, bool]:
    """Create an automation with its first steps and messages, or (unique key held by a running one)
    queue the messages to that one; (the automation, created)."""
    new, steps, messages = start.automation, start.steps, start.messages
    wake = new.wake_at if new.wake_at is not None else (now if steps or messages else None)
    if new.session_id is not None and conn.execute("SELECT 1 FROM sessions WHERE id = ?", (new.session_id,)).fetchone() is None:
        raise NotFound(f"no session {new.session_id!r} to bind automation {new.cls} to")
    row = conn.execute(
        "INSERT INTO automations (id, cls, session_id, state, data, version, unique_key, key, owner, wake_at, "
        "created_at, updated_at) VALUES (?, ?, ?, 'running', ?, 1, ?, ?, ?, ?, ?, ?) "
        f"ON CONFLICT (cls, unique_key) WHERE state = 'running' DO NOTHING RETURNING {AUTOMATION_COLS}",
        (new.id, new.cls, new.session_id, new.data, new.unique_key, new.key, new.owner, wake, now, now),
    ).fetchone()
    created = row is not None
    if created:
        insert_steps(conn, new.id, steps, now)
        target = new.id
    else:  # one writer at a time (BEGIN IMMEDIATE): the running one cannot end meanwhile
        row = conn.execute(f"SELECT {AUTOMATION_COLS} FROM automations WHERE cls = ? AND unique_key = ? "
                           "AND state = 'running'", (new.cls, new.unique_key)).fetchone()
        target = row[0]
    if messages:
        insert_messages(conn, [NewMessage(m.id, m.message, target, None, m.token, m.data, m.sender) for m in messages], now)
        row = conn.execute(f"SELECT {AUTOMATION_COLS} FROM automations WHERE id = ?", (target,)).fetchone()
    return AutomationRecord(*row), created


def _fenced(conn: sqlite3.Connection, u: AutomationUpdate) -> AutomationFenced:
    """The precise refusal of an update whose fence did not hold."""
    row = conn.execute("SELECT version, claim_holder, state FROM automations WHERE id = ?", (u.automation_id,)).fetchone()
    if row is None:
        return AutomationFenced(f"automation {u.automation_id} no longer exists (killed or deleted); nothing was saved")
    if row[0] != u.expected_version:
        return AutomationFenced(f"automation {u.automation_id} is at version {row[0]}, not {u.expected_version}: it was "
                                "changed since it was read (another run, a submit, a retry or a goto); nothing was saved")
    return AutomationFenced(f"automation {u.automation_id} is claimed by {row[1] or 'nobody'}, not {u.holder} (the claim "
                            "lapsed and was taken over or released); nothing was saved")


def apply_automations(conn: sqlite3.Connection, ch: Changes, now: float) -> list[tuple[str, bool]]:
    """The automation part of a commit: the new automations, each update fenced (the whole commit
    is refused with AutomationFenced when one does not hold), then the messages sent. Returns
    (id, created) per new automation."""
    started = [start_automation(conn, start, now) for start in ch.new_automations]
    for u in ch.automations:
        ended = u.state in ENDED_AUTOMATION_STATES
        cur = conn.execute(
            "UPDATE automations SET state = ?, data = COALESCE(?, data), version = version + 1, "
            "wake_at = CASE WHEN ? AND ? IS NULL THEN wake_at ELSE ? END, "
            "updated_at = ?, finished_at = ?, claim_holder = CASE WHEN ? THEN claim_holder END, "
            "claim_until = CASE WHEN ? THEN claim_until END "
            "WHERE id = ? AND version = ? AND (? IS NULL OR claim_holder = ?)",
            (u.state, u.data, u.keep_claim and not ended, u.wake_at, None if ended else u.wake_at, now,
             now if ended else None, u.keep_claim, u.keep_claim,
             u.automation_id, u.expected_version, u.holder, u.holder),
        )
        if cur.rowcount != 1:
            raise _fenced(conn, u)
        for s in u.steps_finished:
            if update_step(conn, u.automation_id, s, now) != 1:
                raise NotFound(f"automation {u.automation_id} has no step {s.step_id}; nothing was saved")
        insert_steps(conn, u.automation_id, u.steps_opened, now)
        for d in u.messages_done:
            cur = conn.execute(
                "UPDATE automation_messages SET state = ?, result = ?, delivered_at = ? WHERE id = ? AND state = 'queued' "
                "AND (automation_id = ? OR broadcast_class IS NOT NULL)",
                (d.state, d.result, now, d.message_id, u.automation_id),
            )
            if cur.rowcount != 1:
                raise AutomationFenced(f"message {d.message_id} is not queued for automation {u.automation_id} (consumed "
                                       "already, or another automation's); nothing was saved")
        if u.journal:
            conn.executemany("INSERT INTO automation_journal VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT (step_id, call_index) DO NOTHING",
                             [(j.step_id, j.call_index, j.kind, j.result, now) for j in u.journal])
        if ended:  # messages that arrived during its last run: it will never read them
            conn.execute("UPDATE automation_messages SET state = 'dropped', delivered_at = ? "
                         "WHERE automation_id = ? AND state = 'queued'", (now, u.automation_id))
        else:  # a message queued while it ran keeps it due
            conn.execute("UPDATE automations SET wake_at = ? WHERE id = ? AND EXISTS (SELECT 1 FROM automation_messages "
                         "WHERE automation_id = ? AND state = 'queued')", (now, u.automation_id, u.automation_id))
    insert_messages(conn, ch.messages, now)
    conn.executemany("UPDATE automation_messages SET state = 'dropped', delivered_at = ? "
                     "WHERE id = ? AND broadcast_class IS NOT NULL AND state = 'queued'",
                     [(now, b) for b in ch.broadcasts_unreached])
    return [(rec.id, created) for rec, created in started]


def delete_session_automations(conn: sqlite3.Connection, session_id: str) -> None:
    ids = "SELECT id FROM automations WHERE session_id = ?"
    conn.execute(f"DELETE FROM automation_journal WHERE step_id IN (SELECT id FROM automation_steps "
                 f"WHERE automation_id IN ({ids}))", (session_id,))
    conn.execute(f"DELETE FROM automation_steps WHERE automation_id IN ({ids})", (session_id,))
    conn.execute(f"DELETE FROM automation_messages WHERE automation_id IN ({ids})", (session_id,))
    conn.execute("DELETE FROM automations WHERE session_id = ?", (session_id,))


def _claimed(conn: sqlite3.Connection, rows: list[Any]) -> list[ClaimedAutomation]:
    autos = sorted((AutomationRecord(*r) for r in rows), key=lambda a: (a.wake_at or 0.0, a.seq))
    if not autos:
        return []
    ids = [a.id for a in autos]
    steps: dict[str, list[StepRecord]] = {i: [] for i in ids}
    msgs: dict[str, list[MessageRecord]] = {i: [] for i in ids}
    for row in conn.execute(f"SELECT {STEP_COLS} FROM automation_steps WHERE automation_id IN ({_marks(len(ids))}) "
                            "AND state IN ('waiting', 'interaction', 'running') ORDER BY seq", ids):
        step = StepRecord(*row)
        steps[step.automation_id].append(step)
    for row in conn.execute(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE automation_id IN ({_marks(len(ids))}) "
                            "AND state = 'queued' ORDER BY seq", ids):
        msg = MessageRecord(*row)
        msgs[str(msg.automation_id)].append(msg)
    return [ClaimedAutomation(a, tuple(steps[a.id]), tuple(msgs[a.id])) for a in autos]


class SqliteAutomations:
    """The automation methods of the SQLite store (mixed into SqliteStore, which provides these)."""

    _writer: SqliteWriter
    _automation_wakes: list[Callable[[], None]]

    def now(self) -> float:
        raise NotImplementedError  # SqliteStore's

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError  # SqliteStore's

    def watch_automations(self, wake: Callable[[], None]) -> None:
        """SQLite rings in this process only: other processes' runners find work at ``timer_poll``."""
        self._automation_wakes.append(wake)

    def _ring_automations(self) -> None:
        for wake in list(self._automation_wakes):
            wake()

    async def create_automation(self, new: NewAutomation, steps: Sequence[NewStep] = (),
                                messages: Sequence[NewMessage] = ()) -> tuple[AutomationRecord, bool]:
        now = self.now()
        start = AutomationStart(new, steps, messages)
        result = await self._writer.submit(lambda conn: start_automation(conn, start, now))
        self._ring_automations()
        return result

    async def claim_automations(self, holder: str, limit: int, lease: float) -> list[ClaimedAutomation]:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> list[ClaimedAutomation]:
            rows = conn.execute(
                "UPDATE automations SET claim_holder = ?, claim_until = ? WHERE seq IN (SELECT seq FROM automations "
                "INDEXED BY automations_wake WHERE state = 'running' AND wake_at <= ? "
                "AND (claim_until IS NULL OR claim_until < ?) ORDER BY wake_at LIMIT ?) "
                f"RETURNING {AUTOMATION_COLS}",
                (holder, now + lease, now, now, limit),
            ).fetchall()
            return _claimed(conn, rows)

        return list(await self._writer.submit(unit))

    async def heartbeat_automations(self, holder: str, automation_ids: Sequence[str], lease: float) -> list[str]:
        if not automation_ids:
            return []
        until, ids = self.now() + lease, list(automation_ids)

        def unit(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(
                f"UPDATE automations SET claim_until = ? WHERE id IN ({_marks(len(ids))}) AND claim_holder = ? "
                "AND state = 'running' RETURNING id", (until, *ids, holder))]

        return list(await self._writer.submit(unit))

    async def release_automations(self, holder: str, automation_ids: Sequence[str], wake_at: float | None = None) -> None:
        if not automation_ids:
            return
        ids = list(automation_ids)
        await self._writer.submit(lambda conn: conn.execute(
            f"UPDATE automations SET claim_holder = NULL, claim_until = NULL, wake_at = COALESCE(?, wake_at) "
            f"WHERE id IN ({_marks(len(ids))}) AND claim_holder = ?", (wake_at, *ids, holder)))
        self._ring_automations()

    async def recheck_automations(self, holder: str, rechecks: Sequence[Recheck]) -> list[str]:
        if not rechecks:
            return []
        now, items = self.now(), list(rechecks)

        def unit(conn: sqlite3.Connection) -> list[str]:
            done: list[str] = []
            for i in range(0, len(items), RECHECK_CHUNK):  # one statement per chunk (SQLite's variable limit)
                chunk = items[i:i + RECHECK_CHUNK]
                done += [r[0] for r in conn.execute(
                    f"WITH given(id, version, wake) AS (VALUES {', '.join(['(?, ?, ?)'] * len(chunk))}) "
                    "UPDATE automations SET claim_holder = NULL, claim_until = NULL, "
                    "wake_at = CASE WHEN EXISTS (SELECT 1 FROM automation_messages m WHERE m.automation_id = automations.id "
                    "AND m.state = 'queued') THEN ? ELSE given.wake END "
                    "FROM given WHERE automations.id = given.id AND automations.version = given.version "
                    "AND automations.claim_holder = ? AND automations.state = 'running' RETURNING automations.id",
                    [*(v for r in chunk for v in (r.automation_id, r.expected_version, r.wake_at)), now, holder])]
            return done

        return list(await self._writer.submit(unit))

    async def next_wake(self) -> float | None:
        rows = await self._read(NEXT_WAKE)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def get_automation(self, automation_id: str) -> AutomationRecord | None:
        rows = await self._read(f"SELECT {AUTOMATION_COLS} FROM automations WHERE id = ?", (automation_id,))
        return AutomationRecord(*rows[0]) if rows else None

    async def get_automation_by_key(self, key: str) -> AutomationRecord | None:
        rows = await self._read(f"SELECT {AUTOMATION_COLS} FROM automations WHERE key = ?", (key,))
        return AutomationRecord(*rows[0]) if rows else None

    async def list_automations(self, *, cls: str | None = None, state: str | None = None,
                               session_id: str | None = None, after_seq: int = 0,
                               limit: int = 100) -> list[AutomationRecord]:
        where: list[str] = ["seq > ?"]
        params: list[Any] = [after_seq]
        for column, value in (("cls", cls), ("state", state), ("session_id", session_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = await self._read(f"SELECT {AUTOMATION_COLS} FROM automations WHERE {' AND '.join(where)} "
                                "ORDER BY seq LIMIT ?", (*params, limit))
        return [AutomationRecord(*r) for r in rows]

    async def automation_history(self, automation_id: str) -> list[StepRecord]:
        rows = await self._read(f"SELECT {STEP_COLS} FROM automation_steps WHERE automation_id = ? ORDER BY seq",
                                (automation_id,))
        return [StepRecord(*r) for r in rows]

    async def get_automation_step(self, step_id: str) -> StepRecord | None:
        rows = await self._read(f"SELECT {STEP_COLS} FROM automation_steps WHERE id = ?", (step_id,))
        return StepRecord(*rows[0]) if rows else None

    async def get_automation_message(self, message_id: str) -> MessageRecord | None:
        rows = await self._read(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE id = ?", (message_id,))
        return MessageRecord(*rows[0]) if rows else None

    async def automation_messages(self, automation_id: str) -> list[MessageRecord]:
        rows = await self._read(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE automation_id = ? ORDER BY seq",
                                (automation_id,))
        return [MessageRecord(*r) for r in rows]

    async def queued_broadcasts(self, limit: int = 100) -> list[MessageRecord]:
        rows = await self._read(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE automation_id IS NULL "
                                "AND state = 'queued' ORDER BY seq LIMIT ?", (limit,))
        return [MessageRecord(*r) for r in rows]

    async def enqueue_message(self, message: NewMessage) -> MessageRecord:
        now = self.now()
        record: MessageRecord = (await self._writer.submit(lambda conn: insert_messages(conn, [message], now)))[0]
        self._ring_automations()
        return record

    async def open_interactions(self, user_id: str | None, privileges: Sequence[str],
                                limit: int = 100) -> list[tuple[AutomationRecord, StepRecord]]:
        a_cols = ", ".join("a." + c for c in AUTOMATION_COLS.split(", "))
        s_cols = ", ".join("s." + c for c in STEP_COLS.split(", "))
        rows = await self._read(
            f"SELECT {a_cols}, {s_cols} FROM automation_steps s JOIN automations a ON a.id = s.automation_id "
            "WHERE s.state = 'interaction' AND a.state = 'running' AND (? OR ((s.assignee_user IS NULL "
            "OR s.assignee_user = ?) AND (s.assignee_privileges IS NULL OR NOT EXISTS (SELECT 1 FROM "
            "json_each(s.assignee_privileges) p WHERE p.value NOT IN (SELECT value FROM json_each(?)))))) "
            "ORDER BY s.seq LIMIT ?",
            ("admin" in privileges, user_id, json.dumps(list(privileges)), limit))
        n = len(AUTOMATION_COLS.split(", "))
        return [(AutomationRecord(*r[:n]), StepRecord(*r[n:])) for r in rows]

    async def submit_interaction(self, automation_id: str, step_id: str, expected_version: int, *,
                                 submitted_by: str, data: str, result: str | None = None) -> AutomationRecord:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> AutomationRecord:
            auto = conn.execute("SELECT state, version FROM automations WHERE id = ?", (automation_id,)).fetchone()
            step = conn.execute("SELECT state FROM automation_steps WHERE id = ? AND automation_id = ?",
                                (step_id, automation_id)).fetchone()
            if auto is None or step is None:
                raise NotFound(f"no step {step_id!r} of automation {automation_id!r}")
            if step[0] != "interaction" or auto[0] != "running":
                raise InteractionClosed(f"step {step_id} is {step[0]} (automation {auto[0]}): it takes no submit any more")
            if auto[1] != expected_version:
                raise AutomationFenced(f"automation {automation_id} is at version {auto[1]}, not {expected_version}; "
                                       "nothing was saved")
            conn.execute("UPDATE automation_steps SET state = 'done', message = 'OK', result = ?, submitted_by = ?, "
                         "started_at = COALESCE(started_at, ?), finished_at = ? WHERE id = ?",
                         (result, submitted_by, now, now, step_id))
            row = conn.execute(f"UPDATE automations SET data = ?, version = version + 1, wake_at = ?, updated_at = ? "
                               f"WHERE id = ? RETURNING {AUTOMATION_COLS}", (data, now, now, automation_id)).fetchone()
            return AutomationRecord(*row)

        record = await self._writer.submit(unit)
        self._ring_automations()
        return record

    async def kill_automation(self, automation_id: str) -> bool:
        def unit(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM automation_journal WHERE step_id IN (SELECT id FROM automation_steps "
                         "WHERE automation_id = ?)", (automation_id,))
            conn.execute("DELETE FROM automation_steps WHERE automation_id = ?", (automation_id,))
            conn.execute("DELETE FROM automation_messages WHERE automation_id = ?", (automation_id,))
            return conn.execute("DELETE FROM automations WHERE id = ?", (automation_id,)).rowcount == 1

        return bool(await self._writer.submit(unit))

    async def retry_automation(self, automation_id: str) -> AutomationRecord:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> AutomationRecord:
            row = conn.execute("SELECT state, cls FROM automations WHERE id = ?", (automation_id,)).fetchone()
            if row is None:
                raise NotFound(f"no automation {automation_id!r}; list them with: mailgate automations list")
            if row[0] != "failed":
                raise MailgateError(f"automation {automation_id} is {row[0]}; only failed automations can be retried")
            conn.execute("UPDATE automation_steps SET state = 'waiting', attempts = 0, wake_at = NULL, finished_at = NULL "
                         "WHERE automation_id = ? AND state = 'failed'", (automation_id,))
            return _rerun(conn, automation_id, str(row[1]), now)

        record = await self._writer.submit(unit)
        self._ring_automations()
        return record

    async def goto_automation(self, automation_id: str, node: str, step_id: str) -> AutomationRecord:
        now = self.now()

        def unit(conn: sqlite3.Connection) -> AutomationRecord:
            row = conn.execute("SELECT state, cls FROM automations WHERE id = ?", (automation_id,)).fetchone()
            if row is None:
                raise NotFound(f"no automation {automation_id!r}; list them with: mailgate automations list")
            if row[0] not in ("running", "failed"):
                raise MailgateError(f"automation {automation_id} is {row[0]}; only running and failed automations can move")
            conn.execute("UPDATE automation_steps SET state = 'skipped', message = ?, finished_at = ? WHERE automation_id = ? "
                         "AND state IN ('waiting', 'interaction', 'running')", (f"goto {node}", now, automation_id))
            insert_steps(conn, automation_id, [NewStep(step_id, node)], now)
            return _rerun(conn, automation_id, str(row[1]), now)

        record = await self._writer.submit(unit)
        self._ring_automations()
        return record

    async def delete_automation_history(self, before: float) -> tuple[int, int]:
        def unit(conn: sqlite3.Connection) -> tuple[int, int]:
            ids = f"SELECT id FROM automations WHERE state IN {_ENDED_SQL} AND finished_at < ?"
            conn.execute(f"DELETE FROM automation_journal WHERE step_id IN (SELECT id FROM automation_steps "
                         f"WHERE automation_id IN ({ids}))", (before,))
            steps = conn.execute(f"DELETE FROM automation_steps WHERE automation_id IN ({ids})", (before,)).rowcount
            conn.execute(f"DELETE FROM automation_messages WHERE automation_id IN ({ids})", (before,))
            autos = conn.execute(f"DELETE FROM automations WHERE state IN {_ENDED_SQL} AND finished_at < ?",
                                 (before,)).rowcount
            # consumed broadcasts, and messages dropped for automations that are gone (killed)
            conn.execute("DELETE FROM automation_messages WHERE state <> 'queued' AND created_at < ? AND (automation_id "
                         "IS NULL OR NOT EXISTS (SELECT 1 FROM automations a WHERE a.id = automation_id))", (before,))
            return int(autos), int(steps)

        return await self._writer.submit(unit)

    async def count_automations(self) -> dict[str, int]:
        counts = {"running": 0, "finished": 0, "failed": 0, "killed": 0}
        counts.update({state: int(n) for state, n in await self._read(
            "SELECT state, COUNT(*) FROM automations GROUP BY state")})
        return counts

    async def automation_backlog(self) -> tuple[int, float | None]:
        rows = await self._read("SELECT COUNT(*), MIN(wake_at) FROM automations INDEXED BY automations_wake "
                                "WHERE state = 'running' AND wake_at <= ?", (self.now(),))
        return int(rows[0][0]), float(rows[0][1]) if rows[0][1] is not None else None

    async def journal_entry(self, step_id: str, call_index: int) -> JournalRecord | None:
        rows = await self._read(f"SELECT {JOURNAL_COLS} FROM automation_journal WHERE step_id = ? AND call_index = ?",
                                (step_id, call_index))
        return JournalRecord(*rows[0]) if rows else None


def _rerun(conn: sqlite3.Connection, automation_id: str, cls: str, now: float) -> AutomationRecord:
    """The automation running again and due now, its claim cleared, its version moved on (a runner
    still holding it has its commit refused)."""
    try:
        row = conn.execute(
            "UPDATE automations SET state = 'running', finished_at = NULL, wake_at = ?, claim_holder = NULL, "
            f"claim_until = NULL, version = version + 1, updated_at = ? WHERE id = ? RETURNING {AUTOMATION_COLS}",
            (now, now, automation_id)).fetchone()
    except sqlite3.IntegrityError:
        raise MailgateError(f"another automation of {cls} with the same unique values is running; automation "
                            f"{automation_id} cannot run beside it (kill one of them first)") from None
    return AutomationRecord(*row)
