"""The event feed against the real store: events that become visible out of id order, and the task
events the store inserts itself.

On PostgreSQL a sequence hands out ids at insert and transactions commit in any order, so a reader
can see id N+1 before id N. SQLite has one writer and commits in id order, so the real store cannot
show that by itself. The feed tests therefore run on the real SQLite store seen through
``LateStore``, a thin wrapper that hides chosen committed rows from the two reads the feed makes
(``events_after``, ``events_with_ids``) until the test releases them: exactly what a reader sees
while an earlier transaction is still open. No test branches on the backend; what the real store
itself must guarantee (every committed row among the asked ids, in id order; WorkerLost events in
the claim's transaction and in the core's shape) is tested on the store directly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence

import pytest

from mailgate.core.background import lost_task, task_events
from mailgate.core.events import EventFeed
from mailgate.store.base import Changes, EventRecord, NewEvent, NewTask, Store, TaskFinish
from tests.helpers import wait_until
from tests.store.conftest import Clock

pytestmark = pytest.mark.asyncio


class LateStore:
    """The feed's view of a store in which the ``hidden`` rows are committed but not yet visible."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.hidden: set[int] = set()

    async def events_after(self, after_id: int, limit: int = 1000) -> list[EventRecord]:
        return [e for e in await self.store.events_after(after_id, limit) if e.id not in self.hidden]

    async def events_with_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        return [e for e in await self.store.events_with_ids(ids) if e.id not in self.hidden]

    async def last_event_id(self) -> int:
        return await self.store.last_event_id()

    def watch(self, wake: Callable[[], None]) -> None:
        self.store.watch(wake)


async def commit_events(store: Store, *payloads: str, session: str = "s1") -> list[int]:
    result = await store.commit(Changes(events=[NewEvent(session, "command", p) for p in payloads]))
    return [e.id for e in result.events]


async def test_an_event_visible_after_a_higher_id_is_still_delivered(store: Store) -> None:
    view = LateStore(store)
    feed = EventFeed(view, poll_interval=60)  # type: ignore[arg-type]  # the feed reads three methods
    await feed.open()
    got: list[tuple[int, bool]] = []
    feed.subscribe(lambda e: got.append((e.id, feed.late)), "s1")
    first, second = await commit_events(store, '{"n":1}', '{"n":2}')
    view.hidden.add(first)  # the transaction that holds `first` has not committed yet
    await feed.read()
    assert got == [(second, False)] and feed.cursor == second and feed.pending_gaps == (first,)
    await feed.read()  # still invisible: asked for again, nothing delivered twice
    assert got == [(second, False)]
    view.hidden.clear()  # ... now it commits
    third = (await commit_events(store, '{"n":3}'))[0]
    await feed.read()
    assert got == [(second, False), (first, True), (third, False)] and feed.pending_gaps == ()


async def test_own_commits_that_follow_the_cursor_are_delivered_without_a_read(store: Store) -> None:
    """The common case with one writer: the commit's own events, no read; but when another process
    committed in between, the own commit's ids do not follow the cursor and the feed reads the store
    (the old hub delivered the own events and jumped its cursor past the other process's)."""
    feed = EventFeed(store, poll_interval=60)
    await feed.open()
    got: list[int] = []
    feed.subscribe(lambda e: got.append(e.id))
    own = (await store.commit(Changes(events=[NewEvent("s1", "command", '{"n":1}'), NewEvent("s1", "command", '{"n":2}')]))).events
    feed.committed(own)
    assert got == [e.id for e in own] and feed.reads == 0 and feed.cursor == own[-1].id
    other = await commit_events(store, '{"other":1}', session="s2")  # another process's commit
    mine = (await store.commit(Changes(events=[NewEvent("s1", "command", '{"n":3}')]))).events
    feed.committed(mine)
    assert got == [e.id for e in own]  # not delivered past the unseen id: the feed reads instead
    await feed.read()
    assert got == [*(e.id for e in own), *other, mine[0].id] and feed.reads == 1
    feed.committed(mine)  # the same events again (a late duplicate): never delivered twice
    await feed.read()
    assert got == [*(e.id for e in own), *other, mine[0].id]


async def test_the_feed_reads_what_other_processes_commit_below_its_own_ids(store: Store) -> None:
    """The old hub moved its cursor by its own commits' ids; the feed only by what the store returns."""
    feed = EventFeed(store, poll_interval=0.05)
    await feed.open()
    got: list[int] = []
    feed.subscribe(lambda e: got.append(e.id))
    runner = asyncio.create_task(feed.run())
    try:
        ids = await commit_events(store, *(f'{{"n":{i}}}' for i in range(5)), session="other")
        own = await commit_events(store, '{"own":1}')
        feed.wake()  # what Runtime.after_commit does for its own commit: a wake-up, not an id

        async def all_read() -> bool:
            return got == [*ids, *own]

        await wait_until(all_read, what="every event, in id order")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_burst_of_wake_ups_costs_few_reads(store: Store) -> None:
    feed = EventFeed(store, poll_interval=60)  # no polling: only wake-ups read
    await feed.open()
    got: list[int] = []
    feed.subscribe(lambda e: got.append(e.id), "s1")
    runner = asyncio.create_task(feed.run())
    try:
        async def commit_and_wake(i: int) -> None:
            await commit_events(store, f'{{"n":{i}}}')
            feed.wake()

        await asyncio.gather(*(commit_and_wake(i) for i in range(100)))

        async def all_read() -> bool:
            return len(got) == 100

        await wait_until(all_read, what="100 events")
        assert got == sorted(got) and feed.reads <= 20, feed.reads  # one read per commit would be 100
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_gap_that_never_fills_is_given_up(store: Store) -> None:
    view = LateStore(store)
    feed = EventFeed(view, poll_interval=60, gap_timeout=0)  # type: ignore[arg-type]
    await feed.open()
    feed.subscribe(lambda e: None)
    lost, kept = await commit_events(store, "{}", "{}")
    view.hidden.add(lost)  # rolled back, or its session deleted: it never appears
    await feed.read()
    assert feed.pending_gaps == (lost,)
    await feed.read()
    assert feed.pending_gaps == () and feed.gaps_given_up == 1 and feed.cursor == kept


async def test_events_with_ids_returns_the_visible_ones_in_order(store: Store) -> None:
    ids = await commit_events(store, "{}", "{}", "{}")
    got = await store.events_with_ids([ids[2], 10**9, ids[0]])
    assert [e.id for e in got] == [ids[0], ids[2]] and got[0].session_id == "s1"
    assert await store.events_with_ids([]) == []


async def test_worker_lost_events_are_the_cores_task_events(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    task = NewTask("t1", "s1", "iv", "act", "{}", "{}", "refresh", 1)
    await store.commit(Changes(new_tasks=[task]))
    assert [t.id for t in (await store.claim_tasks("w", 1, 5, lost_task)).tasks] == ["t1"]
    clock.now += 6  # the worker died; its one attempt is used up
    claim = await store.claim_tasks("w", 1, 5, lost_task)
    assert claim.tasks == ()
    assert [e.kind for e in claim.events] == ["task", "command"]
    assert json.loads(claim.events[0].payload) == {"task": "t1", "action": "act", "state": "failed", "error_type": "WorkerLost"}
    assert json.loads(claim.events[1].payload) == {"command": "refresh"}
    assert await store.list_events("s1") == list(claim.events)  # committed with the claim
    # the same shape as the task event of a task that ended in a worker
    await store.commit(Changes(new_tasks=[NewTask("t2", "s1", "iv", "act", "{}", "{}", None, 1)]))
    ran = (await store.claim_tasks("w", 1, 5, lost_task)).tasks[0]
    finished = await store.commit(Changes(finish=TaskFinish("t2", "w", "failed", error_type="Boom"),
                                          events=task_events(ran, "failed", False, None, "Boom")))
    assert set(json.loads(finished.events[0].payload)) == set(json.loads(claim.events[0].payload))
