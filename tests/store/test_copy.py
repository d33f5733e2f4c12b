"""``mailgate.store.copy``: a real SQLite file copied into a real, throw-away PostgreSQL database.

What the copy must refuse (a non-empty target, a source behind its migrations or in use), what the
verification must catch (a changed row, a missing row, a sequence that would hand out used ids),
and that a copy which does not verify, or whose source changed under it, leaves the target empty.
The whole path through the CLI and the daemon's listings is in ``tests/e2e/test_db_copy.py``.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from mailgate.store import copy as store_copy
from mailgate.store.base import (
    AutomationUpdate,
    Changes,
    Delivery,
    InboundDelivery,
    JournalEntry,
    MessageDone,
    NewAutomation,
    NewEmail,
    NewEvent,
    NewInbound,
    NewMailbox,
    NewMessage,
    NewStep,
    NewTask,
    StashRecord,
    StepUpdate,
    TaskFinish,
)
from mailgate.store.copy import (
    NOT_COPIED,
    SQLITE_ONLY,
    TABLES,
    CopyRefused,
    copy_to_postgres,
    verify_copy,
)
from mailgate.store.postgres.backend import PgStore
from mailgate.store.sqlite.backend import SqliteStore
from tests.pg import create_database_async, drop_database_async

pytestmark = pytest.mark.asyncio

QUEUED = b"From: q@b.test\r\nSubject: queued\r\n\r\nwaiting\r\n"
RAW = b"From: a@b.test\r\nSubject: hi\r\n\r\n" + bytes(range(256)) * 1024 + b"\r\n"  # every byte value


@pytest_asyncio.fixture
async def dsn() -> AsyncIterator[str]:
    url = await create_database_async()
    try:
        yield url
    finally:
        await drop_database_async(url)


@pytest.fixture
def source(tmp_path: Path) -> str:
    return str(tmp_path / "source.sqlite3")


def task(task_id: str, session_id: str) -> NewTask:
    return NewTask(task_id, session_id, "iv", "act", '{"n":1}', '{"id":"u"}', None, 3)


async def build(path: str) -> None:
    """A small store with a row in every copied table: sessions (one cron-enabled), tasks in three
    states, events, a mailbox with an e-mail (its dedupe key holds a NUL, as every real one does),
    settings, a cron period and a stash; the last events belong to a deleted session, so the highest event id
    ever used is above the highest left."""
    store = SqliteStore(path)
    await store.open()
    try:
        await store.migrate()
        await store.setting("secrets", '{"key":"s3cr3t"}')
        await store.create_session("s1", "iv", '{"a":1}', '{"id":"u"}', allow_cron=True)
        await store.create_session("s2", "iv", '{"b":"\\u00e9"}', '{"id":"v"}')
        await store.commit(Changes(new_tasks=[task("t1", "s1"), task("t2", "s1"), task("t3", "s2")],
                                   events=[NewEvent("s1", "command", '{"x":1}')],
                                   mailboxes=[NewMailbox("box1", "s1", "", "", '{"id":"u"}', None)]))
        claim = await store.claim_tasks("w1", 2, 30.0, lambda rec: Changes())
        await store.commit(Changes(finish=TaskFinish(claim.tasks[0].id, "w1", "succeeded", result='{"value":5}')))
        await store.commit(Changes(finish=TaskFinish(claim.tasks[1].id, "w1", "failed", error_type="E",
                                                     error_message="boom", error_trace="trace")))
        sha = hashlib.sha256(RAW).hexdigest()
        await store.deliver(Delivery(sha, RAW, [NewEmail("e1", "box1", "s1", "<m@x>", f"<m@x>\0{sha}", '{"rcpt":1}',
                                                         '{"subject":"hi"}', '{"spf":"none"}', None,
                                                         NewEvent("s1", "email", '{"email":"e1"}'))]))
        await store.claim_period("cron_hourly", "2024-01-01T10", "w1")
        # one queued message processed (its seq used), one still waiting: the new daemon processes it
        for n in range(2):
            await store.enqueue_inbound(NewInbound(f"q{n}", hashlib.sha256(QUEUED).hexdigest(), QUEUED, '{"rcpt":[]}'))
        await store.claim_inbound("w1", 1, 30.0)
        await store.deliver_inbound(InboundDelivery("q0", "w1", []))
        await store.put_stash(StashRecord("k1", "sealed", 1.5, 2.5e9, 3600.0))
        # an automation of s1 mid-way (history, a delivered and a queued message, a journal row, a task of
        # its step) and a broadcast; a killed one used the highest ids of its tables
        auto, _ = await store.create_automation(
            NewAutomation("a1", "app.Flow", "s1", '{"n":1}', "key-a1", '{"id":"u"}', unique_key="k"),
            [NewStep("st1", "start")], [NewMessage("m1", "go", token="t", data='{"x":"é ✓"}')])
        await store.commit(Changes(
            new_tasks=[NewTask("t-a1", "s1", "iv", "act", "{}", "{}", None, 3, automation_id="a1")],
            automations=[AutomationUpdate("a1", auto.version, None, wake_at=2.5e9,
                                          steps_finished=[StepUpdate("st1", "done", message="OK", result='{"v":1}')],
                                          steps_opened=[NewStep("st2", "wait", previous_id="st1", wake_at=2.5e9)],
                                          messages_done=[MessageDone("m1", result='"ok"')],
                                          journal=[JournalEntry("st1", 0, "send_email", '{"message_id":"<j@x>"}')])]))
        await store.enqueue_message(NewMessage("m2", "later", automation_id="a1"))
        await store.enqueue_message(NewMessage("b1", "news", broadcast_class="app.Flow"))
        await store.create_automation(NewAutomation("a2", "app.Flow", None, "{}", "key-a2", "{}"),
                                      [NewStep("st3", "start")], [NewMessage("m3", "go")])
        await store.kill_automation("a2")
        await store.create_session("gone", "iv", "{}", "{}")
        await store.commit(Changes(events=[NewEvent("gone", "command", "{}")] * 3))
        await store.delete_session("gone")
    finally:
        await store.close()


async def rows(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def sqlite_rows(path: str, sql: str) -> list[Any]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_the_copy_knows_every_column_of_both_schemas(source: str, dsn: str) -> None:
    await build(source)
    pg = PgStore(dsn, pool_size=1)
    await pg.open()
    try:
        await pg.migrate()
    finally:
        await pg.close()
    sqlite_tables = {r[0] for r in sqlite_rows(source, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                       "AND name NOT LIKE 'sqlite_%'")}
    pg_tables = {r[0] for r in await rows(dsn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert sqlite_tables - set(SQLITE_ONLY) == pg_tables == {t.name for t in TABLES} | set(NOT_COPIED)
    assert set(SQLITE_ONLY) <= sqlite_tables
    for table in TABLES:
        in_sqlite = list(dict.fromkeys(r[1] for name in (table.name, *table.sqlite_joined)
                                       for r in sqlite_rows(source, f"PRAGMA table_info({name})")))
        in_pg = [r[0] for r in await rows(dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = "
                                               f"'{table.name}' ORDER BY ordinal_position")]
        assert sorted(in_sqlite) == sorted(in_pg) == sorted(table.column_names), table.name


async def test_copy_moves_every_row_and_sets_the_sequences_past_every_used_id(source: str, dsn: str) -> None:
    await build(source)
    seen: list[tuple[str, str, int, int]] = []
    report = await copy_to_postgres(source, dsn, on_progress=lambda *a: seen.append(a))
    assert report.ok and report.committed, report.to_dict()
    counts = {c.table: c.target_rows for c in report.checks}
    assert counts == {"settings": 1, "sessions": 2, "mailboxes": 1, "tasks": 4, "events": 2, "cron_periods": 1,
                      "stashes": 1, "raw_messages": 1, "emails": 1, "inbound_queue": 1, "automations": 1,
                      "automation_steps": 2, "automation_messages": 3, "automation_journal": 1}
    assert report.bytes == len(RAW) + len(QUEUED)
    assert ("copy", "raw_messages", 1, 1) in seen and ("verify", "emails", 1, 1) in seen
    # The values as the daemon reads them back through PgStore
    pg = PgStore(dsn, pool_size=1)
    await pg.open()
    try:
        assert await pg.setting("secrets", "other") == '{"key":"s3cr3t"}'
        assert await pg.cron_session_ids(["iv"], None, 10) == ["s1"]  # allow_cron came along
        assert {t.id: t.state for t in await pg.list_tasks()} == {"t1": "succeeded", "t2": "failed", "t3": "queued",
                                                                  "t-a1": "queued"}
        assert [t.id for t in await pg.list_tasks()] == ["t-a1", "t3", "t2", "t1"]  # newest first: seq kept
        assert await rows(dsn, "SELECT automation_id FROM tasks WHERE id = 't-a1'") == [("a1",)]
        # the automation as the runner reads it: history, messages, journal, key, unique rule
        auto = await pg.get_automation_by_key("key-a1")
        assert auto is not None and (auto.id, auto.session_id, auto.version) == ("a1", "s1", 2)
        assert auto.wake_at is not None and auto.wake_at < 2.5e9  # m2 made it due at once
        assert [(st.id, st.state, st.previous_id) for st in await pg.automation_history("a1")] == [
            ("st1", "done", None), ("st2", "waiting", "st1")]
        assert [(m.id, m.state, m.data) for m in await pg.automation_messages("a1")] == [
            ("m1", "delivered", '{"x":"é ✓"}'), ("m2", "queued", "{}")]
        assert [m.id for m in await pg.queued_broadcasts()] == ["b1"]
        journal = await pg.journal_entry("st1", 0)
        assert journal is not None and journal.result == '{"message_id":"<j@x>"}'
        again, created = await pg.create_automation(NewAutomation("a3", "app.Flow", None, "{}", "key-a3", "{}", unique_key="k"))
        assert (again.id, created) == ("a1", False)
        assert await pg.get_raw(hashlib.sha256(RAW).hexdigest()) == RAW
        email = (await pg.get_emails(["e1"]))["e1"]
        assert (email.local_part, email.size, email.message_id) == ("box1", len(RAW), "<m@x>")
        used = dict(sqlite_rows(source, "SELECT name, seq FROM sqlite_sequence"))
        kept = [e.id for e in await pg.events_after(0)]
        assert max(kept) < used["events"]  # the deleted session's events had the highest ids
        result = await pg.commit(Changes(events=[NewEvent("s1", "command", "{}")]))
        assert result.events[0].id == used["events"] + 1
        await pg.commit(Changes(new_tasks=[task("t4", "s1")]))
        assert [t.id for t in await pg.list_tasks(limit=1)] == ["t4"]  # after the copied ones
        [waiting] = await pg.claim_inbound("w2", 5, 30.0)
        assert (waiting.id, waiting.raw, waiting.attempts) == ("q1", QUEUED, 1)
    finally:
        await pg.close()
    next_ids = {c.table: c.next_id for c in report.checks if c.next_id is not None}
    assert next_ids == {name: used[name] + 1 for name in ("tasks", "events", "emails", "inbound_queue", "automations",
                                                          "automation_steps", "automation_messages")}
    assert used["automations"] == 2  # the killed automation's seq: the sequence passed it


async def test_a_target_that_holds_data_is_refused_and_left_alone(source: str, dsn: str) -> None:
    await build(source)
    pg = PgStore(dsn, pool_size=1)
    await pg.open()
    try:
        await pg.migrate()
        await pg.create_session("already-here", "iv", "{}", "{}")
    finally:
        await pg.close()
    with pytest.raises(CopyRefused, match=r"already holds mailgate data \(in sessions\).*createdb"):
        await copy_to_postgres(source, dsn)
    assert [r[0] for r in await rows(dsn, "SELECT id FROM sessions")] == ["already-here"]
    assert await rows(dsn, "SELECT * FROM tasks") == []


async def test_a_second_copy_into_the_same_database_is_refused(source: str, dsn: str) -> None:
    await build(source)
    assert (await copy_to_postgres(source, dsn)).committed
    with pytest.raises(CopyRefused, match="already holds mailgate data"):
        await copy_to_postgres(source, dsn)
    assert (await verify_copy(source, dsn)).ok  # nothing was doubled


async def test_a_source_behind_its_migrations_is_refused(source: str, dsn: str) -> None:
    await build(source)
    with sqlite3.connect(source) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)")
    with pytest.raises(CopyRefused, match="run: mailgate db migrate"):
        await copy_to_postgres(source, dsn)
    assert await rows(dsn, "SELECT 1 FROM pg_tables WHERE tablename = 'sessions'") == []  # not even migrated


async def test_a_missing_source_is_refused(tmp_path: Path, dsn: str) -> None:
    with pytest.raises(CopyRefused, match=r"no SQLite store at .*nope\.sqlite3; check \[store\] path"):
        await copy_to_postgres(str(tmp_path / "nope.sqlite3"), dsn)
    assert not (tmp_path / "nope.sqlite3").exists()  # read-only: nothing created


async def test_a_source_in_use_by_a_daemon_is_refused(source: str, dsn: str) -> None:
    await build(source)
    with sqlite3.connect(source) as conn:
        conn.execute("INSERT INTO session_leases VALUES ('s1', 'daemon-1', 0, 1e12, 1e12)")
    with pytest.raises(CopyRefused, match="a daemon seems to be using the SQLite store .*session s1 is locked.*stop it"):
        await copy_to_postgres(source, dsn)
    with sqlite3.connect(source) as conn:  # a lease long expired: the daemon was killed, not running
        conn.execute("UPDATE session_leases SET expires_at = 1")
        conn.execute("UPDATE tasks SET state = 'running', worker = 'w9', lease_until = 1e12 WHERE id = 't3'")
    with pytest.raises(CopyRefused, match="task t3 is claimed by a worker"):
        await copy_to_postgres(source, dsn)
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE tasks SET lease_until = 1 WHERE id = 't3'")  # a dead worker's task is copied as it is
        conn.execute("UPDATE automations SET claim_holder = 'r9', claim_until = 1e12 WHERE id = 'a1'")
    with pytest.raises(CopyRefused, match="automation a1 is claimed by a runner"):
        await copy_to_postgres(source, dsn)
    with sqlite3.connect(source) as conn:  # a dead runner's claim is copied as it is: its lease runs out
        conn.execute("UPDATE automations SET claim_until = 1 WHERE id = 'a1'")
    assert (await copy_to_postgres(source, dsn)).committed
    assert [r[0] for r in await rows(dsn, "SELECT worker FROM tasks WHERE id = 't3'")] == ["w9"]


async def test_a_write_to_the_source_during_the_copy_rolls_it_back(source: str, dsn: str) -> None:
    await build(source)
    writer = sqlite3.connect(source, isolation_level=None)

    def progress(stage: str, table: str, done: int, total: int) -> None:
        if (stage, table, done) == ("copy", "events", 0):  # a daemon commits while the copy runs
            writer.execute("INSERT INTO events (session_id, kind, payload, created_at) VALUES ('s1', 'x', '{}', 1)")

    try:
        with pytest.raises(CopyRefused, match="changed during the copy.*stop it"):
            await copy_to_postgres(source, dsn, on_progress=progress)
    finally:
        writer.close()
    for table in TABLES:
        assert await rows(dsn, f"SELECT 1 FROM {table.name}") == [], table.name
    assert (await copy_to_postgres(source, dsn)).committed  # the target is still empty: run it again


async def test_verification_finds_a_changed_row_a_missing_row_and_a_sequence_behind(source: str, dsn: str) -> None:
    await build(source)
    assert (await copy_to_postgres(source, dsn)).ok
    clean = await verify_copy(source, dsn)
    assert clean.ok and clean.committed is None

    def bad(report: store_copy.CopyReport) -> dict[str, tuple[int, int]]:
        return {c.table: (c.source_rows, c.target_rows) for c in report.checks if not c.ok}

    await execute(dsn, "UPDATE sessions SET answers = '{\"a\":2}' WHERE id = 's1'")
    assert bad(await verify_copy(source, dsn)) == {"sessions": (2, 2)}
    await execute(dsn, "UPDATE raw_messages SET raw = overlay(raw placing '\\x00'::bytea from 100 for 1)")
    assert bad(await verify_copy(source, dsn)) == {"sessions": (2, 2), "raw_messages": (1, 1)}
    await execute(dsn, "DELETE FROM cron_periods")
    assert bad(await verify_copy(source, dsn)) == {"sessions": (2, 2), "raw_messages": (1, 1), "cron_periods": (1, 0)}
    await execute(dsn, "SELECT setval(pg_get_serial_sequence('events', 'id'), 1)")
    report = await verify_copy(source, dsn)
    assert bad(report)["events"] == (2, 2)
    assert {c.table: c.next_id for c in report.checks}["events"] == 2


async def test_a_copy_that_does_not_verify_is_rolled_back(source: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await build(source)
    write = store_copy._Tables._write

    async def lossy(self: Any, table: store_copy.Table, batch: list[tuple[Any, ...]]) -> None:
        await write(self, table, batch[:-1] if table.name == "emails" else batch)  # a row lost on the way

    monkeypatch.setattr(store_copy._Tables, "_write", lossy)
    report = await copy_to_postgres(source, dsn)
    assert not report.committed and not report.ok
    assert [(c.table, c.source_rows, c.target_rows) for c in report.checks if not c.ok] == [("emails", 1, 0)]
    for table in TABLES:
        assert await rows(dsn, f"SELECT 1 FROM {table.name}") == [], table.name
