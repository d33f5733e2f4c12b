"""The SQLite store's session cache: used while the database is unchanged, never older than it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from mailgate.store.base import Changes, SessionSave
from mailgate.store.sqlite.backend import SqliteStore

pytestmark = pytest.mark.asyncio


async def opened(path: Path) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.open()
    await store.migrate()
    return store


async def test_repeated_reads_of_an_unchanged_session_come_from_the_cache(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s.sqlite3")
    try:
        await store.create_session("s1", "iv", '{"a":1}', "{}")
        first = await store.get_session("s1")
        hits = store.cache_stats()[0]
        for _ in range(5):
            assert await store.get_session("s1") == first
        assert store.cache_stats()[0] == hits + 5
        # this process's own commit is seen by the next read, which the cache serves
        await store.commit(Changes(save=SessionSave("s1", '{"a":2}', 1)))
        hits = store.cache_stats()[0]
        after = await store.get_session("s1")
        assert after is not None and after.version == 2 and after.answers == '{"a":2}'
        assert store.cache_stats()[0] == hits + 1
        assert after == await store._read_session_uncached("s1")
        assert await store.get_session("missing") is None
        await store.delete_session("s1")
        assert await store.get_session("s1") is None
    finally:
        await store.close()


async def test_a_commit_by_another_process_is_seen_and_unchanged_sessions_stay_cached(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = await opened(path)
    try:
        await store.create_session("s1", "iv", '{"a":1}', "{}")
        await store.create_session("s2", "iv", '{"b":1}', "{}")
        for sid in ("s1", "s2", "s1", "s2"):  # cached after the first round
            assert (await store.get_session(sid)).version == 1  # type: ignore[union-attr]
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute(\"UPDATE sessions SET answers = '{\\\"a\\\":9}', version = version + 1 WHERE id = 's1'\"); c.commit()"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
        assert await proc.wait() == 0
        hits, misses = store.cache_stats()
        rec = await store.get_session("s1")
        assert rec is not None and rec.version == 2 and rec.answers == '{"a":9}'
        assert store.cache_stats() == (hits, misses + 1)  # s1 changed: read again
        assert (await store.get_session("s2")).answers == '{"b":1}'  # type: ignore[union-attr]
        assert store.cache_stats() == (hits + 1, misses + 1)  # s2 did not: still served from memory
    finally:
        await store.close()


async def test_a_second_store_on_the_same_file_sees_the_first_ones_saves(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    one, two = await opened(path), await opened(path)
    try:
        await one.create_session("s1", "iv", "{}", "{}")
        assert (await two.get_session("s1")).version == 1  # type: ignore[union-attr]
        for version in range(1, 20):
            await one.commit(Changes(save=SessionSave("s1", f'{{"n":{version}}}', version)))
            rec = await two.get_session("s1")
            assert rec is not None and rec.version == version + 1
    finally:
        await one.close()
        await two.close()


async def test_get_sessions_uses_the_cache_and_sees_another_process_change_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = await opened(path)
    try:
        for sid in ("s1", "s2", "s3"):
            await store.create_session(sid, "iv", '{"a":1}', "{}")
        first = await store.get_sessions(["s1", "s2", "s3", "nope", "s1"])
        assert sorted(first) == ["s1", "s2", "s3"]
        hits, misses = store.cache_stats()
        assert await store.get_sessions(["s1", "s2", "s3"]) == {k: first[k] for k in ("s1", "s2", "s3")}
        assert store.cache_stats() == (hits + 3, misses)  # all three from memory
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute(\"UPDATE sessions SET answers = '{\\\"a\\\":9}', version = version + 1 WHERE id = 's1'\"); "
            "c.execute(\"DELETE FROM sessions WHERE id = 's3'\"); c.commit()"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
        assert await proc.wait() == 0
        after = await store.get_sessions(["s1", "s2", "s3"])
        assert sorted(after) == ["s1", "s2"]
        assert after["s1"].version == 2 and after["s1"].answers == '{"a":9}'
        assert after["s2"] == first["s2"]
        assert await store.get_session("s1") == after["s1"]  # the new state is what the cache keeps
    finally:
        await store.close()
