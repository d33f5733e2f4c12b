"""PostgreSQL's task and automation doorbells: a worker pool (a runner) in another process hears of
queued tasks (messages, automations due now) at once (``Store.watch_tasks``, ``watch_automations``),
instead of at its next ``[tasks] poll_interval`` (``[automations] timer_poll``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mailgate.core.background import lost_task
from mailgate.store.base import (
    AutomationUpdate,
    Changes,
    NewAutomation,
    NewEvent,
    NewMessage,
    NewStep,
    NewTask,
)
from mailgate.store.postgres.backend import PgStore
from tests.helpers import wait_until
from tests.pg import create_database_async, drop_database_async

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def two_processes() -> AsyncIterator[tuple[PgStore, PgStore]]:
    """Two stores on one fresh database, as two processes would have; the first has a session s1."""
    dsn = await create_database_async()
    queuer, worker = PgStore(dsn, pool_size=2), PgStore(dsn, pool_size=2)
    try:
        for store in (queuer, worker):
            await store.open()
        await queuer.migrate()
        await queuer.create_session("s1", "iv", "{}", "owner")
        yield queuer, worker
    finally:
        for store in (queuer, worker):
            await store.close()
        await drop_database_async(dsn)


async def listening(store: PgStore) -> None:
    await wait_until(lambda: store.listening, what="the listener's connection")


async def test_queued_and_released_tasks_ring_other_processes() -> None:
    async with two_processes() as (queuer, worker):
        rung = asyncio.Event()
        worker.watch_tasks(rung.set)
        await listening(worker)
        rung.clear()  # the listener's catch-up ring on connecting

        await queuer.commit(Changes(events=[NewEvent("s1", "note", "{}")]))  # no task: the events bell only
        await queuer.commit(Changes(new_tasks=[NewTask("t1", "s1", "iv", "act", "{}", "{}", None, 3)]))
        async with asyncio.timeout(10):
            await rung.wait()
        claim = await worker.claim_tasks("w1", 10, 30.0, lost_task)
        assert [t.id for t in claim.tasks] == ["t1"]

        rung.clear()
        await worker.release_tasks("w1", ["t1"])  # given back (a stopping worker): others may claim it
        async with asyncio.timeout(10):
            await rung.wait()


async def test_a_commit_without_tasks_does_not_ring() -> None:
    async with two_processes() as (queuer, worker):
        tasks_rung, events_rung = asyncio.Event(), asyncio.Event()
        worker.watch_tasks(tasks_rung.set)
        worker.watch(events_rung.set)
        await listening(worker)
        tasks_rung.clear()
        events_rung.clear()
        await queuer.commit(Changes(events=[NewEvent("s1", "note", "{}")]))
        async with asyncio.timeout(10):
            await events_rung.wait()  # the events bell rang, so the notification has arrived
        assert not tasks_rung.is_set()


async def test_messages_and_due_automations_ring_other_processes() -> None:
    async with two_processes() as (sender, runner):
        rung = asyncio.Event()
        runner.watch_automations(rung.set)
        await listening(runner)
        rung.clear()  # the listener's catch-up ring on connecting
        rec, _ = await sender.create_automation(NewAutomation("a1", "app.Flow", None, "{}", "k1", "{}"),
                                                [NewStep("st1", "start")])
        async with asyncio.timeout(10):
            await rung.wait()  # created due now
        [claim] = await runner.claim_automations("r1", 5, 30.0)
        # the run leaves it waiting on a timer in an hour; a message from another process wakes it at once
        timer = sender.now() + 3600
        await runner.commit(Changes(automations=[AutomationUpdate("a1", rec.version, "r1", wake_at=timer)]))
        assert await runner.claim_automations("r1", 5, 30.0) == []
        rung.clear()
        await sender.enqueue_message(NewMessage("m1", "go", automation_id="a1"))
        async with asyncio.timeout(10):
            await rung.wait()
        [claim] = await runner.claim_automations("r1", 5, 30.0)
        assert [m.id for m in claim.messages] == ["m1"]
        rung.clear()
        await runner.release_automations("r1", ["a1"])  # given back: another runner may take it now
        async with asyncio.timeout(10):
            await rung.wait()
