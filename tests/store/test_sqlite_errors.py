"""The SQLite backend turns every sqlite3 and OS error into a StoreError, at its writer and its reader.

Real failures on a real file: a database capped with ``max_page_count`` (SQLite's own "database or
disk is full"), a write lock held by another connection, a path that cannot be opened.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.errors import (
    NotFound,
    StoreConflict,
    StoreError,
    StoreFull,
    StoreUnavailable,
    VersionConflict,
)
from mailgate.store.base import Changes, NewTask, SessionSave
from mailgate.store.sqlite.backend import SqliteStore
from mailgate.store.sqlite.writer import store_error

pytestmark = pytest.mark.asyncio

BIG = "x" * 20_000  # needs overflow pages: cannot fit in what a full page has left


@pytest_asyncio.fixture
async def full(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store capped a few pages above its schema, filled until a write fails."""
    store = SqliteStore(str(tmp_path / "full.sqlite3"), max_pages=100)  # the schema takes 58
    await store.open()
    await store.migrate()
    await store.create_session("keep", "iv", "{}", "{}")
    for i in range(100):
        try:
            await store.create_session(f"fill{i}", "iv", BIG, "{}")
        except StoreFull:
            break
    else:
        raise AssertionError("100 pages never filled up")
    try:
        yield store
    finally:
        await store.close()


async def test_a_full_database_raises_store_full_with_what_to_do(full: SqliteStore) -> None:
    with pytest.raises(StoreFull) as info:
        await full.create_session("more", "iv", BIG, "{}")
    message = str(info.value)
    assert full.path in message and "is full" in message and "free space" in message
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)  # kept for the debugger, not shown to users


async def test_a_full_group_commit_fails_every_unit_with_store_full_not_a_rollback_error(full: SqliteStore) -> None:
    # Several units in one batch: after SQLITE_FULL SQLite may have rolled the transaction back
    # itself; a second ROLLBACK must not replace the real error with "no transaction is active".
    outcomes = await asyncio.gather(*(full.create_session(f"more{i}", "iv", BIG, "{}") for i in range(5)),
                                    return_exceptions=True)
    assert all(isinstance(o, StoreFull) for o in outcomes), outcomes


async def test_while_full_reads_work_and_domain_errors_keep_their_type(full: SqliteStore) -> None:
    assert (await full.get_session("keep")) is not None
    assert await full.count_tasks() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
    with pytest.raises(VersionConflict):
        await full.commit(Changes(save=SessionSave("keep", BIG, 7)))
    with pytest.raises(NotFound):
        await full.commit(Changes(save=SessionSave("nope", BIG, 1)))
    with pytest.raises(StoreFull):
        await full.commit(Changes(save=SessionSave("keep", BIG, 1)))
    assert (await full.get_session("keep")).version == 1  # type: ignore[union-attr]


async def test_room_again_after_reopening_without_the_cap(full: SqliteStore) -> None:
    count = len(await full.list_sessions(limit=1000))
    await full.close()
    roomy = SqliteStore(full.path)
    await roomy.open()
    try:
        await roomy.create_session("more", "iv", BIG, "{}")
        assert len(await roomy.list_sessions(limit=1000)) == count + 1
    finally:
        await roomy.close()


async def test_a_write_lock_held_too_long_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    store = SqliteStore(str(path), busy_timeout=0.2)
    await store.open()
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        with pytest.raises(StoreUnavailable, match=r"stayed locked by another process for more than 0\.2 s"):
            await store.commit(Changes(new_tasks=[NewTask("t1", "s1", "iv", "a", "{}", "{}", None, 3)]))
        other.execute("ROLLBACK")
        await store.commit(Changes(new_tasks=[NewTask("t1", "s1", "iv", "a", "{}", "{}", None, 3)]))  # works again
        assert (await store.get_task("t1")) is not None
    finally:
        other.close()
        await store.close()


async def test_a_path_that_cannot_be_opened_is_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "no-such-folder" / "x.sqlite3"))
    with pytest.raises(StoreUnavailable, match="no-such-folder.*check the disk, the file and its permissions"):
        await store.open()
    await store.close()


async def test_a_broken_schema_is_a_store_error_not_a_driver_error(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "bare.sqlite3"))
    await store.open()  # never migrated: the tables do not exist
    try:
        with pytest.raises(StoreError, match="mailgate healthcheck"):
            await store.list_sessions()
        with pytest.raises(StoreError, match="mailgate healthcheck"):
            await store.create_session("s1", "iv", "{}", "{}")
    finally:
        await store.close()


def driver_error(cls: type[sqlite3.Error], code: int, text: str) -> sqlite3.Error:
    exc = cls(text)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]  # set by sqlite3 itself on real errors
    return exc


@pytest.mark.parametrize(
    ("exc", "expected", "says"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), StoreFull, "free space there"),
        (OSError(errno.EACCES, "Permission denied"), StoreUnavailable, "permissions"),
        (driver_error(sqlite3.OperationalError, sqlite3.SQLITE_FULL, "database or disk is full"), StoreFull, "free space"),
        (driver_error(sqlite3.OperationalError, sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"), StoreUnavailable, "check the disk"),
        (driver_error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY, "database is locked"), StoreUnavailable, "busy_timeout"),
        (driver_error(sqlite3.DatabaseError, sqlite3.SQLITE_NOTADB, "file is not a database"), StoreUnavailable, "check the disk"),
        (driver_error(sqlite3.IntegrityError, sqlite3.SQLITE_CONSTRAINT_UNIQUE, "UNIQUE constraint failed"), StoreConflict,
         "nothing was saved"),
        (driver_error(sqlite3.OperationalError, sqlite3.SQLITE_ERROR, "no such table: x"), StoreError, "healthcheck"),
    ],
)
async def test_store_error_maps_each_kind_and_says_what_to_do(exc: Exception, expected: type[StoreError], says: str) -> None:
    assert isinstance(exc, (sqlite3.Error, OSError))
    translated = store_error(exc, "/data/mailgate.sqlite3", 10.0)
    assert type(translated) is expected
    assert "/data/mailgate.sqlite3" in str(translated) and says in str(translated)
