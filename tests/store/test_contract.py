"""The Store contract: every backend must pass this module unchanged.

Backends are the parameters of the ``store`` fixture: a new backend adds one line to ``BACKENDS``.
Nothing here may depend on which backend runs (what only SQLite does is tested in
``test_sqlite_*.py``), and every method of :class:`~mailgate.store.base.Store` is exercised here:
``test_every_store_method_is_covered`` fails when one is added without a contract test.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.core.background import lost_task
from mailgate.errors import (
    LeaseLost,
    MailgateError,
    NotFound,
    StoreConflict,
    StoreError,
    VersionConflict,
)
from mailgate.store.base import (
    Changes,
    Delivery,
    InboundDelivery,
    NewEmail,
    NewEvent,
    NewInbound,
    NewMailbox,
    NewTask,
    SessionSave,
    StashRecord,
    Store,
    TaskFinish,
)
from tests.store.conftest import Clock


def new_task(task_id: str, session_id: str = "s1", max_attempts: int = 3) -> NewTask:
    return NewTask(task_id, session_id, "iv", "act", "{}", "{}", None, max_attempts)


pytestmark = pytest.mark.asyncio


async def test_migrations_are_numbered_and_idempotent(store: Store) -> None:
    assert await store.schema_version() == store.latest_migration() >= 1
    assert await store.migrate() == []


async def test_session_create_get_list_delete(store: Store) -> None:
    rec = await store.create_session("s1", "iv", '{"a":1}', '{"id":"u"}')
    assert rec.version == 1
    got = await store.get_session("s1")
    assert got == rec
    await store.create_session("s2", "other", "{}", "{}")
    assert [r.id for r in await store.list_sessions()] == ["s1", "s2"]
    assert [r.id for r in await store.list_sessions(interview="other")] == ["s2"]
    assert [r.id for r in await store.list_sessions(after="s1")] == ["s2"]
    assert await store.delete_session("s1") is True
    assert await store.delete_session("s1") is False
    assert await store.get_session("s1") is None


async def test_versioned_save_conflict_applies_nothing(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    clock.now += 5
    result = await store.commit(Changes(save=SessionSave("s1", '{"v":2}', 1)))
    assert result.version == 2
    rec = await store.get_session("s1")
    assert rec is not None and rec.answers == '{"v":2}' and rec.modified_at == clock.now
    with pytest.raises(VersionConflict, match="version 2, not 1"):
        await store.commit(Changes(save=SessionSave("s1", '{"v":3}', 1), new_tasks=[new_task("t1")],
                                   events=[NewEvent("s1", "command", "{}")]))
    assert (await store.get_session("s1")).answers == '{"v":2}'  # type: ignore[union-attr]
    assert await store.get_task("t1") is None
    assert await store.list_events("s1") == []


async def test_save_of_deleted_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.commit(Changes(save=SessionSave("nope", "{}", 1)))


async def test_untouched_save_keeps_access_time(store: Store, clock: Clock) -> None:
    rec = await store.create_session("s1", "iv", "{}", "{}")
    clock.now += 100
    await store.commit(Changes(save=SessionSave("s1", '{"a":1}', 1, touch=False)))
    after = await store.get_session("s1")
    assert after is not None and after.accessed_at == rec.accessed_at and after.modified_at == clock.now


async def test_lease_exclusive_until_expiry_and_renewal(store: Store, clock: Clock) -> None:
    assert await store.try_acquire_lease("s1", "A", ttl=10, budget=4) is None
    busy = await store.try_acquire_lease("s1", "B", ttl=10, budget=4)
    assert busy is not None and busy.holder == "A" and busy.budget_until == busy.acquired_at + 4
    clock.now += 8
    assert await store.renew_lease("s1", "A", ttl=10) is True  # the holder is alive
    clock.now += 8  # past the first expiry, within the renewed one
    assert (await store.try_acquire_lease("s1", "B", ttl=10, budget=4)) is not None
    clock.now += 3  # holder stopped renewing: expired
    assert await store.try_acquire_lease("s1", "B", ttl=10, budget=4) is None
    assert await store.renew_lease("s1", "A", ttl=10) is False
    await store.release_lease("s1", "A")  # not the holder: no effect
    assert (await store.try_acquire_lease("s1", "C", ttl=10, budget=4)) is not None
    await store.release_lease("s1", "B")
    assert await store.try_acquire_lease("s1", "C", ttl=10, budget=4) is None


async def test_commit_releases_lease_atomically(store: Store) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    assert await store.try_acquire_lease("s1", "A", 10, 4) is None
    await store.commit(Changes(save=SessionSave("s1", "{}", 1), release_lease=("s1", "A")))
    assert await store.try_acquire_lease("s1", "B", 10, 4) is None


async def test_unleased_commit_needs_the_read_version_and_no_live_lease(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    # at the version read, nobody leasing: applied, tasks and all
    result = await store.commit(Changes(save=SessionSave("s1", '{"v":2}', 1), new_tasks=[new_task("t1")], unleased=("s1", 1)))
    assert result.version == 2 and await store.get_task("t1") is not None
    # the version moved on: nothing applied
    with pytest.raises(VersionConflict, match="version 2, not 1"):
        await store.commit(Changes(new_tasks=[new_task("t2")], unleased=("s1", 1)))
    assert await store.get_task("t2") is None
    # another holder's live lease: nothing applied, even at the right version
    assert await store.try_acquire_lease("s1", "other-process#1", ttl=10, budget=4) is None
    with pytest.raises(VersionConflict, match="leased by other-process#1"):
        await store.commit(Changes(save=SessionSave("s1", '{"v":3}', 2), unleased=("s1", 2)))
    assert (await store.get_session("s1")).answers == '{"v":2}'  # type: ignore[union-attr]
    # once that lease has expired, the commit goes through
    clock.now += 11
    assert (await store.commit(Changes(save=SessionSave("s1", '{"v":3}', 2), unleased=("s1", 2)))).version == 3
    with pytest.raises(NotFound):
        await store.commit(Changes(unleased=("gone", 1)))


async def test_claim_order_heartbeat_and_finish(store: Store, clock: Clock) -> None:
    await store.commit(Changes(new_tasks=[new_task(f"t{i}") for i in range(5)]))
    claimed = (await store.claim_tasks("w1", 3, lease=30, lost=lost_task)).tasks
    assert [t.id for t in claimed] == ["t0", "t1", "t2"]
    assert all(t.state == "running" and t.worker == "w1" and t.attempts == 1 for t in claimed)
    assert [t.id for t in (await store.claim_tasks("w2", 10, lease=30, lost=lost_task)).tasks] == ["t3", "t4"]
    assert (await store.claim_tasks("w3", 10, lease=30, lost=lost_task)).tasks == ()
    clock.now += 20
    await store.heartbeat("w1", ["t0"], lease=30)
    clock.now += 15  # t1, t2 (w1, no heartbeat) and t3, t4 (w2) expired; t0 renewed
    again = (await store.claim_tasks("w3", 10, lease=30, lost=lost_task)).tasks
    assert sorted(t.id for t in again) == ["t1", "t2", "t3", "t4"]
    assert all(t.attempts == 2 for t in again)
    result = await store.commit(Changes(finish=TaskFinish("t0", "w1", "succeeded", '{"value":1}'),
                                        events=[NewEvent("s1", "task", '{"task":"t0"}')]))
    assert [e.kind for e in result.events] == ["task"]
    done = await store.get_task("t0")
    assert done is not None and done.state == "succeeded" and done.result == '{"value":1}' and done.finished_at == clock.now
    with pytest.raises(LeaseLost):  # w1 lost t1 to w3
        await store.commit(Changes(finish=TaskFinish("t1", "w1", "succeeded")))
    assert (await store.get_task("t1")).worker == "w3"  # type: ignore[union-attr]


async def test_exhausted_attempts_fail_with_clear_error(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task("t1", max_attempts=2)]))
    for _ in range(2):
        assert [t.id for t in (await store.claim_tasks("w", 1, lease=5, lost=lost_task)).tasks] == ["t1"]
        clock.now += 6  # the worker "died"
    lost = await store.claim_tasks("w", 1, lease=5, lost=lost_task)
    assert lost.tasks == ()
    # the claim returns the events it inserted for the task it failed (the feed is woken for them)
    assert [(e.session_id, e.kind) for e in lost.events] == [("s1", "task")]
    failed = await store.get_task("t1")
    assert failed is not None and failed.state == "failed" and failed.error_type == "WorkerLost"
    assert "2 times" in (failed.error_message or "") and "mailgate tasks retry t1" in (failed.error_message or "")
    events = await store.list_events("s1")
    assert events[-1] == lost.events[0]
    assert json.loads(events[-1].payload) == {"task": "t1", "action": "act", "state": "failed", "error_type": "WorkerLost"}
    # found again by id, as the event feed asks for ids it has not seen yet
    assert await store.events_with_ids([events[-1].id, 10**9]) == [events[-1]]
    assert await store.events_with_ids([]) == []
    retried = await store.retry_task("t1")
    assert retried.state == "queued" and retried.attempts == 0 and retried.error_type is None
    with pytest.raises(MailgateError, match="only failed tasks"):
        await store.retry_task("t1")
    with pytest.raises(NotFound):
        await store.retry_task("nope")


async def test_release_tasks_requeues_without_counting(store: Store) -> None:
    await store.commit(Changes(new_tasks=[new_task("t1")]))
    await store.claim_tasks("w", 1, lease=30, lost=lost_task)
    await store.release_tasks("w", ["t1"])
    rec = await store.get_task("t1")
    assert rec is not None and rec.state == "queued" and rec.attempts == 0 and rec.worker is None
    assert [t.id for t in (await store.claim_tasks("w2", 1, lease=30, lost=lost_task)).tasks] == ["t1"]


async def test_events_increase_per_session(store: Store) -> None:
    for i in range(3):
        await store.commit(Changes(events=[NewEvent("a", "command", f'{{"i":{i}}}'), NewEvent("b", "command", "{}")]))
    a = await store.list_events("a")
    assert [json.loads(e.payload)["i"] for e in a] == [0, 1, 2]
    assert a[0].id < a[1].id < a[2].id
    assert [e.id for e in await store.list_events("a", after_id=a[0].id)] == [a[1].id, a[2].id]
    assert [e.id for e in await store.list_events("a", limit=2)] == [a[0].id, a[1].id]
    # the newest window (a page that missed too much), still oldest first
    assert [e.id for e in await store.list_events("a", limit=2, newest=True)] == [a[1].id, a[2].id]


async def test_delete_session_removes_tasks_events_lease(store: Store) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task("t1")], events=[NewEvent("s1", "task", "{}")]))
    assert await store.try_acquire_lease("s1", "A", 10, 4) is None
    await store.commit(Changes(delete_session="s1"))
    assert await store.get_task("t1") is None
    assert await store.list_events("s1") == []
    assert await store.try_acquire_lease("s1", "B", 10, 4) is None


async def test_task_queue_counts_runnable_tasks_and_the_oldest_queued(store: Store, clock: Clock) -> None:
    assert await store.task_queue() == (0, 0, None)
    await store.create_session("s1", "iv", "{}", "{}")
    first = clock.now
    await store.commit(Changes(new_tasks=[new_task("t1")]))
    clock.now += 10
    await store.commit(Changes(new_tasks=[new_task("t2"), new_task("t3"), new_task("t4")]))
    (claimed,) = (await store.claim_tasks("w1", 1, lease=30, lost=lost_task)).tasks
    assert claimed.id == "t1"
    assert await store.task_queue() == (3, 1, first + 10)  # t1 runs: the oldest queued is t2
    await store.commit(Changes(finish=TaskFinish("t1", "w1", "succeeded", '{"value":1}')))
    assert await store.task_queue() == (3, 0, first + 10)


async def test_concurrent_commits_share_group_commits(store: Store) -> None:
    await asyncio.gather(*(store.commit(Changes(new_tasks=[new_task(f"t{i}")])) for i in range(200)))
    counts = await store.count_tasks()
    assert counts == {"queued": 200, "running": 0, "succeeded": 0, "failed": 0}


async def test_a_failing_commit_in_a_group_undoes_only_itself(store: Store) -> None:
    for i in range(3):
        await store.create_session(f"s{i}", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task("t1", "s1")]))
    assert [t.id for t in (await store.claim_tasks("w", 10, 30, lost=lost_task)).tasks] == ["t1"]
    outcomes = await asyncio.gather(
        store.commit(Changes(save=SessionSave("s0", '{"ok":0}', 1), new_tasks=[new_task("t0", "s0")])),
        # writes (finishes t1) and then fails (wrong version): its write must be undone, not its neighbours'
        store.commit(Changes(finish=TaskFinish("t1", "w", "succeeded", "1"), save=SessionSave("s1", '{"bad":1}', 7))),
        store.commit(Changes(save=SessionSave("s2", '{"ok":2}', 1), new_tasks=[new_task("t2", "s2")])),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], VersionConflict)
    assert [o.version for o in (outcomes[0], outcomes[2])] == [2, 2]  # type: ignore[union-attr]
    assert (await store.get_task("t1")).state == "running"  # type: ignore[union-attr]
    assert await store.get_task("t0") is not None and await store.get_task("t2") is not None
    assert [(await store.get_session(f"s{i}")).answers for i in range(3)] == ['{"ok":0}', "{}", '{"ok":2}']  # type: ignore[union-attr]


async def test_get_tasks_and_list(store: Store) -> None:
    await store.commit(Changes(new_tasks=[new_task("t1", "s1"), new_task("t2", "s2")]))
    assert set(await store.get_tasks(["t1", "t2", "zz"])) == {"t1", "t2"}
    assert [t.id for t in await store.list_tasks(session_id="s2")] == ["t2"]
    assert [t.id for t in await store.list_tasks(state="queued")] == ["t2", "t1"]


async def test_events_after_spans_sessions(store: Store) -> None:
    assert await store.last_event_id() == 0
    await store.commit(Changes(events=[NewEvent("a", "command", "{}"), NewEvent("b", "email", "{}")]))
    first = await store.events_after(0)
    assert [(e.session_id, e.kind) for e in first] == [("a", "command"), ("b", "email")]
    assert await store.last_event_id() == first[-1].id
    assert await store.events_after(first[0].id) == first[1:]
    assert len(await store.events_after(0, limit=1)) == 1


async def test_delivered_raw_bytes_come_back_exactly_and_once(store: Store) -> None:
    sess = await store.create_session("s-mail", "iv", "{}", "{}")
    small = b"Subject: small\r\n\r\nhello\r\n"
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * (5 * 2**20 // 256) + b"\r\n"  # written in pieces
    for n, raw in enumerate((small, big, big)):  # the third is a duplicate of the second
        sha = hashlib.sha256(raw).hexdigest()
        email = NewEmail(f"e{n}", "box", sess.id, f"<m{n}@x>", f"<m{min(n, 1)}@x>\0{sha}", "{}", "{}", "{}", None,
                         NewEvent(sess.id, "email", "{}"))
        stored, _ = await store.deliver(Delivery(sha, raw, [email]))
        assert stored == ([] if n == 2 else [f"e{n}"])
        assert await store.get_raw(sha) == raw
    assert [e.size for e in await store.list_emails(session_id=sess.id)] == [len(small), len(big)]


async def test_now_is_the_clock_of_stored_times(store: Store, clock: Clock) -> None:
    assert store.now() == clock.now
    clock.now += 42.5
    assert store.now() == 1_000_042.5
    rec = await store.create_session("s1", "iv", "{}", "{}")
    assert rec.created_at == rec.modified_at == rec.accessed_at == store.now()
    assert (await store.get_session("s1")).created_at == store.now()  # type: ignore[union-attr]


async def test_close_and_open_again_keeps_everything(make_store: Callable[[Clock], Store], clock: Clock) -> None:
    first = make_store(clock)
    await first.open()
    assert await first.schema_version() == 0  # a fresh database: nothing applied yet
    applied = await first.migrate()
    assert applied == sorted(applied) and applied[0] == 1 and applied[-1] == first.latest_migration()
    await first.create_session("s1", "iv", '{"a":1}', "{}")
    await first.commit(Changes(new_tasks=[new_task("t1")], events=[NewEvent("s1", "command", "{}")]))
    await first.close()
    second = make_store(clock)
    await second.open()
    try:
        assert await second.schema_version() == second.latest_migration()
        assert (await second.get_session("s1")).answers == '{"a":1}'  # type: ignore[union-attr]
        assert (await second.get_task("t1")).state == "queued"  # type: ignore[union-attr]
        assert len(await second.list_events("s1")) == 1
    finally:
        await second.close()


async def test_a_duplicate_session_id_is_a_store_conflict(store: Store) -> None:
    await store.create_session("s1", "iv", '{"first":1}', "{}")
    with pytest.raises(StoreConflict) as info:
        await store.create_session("s1", "iv", '{"second":1}', "{}")
    assert isinstance(info.value, StoreError) and isinstance(info.value, MailgateError)
    assert (await store.get_session("s1")).answers == '{"first":1}'  # type: ignore[union-attr]


async def test_get_sessions_returns_those_that_exist(store: Store) -> None:
    for i in range(3):
        await store.create_session(f"s{i}", "iv", f'{{"i":{i}}}', "{}")
    got = await store.get_sessions(["s2", "nope", "s0", "s2"])
    assert set(got) == {"s0", "s2"} and got["s2"].answers == '{"i":2}'
    many = [f"x{i}" for i in range(1200)]  # more ids than one statement may bind
    await asyncio.gather(*(store.create_session(sid, "iv", "{}", "{}") for sid in many))
    assert set(await store.get_sessions(many)) == set(many)
    assert await store.get_sessions([]) == {}


async def test_acquire_lease_and_read_reads_under_the_new_lease(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", '{"a":1}', "{}")
    busy, session = await store.acquire_lease_and_read("s1", "A", ttl=10, budget=4)
    assert busy is None and session is not None and session.answers == '{"a":1}'
    busy, session = await store.acquire_lease_and_read("s1", "B", ttl=10, budget=4)
    assert session is None and busy is not None and busy.holder == "A" and busy.expires_at == clock.now + 10
    assert await store.acquire_lease_and_read("gone", "A", ttl=10, budget=4) == (None, None)  # leased, no session


async def test_claim_period_once_per_period_and_last_periods(store: Store, clock: Clock) -> None:
    assert await store.last_periods() == {}
    assert await store.claim_period("cron_daily", "2024-01-01", "d1") is True
    assert await store.claim_period("cron_daily", "2024-01-01", "d2") is False  # another daemon ran it
    clock.now += 86400
    assert await store.claim_period("cron_daily", "2024-01-02", "d2") is True
    assert await store.claim_period("cron_hourly", "2024-01-02T00", "d1") is True
    assert await store.last_periods() == {"cron_daily": ("2024-01-02", clock.now),
                                          "cron_hourly": ("2024-01-02T00", clock.now)}


async def test_cron_session_ids_page_through_cron_enabled_sessions(store: Store) -> None:
    for i in range(5):
        await store.create_session(f"s{i}", "a" if i < 4 else "b", "{}", "{}", allow_cron=i != 1)
    await store.create_session("s5", "a", "{}", "{}")
    await store.commit(Changes(save=SessionSave("s5", "{}", 1, allow_cron=True)))  # enabled by a save
    await store.commit(Changes(save=SessionSave("s2", "{}", 1, allow_cron=False)))  # disabled by a save
    assert await store.cron_session_ids(["a"], None, 10) == ["s0", "s3", "s5"]
    assert await store.cron_session_ids(["a"], None, 2) == ["s0", "s3"]
    assert await store.cron_session_ids(["a"], "s3", 2) == ["s5"]
    assert await store.cron_session_ids(["a", "b"], None, 10) == ["s0", "s3", "s4", "s5"]
    assert await store.cron_session_ids([], None, 10) == []


async def test_inactive_session_ids_by_save_time_and_interview(store: Store, clock: Clock) -> None:
    await store.create_session("old-a", "a", "{}", "{}")
    await store.create_session("old-b", "b", "{}", "{}")
    await store.create_session("old-c", "c", "{}", "{}")
    await store.create_session("old-touched", "a", "{}", "{}")
    created = clock.now
    clock.now += 100
    await store.create_session("new-a", "a", "{}", "{}")
    await store.commit(Changes(save=SessionSave("old-touched", "{}", 1)))  # a user's save
    await store.commit(Changes(save=SessionSave("old-c", "{}", 1, touch=False)))  # the cron user's: activity too
    before = clock.now - 50
    assert await store.inactive_session_ids(before, None, [], 10) == ["old-a", "old-b"]
    assert await store.inactive_session_ids(before, ["a", "c"], [], 10) == ["old-a"]
    assert await store.inactive_session_ids(before, None, ["a"], 10) == ["old-b"]
    assert await store.inactive_session_ids(before, None, [], 1) == ["old-a"]
    assert await store.inactive_session_ids(clock.now + 1, ["a"], [], 10) == ["new-a", "old-a", "old-touched"]
    cron_saved = await store.get_session("old-c")  # a save, yet no access by a user
    assert cron_saved is not None and cron_saved.accessed_at == created and cron_saved.modified_at == clock.now


async def test_stash_is_read_refreshed_deleted_and_expires(store: Store, clock: Clock) -> None:
    now = clock.now
    await store.put_stash(StashRecord("k1", "sealed-1", now, now + 100, 100.0))
    await store.put_stash(StashRecord("k2", "sealed-2", now, now + 10, 10.0))
    assert await store.take_stash("k1", now) == StashRecord("k1", "sealed-1", now, now + 100, 100.0)
    assert await store.take_stash("nope", now) is None
    refreshed = await store.take_stash("k1", now + 50, expires_at=now + 150)
    assert refreshed is not None and refreshed.expires_at == now + 150
    assert await store.take_stash("k1", now + 120) is not None  # past its first expiry: refreshed
    assert await store.take_stash("k2", now + 10) is None  # expired: as if it were not there
    assert await store.take_stash("k2", now + 10, delete=True) is None
    assert await store.take_stash("k2", now + 11, expires_at=now + 1000) is None  # an expired stash is not revived
    taken = await store.take_stash("k1", now + 120, delete=True)
    assert taken is not None and taken.data == "sealed-1"
    assert await store.take_stash("k1", now + 120) is None
    results = await asyncio.gather(*(store.take_stash(f"k{i}", now, delete=True) for i in (3, 3, 3)))
    assert results == [None] * 3  # k3 never existed
    await store.put_stash(StashRecord("k3", "sealed-3", now, now + 100, 100.0))
    results = await asyncio.gather(*(store.take_stash("k3", now, delete=True) for _ in range(3)))
    assert sum(r is not None for r in results) == 1  # deleted once: one reader gets it
    assert await store.purge_stashes(now + 11) == 1  # k2
    assert await store.purge_stashes(now + 11) == 0


async def test_setting_stores_the_first_default_only(store: Store) -> None:
    assert await store.setting("secret", "first") == "first"
    assert await store.setting("secret", "second") == "first"
    assert await asyncio.gather(*(store.setting("raced", f"v{i}") for i in range(5))) == ["v0"] * 5


async def test_mailboxes_found_listed_renewed_and_counted(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    await store.create_session("s2", "iv", "{}", "{}")
    assert await store.find_mailbox("box1") is None
    await store.commit(Changes(mailboxes=[NewMailbox("box1", "s1", "", "0", '{"id":"u"}', None),
                                          NewMailbox("box2", "s1", "k", "1", '{"id":"u"}', clock.now + 60)]))
    clock.now += 1
    await store.commit(Changes(mailboxes=[NewMailbox("box3", "s2", "", "0", "{}", None)]))
    box2 = await store.find_mailbox("box2")
    assert box2 is not None and (box2.session_id, box2.key, box2.index, box2.expires_at) == ("s1", "k", "1", clock.now - 1 + 60)
    await store.commit(Changes(mailboxes=[NewMailbox("box2", "s1", "k", "1", '{"id":"u"}', clock.now + 600)]))  # renewed
    assert (await store.find_mailbox("box2")).expires_at == clock.now + 600  # type: ignore[union-attr]
    raw = b"Subject: x\r\n\r\nhi\r\n"
    sha = hashlib.sha256(raw).hexdigest()
    clock.now += 5
    await store.deliver(Delivery(sha, raw, [NewEmail("e1", "box1", "s1", None, sha, "{}", "{}", "{}", None,
                                                     NewEvent("s1", "email", "{}"))]))
    listed = await store.list_mailboxes(session_id="s1")
    assert [(m.local_part, m.emails, m.last_received) for m in listed] == [("box1", 1, clock.now), ("box2", 0, None)]
    assert [m.local_part for m in await store.list_mailboxes()] == ["box1", "box2", "box3"]
    assert [m.local_part for m in await store.list_mailboxes(limit=1)] == ["box1"]
    await store.delete_session("s1")
    assert await store.find_mailbox("box1") is None and [m.local_part for m in await store.list_mailboxes()] == ["box3"]


async def test_delivery_queues_tasks_and_emails_are_fetched_by_id(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    raw = b"Subject: hello\r\n\r\nbody\r\n"
    sha = hashlib.sha256(raw).hexdigest()
    emails = [NewEmail(f"e{i}", f"box{i}", "s1", "<m@x>", f"<m@x>\0{sha}", f'{{"rcpt":{i}}}', '{"subject":"hello"}',
                       '{"spf":"none"}', new_task(f"t{i}"), NewEvent("s1", "email", f'{{"email":"e{i}"}}'))
              for i in range(2)]
    stored, events = await store.deliver(Delivery(sha, raw, emails))
    assert stored == ["e0", "e1"] and [e.kind for e in events] == ["email", "email"]
    assert set(await store.get_tasks(["t0", "t1"])) == {"t0", "t1"}
    got = await store.get_emails(["e1", "nope", "e0"])
    assert set(got) == {"e0", "e1"}
    e1 = got["e1"]
    assert (e1.local_part, e1.session_id, e1.message_id, e1.sha256, e1.size, e1.envelope, e1.received_at) == (
        "box1", "s1", "<m@x>", sha, len(raw), '{"rcpt":1}', clock.now)
    assert [e.id for e in await store.list_emails(local_part="box1")] == ["e1"]
    again, _ = await store.deliver(Delivery(sha, raw, emails))  # the same message to the same mailboxes
    assert again == [] and await store.count_tasks() == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0}


# -- the inbound queue -------------------------------------------------------------------------------
def queued(entry_id: str, raw: bytes, rcpt: str = "box") -> NewInbound:
    return NewInbound(entry_id, hashlib.sha256(raw).hexdigest(), raw, json.dumps({"rcpt": [rcpt]}))


def email_of(email_id: str, raw: bytes, session_id: str = "s1", box: str = "box", task: NewTask | None = None) -> NewEmail:
    sha = hashlib.sha256(raw).hexdigest()
    return NewEmail(email_id, box, session_id, "<m@x>", f"<m@x>\0{sha}", "{}", "{}", "{}", task,
                    NewEvent(session_id, "email", json.dumps({"email": email_id})))


async def test_a_claim_does_not_read_the_bytes_its_caller_holds(store: Store, clock: Clock) -> None:
    """``held``: the processor of the process that queued a big message has its bytes (the SMTP edge's
    buffer, a bytearray): the claim leaves them unread, and the rest of the entry is as usual."""
    big = bytearray(b"Subject: big\r\n\r\n" + b"x" * 300_000 + b"\r\n")
    assert await store.enqueue_inbound(queued("q0", big)) is not None  # the buffer itself is stored
    await store.enqueue_inbound(queued("q1", b"Subject: small\r\n\r\nbody\r\n"))
    claimed = await store.claim_inbound("A", 5, 30, held={"q0", "elsewhere"})
    assert [(q.id, q.raw, q.size, q.attempts, q.worker) for q in claimed] == [
        ("q0", None, len(big), 1, "A"), ("q1", b"Subject: small\r\n\r\nbody\r\n", 24, 1, "A")]
    # what was stored is the buffer's content: another processor (after A's lease) reads it back whole
    clock.now += 31
    assert [q.raw for q in await store.claim_inbound("B", 5, 30)] == [bytes(big), b"Subject: small\r\n\r\nbody\r\n"]


async def test_queued_mail_is_listed_claimed_in_order_and_delivered_once(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    raws = [f"Subject: {n}\r\n\r\nbody {n}\r\n".encode() for n in range(3)]
    received = []
    for n, raw in enumerate(raws):
        received.append(await store.enqueue_inbound(queued(f"q{n}", raw)))
        clock.now += 1
    assert received == [1_000_000.0, 1_000_001.0, 1_000_002.0]
    listed = await store.list_inbound()
    assert [(q.id, q.size, q.envelope, q.received_at, q.attempts, q.worker, q.raw) for q in listed] == [
        (f"q{n}", len(raw), '{"rcpt": ["box"]}', received[n], 0, None, None) for n, raw in enumerate(raws)]
    assert [q.seq for q in listed] == sorted(q.seq for q in listed) and await store.count_inbound() == 3
    assert [q.id for q in await store.list_inbound(limit=2)] == ["q0", "q1"]
    first = await store.claim_inbound("A", 2, 30)
    assert [(q.id, q.raw, q.attempts, q.worker, q.lease_until) for q in first] == [
        ("q0", raws[0], 1, "A", clock.now + 30), ("q1", raws[1], 1, "A", clock.now + 30)]
    assert [q.id for q in await store.claim_inbound("B", 5, 30)] == ["q2"]  # the claimed ones are not offered
    assert await store.claim_inbound("B", 5, 30) == []
    stored, events = await store.deliver_inbound(InboundDelivery("q0", "A", [email_of("e0", raws[0], task=new_task("t0"))]))
    assert stored == ["e0"] and [(e.kind, e.session_id) for e in events] == [("email", "s1")]
    [email] = (await store.get_emails(["e0"])).values()
    assert (email.received_at, email.size, email.sha256) == (received[0], len(raws[0]), hashlib.sha256(raws[0]).hexdigest())
    assert await store.get_raw(email.sha256) == raws[0]
    assert (await store.get_task("t0")) is not None and await store.count_inbound() == 2
    # done: a second delivery of the same entry is refused and stores nothing
    with pytest.raises(LeaseLost):
        await store.deliver_inbound(InboundDelivery("q0", "A", [email_of("e0bis", raws[0])]))
    assert set(await store.get_emails(["e0", "e0bis"])) == {"e0"}
    # the same message queued twice to the same mailbox: stored once (the second is a duplicate)
    await store.enqueue_inbound(queued("q3", raws[0]))
    [again] = await store.claim_inbound("A", 5, 30)
    assert again.id == "q3"
    assert await store.deliver_inbound(InboundDelivery("q3", "A", [email_of("e3", raws[0])])) == ([], [])
    # every recipient gone: the entry is removed, nothing stored
    assert await store.deliver_inbound(InboundDelivery("q1", "A", [])) == ([], [])
    assert [q.id for q in await store.list_inbound()] == ["q2"]
    assert [e.id for e in await store.list_emails(session_id="s1")] == ["e0"]


async def test_enqueue_checks_its_mailboxes_in_its_own_transaction(store: Store, clock: Clock) -> None:
    """The DATA-time check folded into the enqueue: a message is queued only while one of the
    mailboxes accepted at RCPT still takes mail (its row for that session, the session, not expired);
    several messages in one group are judged each on its own."""
    await store.create_session("s1", "iv", "{}", "{}")
    await store.create_session("s2", "iv", "{}", "{}")
    await store.commit(Changes(mailboxes=[NewMailbox("live", "s1", "", "0", "{}", None),
                                          NewMailbox("soon", "s1", "", "1", "{}", clock.now + 10),
                                          NewMailbox("gone", "s2", "", "0", "{}", None)]))
    await store.delete_session("s2")
    raw = b"Subject: checked\r\n\r\nchecked\r\n"

    def entry(entry_id: str, *boxes: tuple[str, str]) -> NewInbound:
        return NewInbound(entry_id, hashlib.sha256(raw).hexdigest(), raw, "{}", boxes)

    # one group: queued while one mailbox lives; refused when none does (deleted, another session's)
    outcomes = await asyncio.gather(
        store.enqueue_inbound(entry("both", ("gone", "s2"), ("live", "s1"))),
        store.enqueue_inbound(entry("deleted", ("gone", "s2"))),
        store.enqueue_inbound(entry("stolen", ("live", "s2"))),
        store.enqueue_inbound(entry("unknown", ("nobody", "s1"))),
        store.enqueue_inbound(entry("unchecked")))
    assert outcomes == [clock.now, None, None, None, clock.now]
    assert await store.enqueue_inbound(entry("in-time", ("soon", "s1"))) == clock.now
    clock.now += 11
    assert await store.enqueue_inbound(entry("expired", ("soon", "s1"))) is None
    # (the two of one group are queued in the order they reach the store, which gather does not fix)
    assert sorted(q.id for q in await store.list_inbound()) == ["both", "in-time", "unchecked"]
    # the session deleted after RCPT: refused at DATA
    await store.delete_session("s1")
    assert await store.enqueue_inbound(entry("late", ("live", "s1"))) is None
    assert await store.count_inbound() == 3


async def test_big_queued_messages_are_claimed_and_stored_byte_exact(store: Store, clock: Clock) -> None:
    # past 1 MiB the SQLite backend moves the bytes through its blob API, in pieces
    await store.create_session("s1", "iv", "{}", "{}")
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * (5 * 2**12) + b"end\r\n"  # 5 MiB and a bit
    small = b"Subject: small\r\n\r\nsmall\r\n"
    for n, raw in enumerate([big, small, big]):  # the second big one has the same content: stored once
        await store.enqueue_inbound(queued(f"q{n}", raw))
    claimed = await store.claim_inbound("A", 5, 30)
    assert [(q.id, q.raw) for q in claimed] == [("q0", big), ("q1", small), ("q2", big)]
    for n, raw in enumerate([big, small, big]):
        stored, _ = await store.deliver_inbound(InboundDelivery(f"q{n}", "A", [email_of(f"e{n}", raw, box=f"b{n}")]))
        assert stored == [f"e{n}"]
    assert await store.get_raw(hashlib.sha256(big).hexdigest()) == big
    assert await store.get_raw(hashlib.sha256(small).hexdigest()) == small
    assert await store.get_raw(hashlib.sha256(b"none").hexdigest()) is None
    assert await store.count_inbound() == 0


async def test_a_queued_message_whose_claim_expired_is_delivered_by_its_new_holder_only(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    raw = b"Subject: once\r\n\r\nonce\r\n"
    await store.enqueue_inbound(queued("q", raw))
    [held] = await store.claim_inbound("A", 1, 10)
    clock.now += 9
    assert await store.claim_inbound("B", 1, 10) == []  # A's lease still runs
    clock.now += 2
    [taken] = await store.claim_inbound("B", 1, 10)  # A died (or stalled): B takes it over
    assert (taken.id, taken.attempts, taken.worker, taken.raw) == ("q", 2, "B", raw) and held.attempts == 1
    with pytest.raises(LeaseLost):
        await store.deliver_inbound(InboundDelivery("q", "A", [email_of("eA", raw, task=new_task("tA"))]))
    assert await store.get_emails(["eA"]) == {} and await store.get_task("tA") is None
    assert await store.count_inbound() == 1  # A's refused delivery changed nothing
    stored, _ = await store.deliver_inbound(InboundDelivery("q", "B", [email_of("eB", raw, task=new_task("tB"))]))
    assert stored == ["eB"] and await store.count_inbound() == 0
    with pytest.raises(LeaseLost):
        await store.deliver_inbound(InboundDelivery("q", "B", [email_of("eB2", raw)]))
    assert [e.id for e in await store.list_emails(session_id="s1")] == ["eB"]
    assert [t.id for t in await store.list_tasks(session_id="s1")] == ["tB"]


async def test_two_processors_never_both_deliver_one_queued_message(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    raws = [f"Subject: race {n}\r\n\r\nrace\r\n".encode() for n in range(20)]
    for n, raw in enumerate(raws):
        await store.enqueue_inbound(queued(f"q{n}", raw, rcpt=f"box{n}"))
    await store.claim_inbound("A", 20, 10)
    clock.now += 11
    claimed_by_b = await store.claim_inbound("B", 20, 10)
    assert len(claimed_by_b) == 20
    # both deliver every entry at once (the same groups and transactions): each entry is stored by B only
    deliveries = [store.deliver_inbound(InboundDelivery(f"q{n}", worker, [email_of(f"{worker}{n}", raw, box=f"box{n}")]))
                  for n, raw in enumerate(raws) for worker in ("A", "B")]
    outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    for n in range(20):
        a, b = outcomes[2 * n], outcomes[2 * n + 1]
        assert isinstance(a, LeaseLost), a
        assert not isinstance(b, BaseException) and b[0] == [f"B{n}"] and len(b[1]) == 1, b
    assert sorted(e.id for e in await store.list_emails(session_id="s1")) == sorted(f"B{n}" for n in range(20))
    assert await store.count_inbound() == 0


async def test_released_queued_messages_are_offered_again_without_counting_the_attempt(store: Store) -> None:
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * (3 * 2**20 // 256) + b"\r\n"  # written in pieces
    await store.enqueue_inbound(queued("q", big))
    [claimed] = await store.claim_inbound("A", 1, 30)
    assert claimed.raw == big and claimed.size == len(big)
    await store.release_inbound("B", ["q"])  # not B's to give back: nothing changes
    assert [(q.worker, q.attempts) for q in await store.list_inbound()] == [("A", 1)]
    await store.release_inbound("A", ["q"])
    assert [(q.worker, q.attempts, q.lease_until) for q in await store.list_inbound()] == [(None, 0, None)]
    [again] = await store.claim_inbound("B", 1, 30)
    assert (again.worker, again.attempts, again.raw) == ("B", 1, big)
    await store.create_session("s1", "iv", "{}", "{}")
    stored, _ = await store.deliver_inbound(InboundDelivery("q", "B", [email_of("e", big)]))
    assert stored == ["e"] and await store.get_raw(hashlib.sha256(big).hexdigest()) == big


async def test_a_heartbeat_keeps_a_claim_past_its_first_lease(store: Store, clock: Clock) -> None:
    raw = b"Subject: slow\r\n\r\nslow\r\n"
    await store.enqueue_inbound(queued("q", raw))
    await store.enqueue_inbound(queued("r", raw + b"r"))
    [held, other] = await store.claim_inbound("A", 2, 10)
    clock.now += 8
    assert await store.renew_inbound("A", ["q", "nope"], 10) == ["q"]  # r is not renewed
    assert await store.renew_inbound("B", ["q"], 10) == []  # not B's
    clock.now += 8  # past the first lease: only r's expired
    assert [c.id for c in await store.claim_inbound("B", 5, 10)] == ["r"]
    assert [(q.id, q.worker, q.lease_until) for q in await store.list_inbound()] == [
        ("q", "A", clock.now - 8 + 10), ("r", "B", clock.now + 10)]
    assert held.id == "q" and other.id == "r"


async def test_a_dead_processors_claims_are_given_back_at_once_with_their_attempts(store: Store, clock: Clock) -> None:
    for n in range(3):
        await store.enqueue_inbound(queued(f"q{n}", f"Subject: {n}\r\n\r\n{n}\r\n".encode()))
    await store.claim_inbound("dead", 2, 100)
    await store.claim_inbound("alive", 1, 100)
    assert await store.inbound_holders() == ["alive", "dead"]
    assert await store.release_dead_inbound([]) == 0
    assert await store.release_dead_inbound(["dead", "never"]) == 2
    assert await store.inbound_holders() == ["alive"]
    assert [(q.id, q.worker, q.attempts) for q in await store.list_inbound()] == [
        ("q0", None, 1), ("q1", None, 1), ("q2", "alive", 1)]
    taken = await store.claim_inbound("new", 5, 100)  # at once, not after the 100 s lease
    assert [(c.id, c.attempts) for c in taken] == [("q0", 2), ("q1", 2)]


async def test_an_email_with_no_session_is_stored_without_an_event(store: Store) -> None:
    """The operator (postmaster) mailbox: an e-mail with no session, task or event, next to one with."""
    await store.create_session("s1", "iv", "{}", "{}")
    raw = b"Subject: postmaster\r\n\r\nhello\r\n"
    await store.enqueue_inbound(queued("q", raw))
    await store.claim_inbound("A", 1, 10)
    sha = hashlib.sha256(raw).hexdigest()
    lone = NewEmail("pm", "postmaster", "", "<m@x>", f"<m@x>\0{sha}", "{}", "{}", "{}", None, None)
    stored, events = await store.deliver_inbound(InboundDelivery("q", "A", [lone, email_of("e", raw)]))
    assert stored == ["pm", "e"] and [(e.session_id, json.loads(e.payload)) for e in events] == [("s1", {"email": "e"})]
    raw2 = b"Subject: postmaster 2\r\n\r\nhello\r\n"
    sha2 = hashlib.sha256(raw2).hexdigest()
    stored, events = await store.deliver(Delivery(sha2, raw2, [
        NewEmail("pm2", "postmaster", "", "<n@x>", f"<n@x>\0{sha2}", "{}", "{}", "{}", None, None)]))
    assert stored == ["pm2"] and events == []
    assert [(e.id, e.session_id) for e in await store.list_emails(local_part="postmaster")] == [("pm", ""), ("pm2", "")]
    assert await store.get_raw(sha2) == raw2
    assert await store.delete_email("pm2") and await store.get_raw(sha2) is None


async def test_cancel_fails_queued_and_running_tasks_and_refuses_the_workers_finish(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task("t1"), new_task("t2"), new_task("t3")]))
    claimed = await store.claim_tasks("w1", 1, 30, lost_task)
    assert [t.id for t in claimed.tasks] == ["t1"]
    clock.now += 2
    rec, events = await store.cancel_task("t1", lost_task)  # running
    assert (rec.state, rec.error_type, rec.finished_at, rec.lease_until) == ("failed", "Cancelled", clock.now, None)
    assert [e.kind for e in events] == ["task"] and json.loads(events[0].payload)["task"] == "t1"
    assert [e.id for e in await store.list_events("s1")] == [events[0].id]
    with pytest.raises(LeaseLost):
        await store.commit(Changes(finish=TaskFinish("t1", "w1", "succeeded", result='{"value":1}')))
    assert (await store.get_task("t1")).error_type == "Cancelled"  # type: ignore[union-attr]
    rec, _ = await store.cancel_task("t2", lost_task)  # queued: never claimed now
    assert rec.state == "failed" and rec.attempts == 0
    assert [t.id for t in (await store.claim_tasks("w1", 5, 30, lost_task)).tasks] == ["t3"]
    with pytest.raises(MailgateError, match="t2 is failed; only queued and running"):
        await store.cancel_task("t2", lost_task)
    with pytest.raises(NotFound, match="no task 'nope'"):
        await store.cancel_task("nope", lost_task)


async def test_purge_deletes_by_state_and_age_in_batches(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task(f"t{n}") for n in range(5)]))
    for t in (await store.claim_tasks("w", 3, 30, lost_task)).tasks:  # t0..t2 succeed at 1_000_000
        await store.commit(Changes(finish=TaskFinish(t.id, "w", "succeeded")))
    clock.now += 100
    await store.claim_tasks("w", 1, 30, lost_task)
    await store.commit(Changes(finish=TaskFinish("t3", "w", "succeeded")))  # at +100
    assert await store.purge_tasks("succeeded", clock.now - 50, 2) == 2
    assert await store.purge_tasks("succeeded", clock.now - 50, 2) == 1
    assert await store.purge_tasks("succeeded", clock.now - 50, 2) == 0
    assert [t.id for t in await store.list_tasks(state="succeeded")] == ["t3"]
    assert await store.purge_tasks("queued", None, 10) == 1
    assert [t.id for t in await store.list_tasks()] == ["t3"]


async def test_delete_email_keeps_raw_bytes_another_email_shares(store: Store) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    raw = b"Subject: shared\r\n\r\nhi\r\n"
    sha = hashlib.sha256(raw).hexdigest()
    emails = [NewEmail(f"e{n}", f"box{n}", "s1", "<m@x>", f"<m@x>\0{sha}", "{}", "{}", "{}", None,
                       NewEvent("s1", "email", "{}")) for n in range(2)]
    await store.deliver(Delivery(sha, raw, emails))
    assert await store.delete_email("e0") is True
    assert await store.delete_email("e0") is False
    assert list(await store.get_emails(["e0", "e1"])) == ["e1"]
    assert await store.get_raw(sha) == raw
    assert await store.delete_email("e1") is True
    assert await store.get_raw(sha) is None


async def test_overview_counts_ages_and_size(store: Store, clock: Clock) -> None:
    empty = await store.overview(clock.now)
    assert empty.tasks == {"queued": (0, None), "running": (0, None), "succeeded": (0, None), "failed": (0, None)}
    await store.create_session("s1", "iv", "{}", "{}")
    await store.commit(Changes(new_tasks=[new_task("t1")]))
    clock.now += 10
    await store.commit(Changes(new_tasks=[new_task("t2")], mailboxes=[NewMailbox("box", "s1", "", "", "{}", None)]))
    raw = b"Subject: x\r\n\r\nx\r\n"
    sha = hashlib.sha256(raw).hexdigest()
    await store.deliver(Delivery(sha, raw, [NewEmail("e1", "box", "s1", None, sha, "{}", "{}", "{}", None,
                                                     NewEvent("s1", "email", "{}"))]))
    seen = await store.overview(clock.now - 5)
    assert seen.tasks["queued"] == (2, 1_000_000.0)
    assert (seen.sessions, seen.mailboxes, seen.emails, seen.emails_since) == (1, 1, 1, 1)
    assert (await store.overview(clock.now + 1)).emails_since == 0
    assert seen.size_bytes > 0


async def test_backup_and_restore_or_name_the_tool(store: Store, tmp_path: Path) -> None:
    await store.create_session("s1", "iv", '{"a":1}', "{}")
    target = str(tmp_path / "backup.db")
    steps: list[tuple[int, int]] = []
    try:
        assert await store.backup(target, lambda done, total: steps.append((done, total))) > 0
    except MailgateError as exc:  # a backend whose database has its own tools (pg_dump) names them
        assert "own tools" in str(exc) and target in str(exc)
        with pytest.raises(MailgateError, match="own tools"):
            await store.restore(target)
        return
    assert steps and steps[-1][0] == steps[-1][1]
    with pytest.raises(MailgateError, match="exists"):
        await store.backup(target)
    await store.create_session("s2", "iv", "{}", "{}")
    await store.delete_session("s1")
    assert await store.restore(target) == store.latest_migration()
    assert [r.id for r in await store.list_sessions()] == ["s1"]
    assert (await store.get_session("s1")).answers == '{"a":1}'  # type: ignore[union-attr]
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(MailgateError, match="not a mailgate SQLite backup"):
        await store.restore(str(tmp_path / "junk.db"))
    assert [r.id for r in await store.list_sessions()] == ["s1"]


async def test_peek_setting_reads_a_setting_without_storing_one(store: Store) -> None:
    assert await store.peek_setting("peeked") is None
    assert await store.peek_setting("peeked") is None  # peeking stored nothing
    assert await store.setting("peeked", "first") == "first"
    assert await store.setting("peeked", "second") == "first"
    assert await store.peek_setting("peeked") == "first"


async def test_every_store_method_is_covered() -> None:
    """Each abstract method of Store is called as ``store.<name>(`` (or on a store this module opens),
    here or in another contract module (``test_contract_*.py``: automations, events)."""
    source = inspect.getsource(sys.modules[__name__]) + "".join(
        p.read_text() for p in sorted(Path(__file__).parent.glob("test_contract_*.py")))
    methods = sorted(Store.__abstractmethods__)
    assert len(methods) >= 57
    missing = [name for name in methods
               if not re.search(rf"\b(store|first|second|s)\.{name}\(", source.replace("test_every_store_method_is_covered", ""))]
    assert not missing, f"Store methods without a contract test: {missing}"
