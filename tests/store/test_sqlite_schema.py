"""SQLite migrations vs the schema the code expects.

``sqlite_schema.txt`` is the schema that applying every migration to a fresh database produces,
written out deliberately by a developer who changed it::

    python -m tests.store.test_sqlite_schema > tests/store/sqlite_schema.txt

A migration edited after release, a new one that changes more than intended, or one forgotten
shows up as a difference. The second half checks the code against the same database: every table
the backend's SQL names exists, every column list it selects exists in its table, and the records
it builds positionally from those lists have the same fields in the same order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest

from mailgate.store import base
from mailgate.store.sqlite import automations, backend, cache
from mailgate.store.sqlite.backend import SqliteStore

SNAPSHOT = Path(__file__).with_name("sqlite_schema.txt")

# The backend's column lists, the table each is read from, and the record built from its rows.
COLUMN_LISTS = [
    (backend.SESSION_COLS, "sessions", base.SessionRecord),
    (backend.TASK_COLS, "tasks", base.TaskRecord),
    (backend.EVENT_COLS, "events", base.EventRecord),
    (backend.MAILBOX_COLS, "mailboxes", base.MailboxRecord),
    (backend.EMAIL_COLS, "emails", base.EmailRecord),
    (automations.AUTOMATION_COLS, "automations", base.AutomationRecord),
    (automations.STEP_COLS, "automation_steps", base.StepRecord),
    (automations.MESSAGE_COLS, "automation_messages", base.MessageRecord),
    (automations.JOURNAL_COLS, "automation_journal", base.JournalRecord),
]
# Where a column's name differs from its record field's (``index`` is an SQL keyword).
RENAMED = {("mailboxes", "idx"): "index"}


def migrated(path: Path) -> None:
    async def run() -> None:
        store = SqliteStore(str(path))
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(run())


def describe(path: Path) -> str:
    """The schema as stable text: tables with their columns, then indexes (named and implicit)."""
    conn = sqlite3.connect(path)
    try:
        lines: list[str] = []
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for table in tables:
            lines.append(f"table {table}")
            for _, name, type_, notnull, default, pk in conn.execute(f"PRAGMA table_info({table})"):
                flags = [f for f, on in (("NOT NULL", notnull), (f"PRIMARY KEY {pk}", pk)) if on]
                if default is not None:
                    flags.append(f"DEFAULT {default}")
                lines.append(f"    {name} {type_} {' '.join(flags)}".rstrip())
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            lines.extend(f"    check {check}" for check in checks(sql))
            for _, index, unique, origin, partial in sorted(conn.execute(f"PRAGMA index_list({table})"), key=lambda r: r[1]):
                columns = ", ".join(str(c) for _, _, c in conn.execute(f"PRAGMA index_info({index})"))
                name = index if origin == "c" else f"({origin})"  # autoindexes' names are SQLite's own
                where = ""
                if partial:
                    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
                    where = " WHERE " + " ".join(sql.split(" WHERE ", 1)[1].split())
                lines.append(f"    index {name} {'UNIQUE ' if unique else ''}({columns}){where}")
        return "\n".join(lines) + "\n"
    finally:
        conn.close()


def checks(sql: str) -> list[str]:
    """The CHECK constraints of a CREATE TABLE statement (PRAGMA table_info does not show them)."""
    found = []
    for match in re.finditer(r"\bCHECK\s*\(", sql, re.IGNORECASE):
        depth, start = 1, match.end()
        for end in range(start, len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                found.append(" ".join(sql[start:end].split()))
                break
    return found


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "fresh.sqlite3"
    migrated(path)
    return path


def test_migrations_produce_the_schema_snapshot(database: Path) -> None:
    assert describe(database) == SNAPSHOT.read_text(), (
        "the migrations no longer produce tests/store/sqlite_schema.txt; if the change is intended, "
        "regenerate it: python -m tests.store.test_sqlite_schema > tests/store/sqlite_schema.txt")


def test_migration_files_are_numbered_once_each() -> None:
    # gaps are allowed (branches developed side by side number their migrations apart); a number twice is not
    names = sorted(p.name for p in (Path(backend.__file__).parent / "migrations").glob("*.sql"))
    numbers = [int(n.split("_", 1)[0]) for n in names]
    assert numbers[0] == 1 and len(set(numbers)) == len(numbers), names
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", n) for n in names), names


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_every_table_the_sql_names_exists(database: Path) -> None:
    source = "".join(Path(m.__file__).read_text() for m in (backend, cache, automations))
    named = set(re.findall(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+([a-z_]+)\b", source))
    named -= {"sqlite_master", "json_each"}  # json_each: SQLite's table-valued function
    named -= set(re.findall(r"\bWITH\s+([a-z_]+)\s*\(", source))  # common table expressions
    assert {"sessions", "tasks", "events", "mailboxes", "emails", "raw_messages", "settings", "cron_periods",
            "session_leases", "schema_migrations", "automations", "automation_steps", "automation_messages",
            "automation_journal"} <= named  # the regex still finds them
    conn = sqlite3.connect(database)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert named - tables == set()


def test_column_lists_exist_and_match_their_records(database: Path) -> None:
    conn = sqlite3.connect(database)
    try:
        for cols, table, record in COLUMN_LISTS:
            listed = [c.strip() for c in cols.split(",")]
            assert set(listed) <= set(columns(conn, table)), (table, set(listed) - set(columns(conn, table)))
            fields = [f.name for f in dataclasses.fields(record)][: len(listed)]
            assert [RENAMED.get((table, c), c) for c in listed] == fields, (table, record.__name__)
        # read in cache.py, outside the column lists
        assert {"version", "created_at"} <= set(columns(conn, "sessions"))
        # written or filtered on outside the column lists
        assert {"seq", "dedupe"} <= set(columns(conn, "emails"))
        assert "allow_cron" in columns(conn, "sessions") and "seq" in columns(conn, "tasks")
    finally:
        conn.close()


def test_the_timer_read_uses_only_its_partial_index(database: Path) -> None:
    conn = sqlite3.connect(database)
    try:
        plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + automations.NEXT_WAKE))
    finally:
        conn.close()
    assert "COVERING INDEX automations_wake" in plan, plan


if __name__ == "__main__":  # regenerate the snapshot (see the module docstring)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "fresh.sqlite3"
        migrated(db)
        sys.stdout.write(describe(db))
