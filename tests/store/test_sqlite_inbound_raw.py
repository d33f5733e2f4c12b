"""Migration 0006 of the SQLite store: messages queued before it (their bytes in ``inbound_queue.raw``)
are claimed and delivered byte-exact after it, from ``inbound_raw``."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from mailgate.store.base import InboundDelivery, NewEmail, NewEvent
from mailgate.store.sqlite.backend import SqliteStore, _migrations, _statements

pytestmark = pytest.mark.asyncio


def store_at_version_5(path: Path, raws: list[bytes]) -> None:
    """A store file as mailgate left it before migration 0006, with ``raws`` queued."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
        for number, name, sql in _migrations():
            if number > 5:
                break
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))
        conn.execute("INSERT INTO sessions (id, interview, answers, version, owner, created_at, modified_at, accessed_at) "
                     "VALUES ('s1', 'iv', '{}', 1, '{}', 0, 0, 0)")
        for n, raw in enumerate(raws):
            conn.execute("INSERT INTO inbound_queue (id, sha256, size, raw, envelope, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                         (f"q{n}", hashlib.sha256(raw).hexdigest(), len(raw), raw, json.dumps({"rcpt": ["box"]}), 1.0))


async def test_messages_queued_before_the_migration_are_delivered_byte_exact(tmp_path: Path) -> None:
    raws = [b"Subject: small\r\n\r\nsmall\r\n", b"Subject: big\r\n\r\n" + bytes(range(256)) * 8192]  # 2 MiB: the blob path
    path = tmp_path / "old.sqlite3"
    store_at_version_5(path, raws)
    store = SqliteStore(str(path))
    await store.open()
    try:
        assert await store.migrate() == [6, 7]
        claimed = await store.claim_inbound("A", 5, 30)
        assert [(q.id, q.raw) for q in claimed] == [("q0", raws[0]), ("q1", raws[1])]
        for n, raw in enumerate(raws):
            sha = hashlib.sha256(raw).hexdigest()
            email = NewEmail(f"e{n}", "box", "s1", None, f"\0{sha}", "{}", "{}", "{}", None, NewEvent("s1", "email", "{}"))
            assert (await store.deliver_inbound(InboundDelivery(f"q{n}", "A", [email])))[0] == [f"e{n}"]
            assert await store.get_raw(sha) == raw
        assert await store.count_inbound() == 0
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM inbound_raw").fetchone() == (0,)  # delivered: gone from the queue
