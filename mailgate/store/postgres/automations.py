"""The PostgreSQL backend's automations: every statement on the tables of
``migrations/0006_automations.sql`` and the JSON the fenced part of a commit travels in (applied by
``mailgate_apply_automations`` inside the backend's grouped commits). :class:`PgAutomations` is
mixed into :class:`~mailgate.store.postgres.backend.PgStore`.

Claims use ``FOR UPDATE SKIP LOCKED``: claimers in several processes never wait for each other and
never take the same automation. Messages, creations, submits, retries and gotos ring the
``mailgate_automations`` doorbell (NOTIFY) in their transaction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from mailgate.errors import AutomationFenced, InteractionClosed, MailgateError, NotFound
from mailgate.store.base import (
    AutomationRecord,
    AutomationStart,
    Changes,
    ClaimedAutomation,
    JournalRecord,
    MessageRecord,
    NewAutomation,
    NewMessage,
    NewStep,
    Recheck,
    StepRecord,
)
from mailgate.store.postgres.listener import AUTOMATION_CHANNEL

T = TypeVar("T")

AUTOMATION_COLS = ("id, seq, cls, session_id, state, data, version, unique_key, key, owner, wake_at, claim_holder, "
                   "claim_until, created_at, updated_at, finished_at")
STEP_COLS = ("id, seq, automation_id, previous_id, split_id, node, state, message, result, error_type, error_message, "
             "error_trace, wake_at, attempts, created_at, started_at, finished_at, assignee_user, assignee_privileges, "
             "submitted_by")
MESSAGE_COLS = "id, seq, automation_id, broadcast_class, message, token, data, sender, state, result, created_at, delivered_at"
JOURNAL_COLS = "step_id, call_index, kind, result, created_at"
_N_AUTOMATION = len(AUTOMATION_COLS.split(", "))


def _prefixed(cols: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in cols.split(", "))


def _json(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(i) for i in items]


def automations_json(ch: Changes) -> dict[str, Any]:
    """The automation part of ``Changes`` as ``mailgate_apply_automations`` reads it (left out when empty)."""
    out: dict[str, Any] = {}
    if ch.automations:
        out["automations"] = [dataclasses.asdict(u) for u in ch.automations]
    if ch.messages:
        out["messages"] = _json(ch.messages)
    if ch.new_automations:
        out["new_automations"] = [dataclasses.asdict(a) for a in ch.new_automations]
    if ch.broadcasts_unreached:
        out["broadcasts_unreached"] = list(ch.broadcasts_unreached)
    return out


def _messages_json(messages: Sequence[NewMessage]) -> str:
    return json.dumps(_json(messages), separators=(",", ":"))


def _record(cls: type[T], row: dict[str, Any]) -> T:
    return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def _claimed(outcome: dict[str, Any]) -> list[ClaimedAutomation]:
    """What ``mailgate_claim_automations`` returned, as records (its rows are in order)."""
    autos = [_record(AutomationRecord, a) for a in outcome["automations"]]
    steps: dict[str, list[StepRecord]] = {a.id: [] for a in autos}
    msgs: dict[str, list[MessageRecord]] = {a.id: [] for a in autos}
    for row in outcome["steps"]:
        steps[row["automation_id"]].append(_record(StepRecord, row))
    for row in outcome["messages"]:
        msgs[row["automation_id"]].append(_record(MessageRecord, row))
    return [ClaimedAutomation(a, tuple(steps[a.id]), tuple(msgs[a.id])) for a in autos]


class PgAutomations:
    """The automation methods of the PostgreSQL store (mixed into PgStore, which provides these)."""

    async def _call(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError  # PgStore's

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError  # PgStore's

    def _t(self) -> float | None:
        raise NotImplementedError  # PgStore's

    def _listen(self, channel: str, wake: Callable[[], None]) -> None:
        raise NotImplementedError  # PgStore's

    def watch_automations(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when any process queues a message or makes an automation due now (NOTIFY)."""
        self._listen(AUTOMATION_CHANNEL, wake)

    async def create_automation(self, new: NewAutomation, steps: Sequence[NewStep] = (),
                                messages: Sequence[NewMessage] = ()) -> tuple[AutomationRecord, bool]:
        start = json.dumps(dataclasses.asdict(AutomationStart(new, steps, messages)), separators=(",", ":"))

        async def run(conn: asyncpg.Connection) -> tuple[AutomationRecord, bool]:
            async with conn.transaction():
                outcome = json.loads(await conn.fetchval("SELECT mailgate_start_automation($1::jsonb, mailgate_now($2))",
                                                         start, self._t()))
                row = await conn.fetchrow(f"SELECT {AUTOMATION_COLS} FROM automations WHERE id = $1", outcome["id"])
            return AutomationRecord(*row), bool(outcome["created"])

        return await self._call(run)

    async def claim_automations(self, holder: str, limit: int, lease: float) -> list[ClaimedAutomation]:
        raw = await self._call(lambda c: c.fetchval("SELECT mailgate_claim_automations($1, $2, $3, $4)::text",
                                                    holder, limit, lease, self._t()))
        return _claimed(json.loads(raw))

    async def heartbeat_automations(self, holder: str, automation_ids: Sequence[str], lease: float) -> list[str]:
        if not automation_ids:
            return []
        rows = await self._fetch(
            "UPDATE automations SET claim_until = mailgate_now($3) + $4 WHERE id = ANY($1::text[]) AND claim_holder = $2 "
            "AND state = 'running' RETURNING id", list(automation_ids), holder, self._t(), lease)
        return [r[0] for r in rows]

    async def release_automations(self, holder: str, automation_ids: Sequence[str], wake_at: float | None = None) -> None:
        if automation_ids:
            await self._call(lambda c: c.execute(
                "WITH given AS (UPDATE automations SET claim_holder = NULL, claim_until = NULL, "
                "wake_at = COALESCE($3, wake_at) WHERE id = ANY($1::text[]) AND claim_holder = $2 RETURNING 1) "
                "SELECT pg_notify('mailgate_automations', '') FROM (SELECT 1 FROM given LIMIT 1) AS any_given",
                list(automation_ids), holder, wake_at))

    async def recheck_automations(self, holder: str, rechecks: Sequence[Recheck]) -> list[str]:
        if not rechecks:
            return []
        rows = await self._fetch(
            "WITH given AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::float8[]) AS g(id, version, wake)) "
            "UPDATE automations a SET claim_holder = NULL, claim_until = NULL, "
            "wake_at = CASE WHEN EXISTS (SELECT 1 FROM automation_messages m WHERE m.automation_id = a.id "
            "AND m.state = 'queued') THEN mailgate_now($5) ELSE given.wake END "
            "FROM given WHERE a.id = given.id AND a.version = given.version AND a.claim_holder = $4 "
            "AND a.state = 'running' RETURNING a.id",
            [r.automation_id for r in rechecks], [r.expected_version for r in rechecks], [r.wake_at for r in rechecks],
            holder, self._t())
        return [r[0] for r in rows]

    async def next_wake(self) -> float | None:
        value = await self._call(lambda c: c.fetchval("SELECT MIN(wake_at) FROM automations WHERE state = 'running'"))
        return float(value) if value is not None else None

    async def get_automation(self, automation_id: str) -> AutomationRecord | None:
        rows = await self._fetch(f"SELECT {AUTOMATION_COLS} FROM automations WHERE id = $1", automation_id)
        return AutomationRecord(*rows[0]) if rows else None

    async def get_automation_by_key(self, key: str) -> AutomationRecord | None:
        rows = await self._fetch(f"SELECT {AUTOMATION_COLS} FROM automations WHERE key = $1", key)
        return AutomationRecord(*rows[0]) if rows else None

    async def list_automations(self, *, cls: str | None = None, state: str | None = None,
                               session_id: str | None = None, after_seq: int = 0,
                               limit: int = 100) -> list[AutomationRecord]:
        rows = await self._fetch(
            f"SELECT {AUTOMATION_COLS} FROM automations WHERE seq > $1 AND ($2::text IS NULL OR cls = $2) "
            "AND ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR session_id = $4) ORDER BY seq LIMIT $5",
            after_seq, cls, state, session_id, limit)
        return [AutomationRecord(*r) for r in rows]

    async def automation_history(self, automation_id: str) -> list[StepRecord]:
        rows = await self._fetch(f"SELECT {STEP_COLS} FROM automation_steps WHERE automation_id = $1 ORDER BY seq",
                                 automation_id)
        return [StepRecord(*r) for r in rows]

    async def get_automation_step(self, step_id: str) -> StepRecord | None:
        rows = await self._fetch(f"SELECT {STEP_COLS} FROM automation_steps WHERE id = $1", step_id)
        return StepRecord(*rows[0]) if rows else None

    async def get_automation_message(self, message_id: str) -> MessageRecord | None:
        rows = await self._fetch(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE id = $1", message_id)
        return MessageRecord(*rows[0]) if rows else None

    async def automation_messages(self, automation_id: str) -> list[MessageRecord]:
        rows = await self._fetch(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE automation_id = $1 ORDER BY seq",
                                 automation_id)
        return [MessageRecord(*r) for r in rows]

    async def queued_broadcasts(self, limit: int = 100) -> list[MessageRecord]:
        rows = await self._fetch(f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE automation_id IS NULL "
                                 "AND state = 'queued' ORDER BY seq LIMIT $1", limit)
        return [MessageRecord(*r) for r in rows]

    async def enqueue_message(self, message: NewMessage) -> MessageRecord:
        async def run(conn: asyncpg.Connection) -> MessageRecord:
            async with conn.transaction():
                await conn.execute("SELECT mailgate_send_messages($1::jsonb, mailgate_now($2))",
                                   _messages_json([message]), self._t())
                return MessageRecord(*await conn.fetchrow(
                    f"SELECT {MESSAGE_COLS} FROM automation_messages WHERE id = $1", message.id))

        return await self._call(run)

    async def open_interactions(self, user_id: str | None, privileges: Sequence[str],
                                limit: int = 100) -> list[tuple[AutomationRecord, StepRecord]]:
        rows = await self._fetch(
            f"SELECT {_prefixed(AUTOMATION_COLS, 'a')}, {_prefixed(STEP_COLS, 's')} FROM automation_steps s "
            "JOIN automations a ON a.id = s.automation_id WHERE s.state = 'interaction' AND a.state = 'running' "
            "AND ($1 OR ((s.assignee_user IS NULL OR s.assignee_user = $2) "
            "AND (s.assignee_privileges IS NULL OR s.assignee_privileges::jsonb <@ $3::jsonb))) ORDER BY s.seq LIMIT $4",
            "admin" in privileges, user_id, json.dumps(list(privileges)), limit)
        return [(AutomationRecord(*r[:_N_AUTOMATION]), StepRecord(*r[_N_AUTOMATION:])) for r in rows]

    async def submit_interaction(self, automation_id: str, step_id: str, expected_version: int, *,
                                 submitted_by: str, data: str, result: str | None = None) -> AutomationRecord:
        async def run(conn: asyncpg.Connection) -> AutomationRecord:
            async with conn.transaction():
                auto = await conn.fetchrow("SELECT state, version FROM automations WHERE id = $1 FOR UPDATE", automation_id)
                step = await conn.fetchrow("SELECT state FROM automation_steps WHERE id = $1 AND automation_id = $2",
                                           step_id, automation_id)
                if auto is None or step is None:
                    raise NotFound(f"no step {step_id!r} of automation {automation_id!r}")
                if step[0] != "interaction" or auto[0] != "running":
                    raise InteractionClosed(f"step {step_id} is {step[0]} (automation {auto[0]}): it takes no submit any more")
                if auto[1] != expected_version:
                    raise AutomationFenced(f"automation {automation_id} is at version {auto[1]}, not {expected_version}; "
                                           "nothing was saved")
                now = await conn.fetchval("SELECT mailgate_now($1)", self._t())
                await conn.execute(
                    "UPDATE automation_steps SET state = 'done', message = 'OK', result = $2, submitted_by = $3, "
                    "started_at = COALESCE(started_at, $4), finished_at = $4 WHERE id = $1", step_id, result, submitted_by, now)
                row = await conn.fetchrow(
                    "UPDATE automations SET data = $2, version = version + 1, wake_at = $3, updated_at = $3 "
                    f"WHERE id = $1 RETURNING {AUTOMATION_COLS}", automation_id, data, now)
                await conn.execute("SELECT pg_notify('mailgate_automations', '')")
                return AutomationRecord(*row)

        return await self._call(run)

    async def kill_automation(self, automation_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                await conn.execute("DELETE FROM automation_journal WHERE step_id IN (SELECT id FROM automation_steps "
                                   "WHERE automation_id = $1)", automation_id)
                await conn.execute("DELETE FROM automation_steps WHERE automation_id = $1", automation_id)
                await conn.execute("DELETE FROM automation_messages WHERE automation_id = $1", automation_id)
                return bool(await conn.fetchval("DELETE FROM automations WHERE id = $1 RETURNING true", automation_id))

        return await self._call(run)

    async def retry_automation(self, automation_id: str) -> AutomationRecord:
        async def run(conn: asyncpg.Connection) -> AutomationRecord:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT state, cls FROM automations WHERE id = $1 FOR UPDATE", automation_id)
                if row is None:
                    raise NotFound(f"no automation {automation_id!r}; list them with: mailgate automations list")
                if row[0] != "failed":
                    raise MailgateError(f"automation {automation_id} is {row[0]}; only failed automations can be retried")
                await conn.execute("UPDATE automation_steps SET state = 'waiting', attempts = 0, wake_at = NULL, "
                                   "finished_at = NULL WHERE automation_id = $1 AND state = 'failed'", automation_id)
                return await self._rerun(conn, automation_id, row[1])

        return await self._call(run)

    async def goto_automation(self, automation_id: str, node: str, step_id: str) -> AutomationRecord:
        async def run(conn: asyncpg.Connection) -> AutomationRecord:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT state, cls FROM automations WHERE id = $1 FOR UPDATE", automation_id)
                if row is None:
                    raise NotFound(f"no automation {automation_id!r}; list them with: mailgate automations list")
                if row[0] not in ("running", "failed"):
                    raise MailgateError(f"automation {automation_id} is {row[0]}; only running and failed automations can move")
                now = await conn.fetchval("SELECT mailgate_now($1)", self._t())
                await conn.execute(
                    "UPDATE automation_steps SET state = 'skipped', message = $2, finished_at = $3 WHERE automation_id = $1 "
                    "AND state IN ('waiting', 'interaction', 'running')", automation_id, f"goto {node}", now)
                await conn.execute("SELECT mailgate_insert_steps($1, $2::jsonb, $3)", automation_id,
                                   json.dumps(_json([NewStep(step_id, node)])), now)
                return await self._rerun(conn, automation_id, row[1])

        return await self._call(run)

    async def _rerun(self, conn: asyncpg.Connection, automation_id: str, cls: str) -> AutomationRecord:
        """The automation running again and due now, its claim cleared, its version moved on."""
        try:
            async with conn.transaction():  # a savepoint: the unique refusal becomes a clear error
                row = await conn.fetchrow(
                    "WITH n AS (SELECT mailgate_now($2) AS t) UPDATE automations SET state = 'running', finished_at = NULL, "
                    "wake_at = n.t, claim_holder = NULL, claim_until = NULL, version = version + 1, updated_at = n.t "
                    f"FROM n WHERE id = $1 RETURNING {AUTOMATION_COLS}", automation_id, self._t())
        except asyncpg.UniqueViolationError:
            raise MailgateError(f"another automation of {cls} with the same unique values is running; automation "
                                f"{automation_id} cannot run beside it (kill one of them first)") from None
        await conn.execute("SELECT pg_notify('mailgate_automations', '')")
        return AutomationRecord(*row)

    async def delete_automation_history(self, before: float) -> tuple[int, int]:
        async def run(conn: asyncpg.Connection) -> tuple[int, int]:
            async with conn.transaction():
                ids = ("SELECT id FROM automations WHERE state IN ('finished', 'failed', 'killed') AND finished_at < $1")
                await conn.execute(f"DELETE FROM automation_journal WHERE step_id IN (SELECT id FROM automation_steps "
                                   f"WHERE automation_id IN ({ids}))", before)
                steps = await conn.execute(f"DELETE FROM automation_steps WHERE automation_id IN ({ids})", before)
                await conn.execute(f"DELETE FROM automation_messages WHERE automation_id IN ({ids})", before)
                autos = await conn.execute("DELETE FROM automations WHERE state IN ('finished', 'failed', 'killed') "
                                           "AND finished_at < $1", before)
                # consumed broadcasts, and messages dropped for automations that are gone (killed)
                await conn.execute(
                    "DELETE FROM automation_messages m WHERE m.state <> 'queued' AND m.created_at < $1 AND (m.automation_id "
                    "IS NULL OR NOT EXISTS (SELECT 1 FROM automations a WHERE a.id = m.automation_id))", before)
                return int(autos.split()[-1]), int(steps.split()[-1])

        return await self._call(run)

    async def count_automations(self) -> dict[str, int]:
        counts = {"running": 0, "finished": 0, "failed": 0, "killed": 0}
        counts.update({r[0]: int(r[1]) for r in await self._fetch("SELECT state, COUNT(*) FROM automations GROUP BY state")})
        return counts

    async def automation_backlog(self) -> tuple[int, float | None]:
        # the time as a sub-select, evaluated once: mailgate_now is volatile, and compared row by row it
        # kept the timer index out (a scan of every running automation, 66 ms a second with 100,000 waiting)
        row = (await self._fetch("SELECT COUNT(*), MIN(wake_at) FROM automations WHERE state = 'running' "
                                 "AND wake_at <= (SELECT mailgate_now($1))", self._t()))[0]
        return int(row[0]), float(row[1]) if row[1] is not None else None

    async def journal_entry(self, step_id: str, call_index: int) -> JournalRecord | None:
        rows = await self._fetch(f"SELECT {JOURNAL_COLS} FROM automation_journal WHERE step_id = $1 AND call_index = $2",
                                 step_id, call_index)
        return JournalRecord(*rows[0]) if rows else None
