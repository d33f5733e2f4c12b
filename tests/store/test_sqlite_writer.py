"""The SQLite writer's group commits: many units share one transaction and one fsync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.core.background import lost_task
from mailgate.errors import VersionConflict
from mailgate.store.base import Changes, NewTask, SessionSave, TaskFinish
from mailgate.store.sqlite.backend import SqliteStore

pytestmark = pytest.mark.asyncio


def new_task(task_id: str, session_id: str = "s1") -> NewTask:
    return NewTask(task_id, session_id, "iv", "act", "{}", "{}", None, 3)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "writer.sqlite3"))
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_commits_share_group_commits(store: SqliteStore) -> None:
    await asyncio.gather(*(store.commit(Changes(new_tasks=[new_task(f"t{i}")])) for i in range(200)))
    batches, units = store.commit_stats
    assert units >= 200 and batches < 100  # many units per fsync


async def test_a_failing_unit_is_undone_alone_and_its_neighbours_commit_in_the_same_batches(store: SqliteStore) -> None:
    for i in range(3):
        await store.create_session(f"s{i}", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task("t1", "s1")]))
    await store.claim_tasks("w", 10, 30, lost_task)
    before = store.commit_stats
    outcomes = await asyncio.gather(
        store.commit(Changes(save=SessionSave("s0", '{"ok":0}', 1))),
        store.commit(Changes(finish=TaskFinish("t1", "w", "succeeded", "1"), save=SessionSave("s1", '{"bad":1}', 7))),
        store.commit(Changes(save=SessionSave("s2", '{"ok":2}', 1))),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], VersionConflict)
    assert store.commit_stats[1] == before[1] + 3  # all three answered by group commits, none by a retry loop
