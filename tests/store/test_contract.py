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

import pytest

from mailgate.core.background import lost_task_events
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
    NewEmail,
    NewEvent,
    NewMailbox,
    NewTask,
    SessionSave,
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
    claimed = (await store.claim_tasks("w1", 3, lease=30, lost=lost_task_events)).tasks
    assert [t.id for t in claimed] == ["t0", "t1", "t2"]
    assert all(t.state == "running" and t.worker == "w1" and t.attempts == 1 for t in claimed)
    assert [t.id for t in (await store.claim_tasks("w2", 10, lease=30, lost=lost_task_events)).tasks] == ["t3", "t4"]
    assert (await store.claim_tasks("w3", 10, lease=30, lost=lost_task_events)).tasks == ()
    clock.now += 20
    await store.heartbeat("w1", ["t0"], lease=30)
    clock.now += 15  # t1, t2 (w1, no heartbeat) and t3, t4 (w2) expired; t0 renewed
    again = (await store.claim_tasks("w3", 10, lease=30, lost=lost_task_events)).tasks
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
        assert [t.id for t in (await store.claim_tasks("w", 1, lease=5, lost=lost_task_events)).tasks] == ["t1"]
        clock.now += 6  # the worker "died"
    lost = await store.claim_tasks("w", 1, lease=5, lost=lost_task_events)
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
    await store.claim_tasks("w", 1, lease=30, lost=lost_task_events)
    await store.release_tasks("w", ["t1"])
    rec = await store.get_task("t1")
    assert rec is not None and rec.state == "queued" and rec.attempts == 0 and rec.worker is None
    assert [t.id for t in (await store.claim_tasks("w2", 1, lease=30, lost=lost_task_events)).tasks] == ["t1"]


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
    (claimed,) = (await store.claim_tasks("w1", 1, lease=30, lost=lost_task_events)).tasks
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
    assert [t.id for t in (await store.claim_tasks("w", 10, 30, lost=lost_task_events)).tasks] == ["t1"]
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
    assert await first.migrate() == list(range(1, first.latest_migration() + 1))
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


async def test_inactive_session_ids_by_access_time_and_interview(store: Store, clock: Clock) -> None:
    await store.create_session("old-a", "a", "{}", "{}")
    await store.create_session("old-b", "b", "{}", "{}")
    await store.create_session("old-c", "c", "{}", "{}")
    await store.create_session("old-touched", "a", "{}", "{}")
    clock.now += 100
    await store.create_session("new-a", "a", "{}", "{}")
    await store.commit(Changes(save=SessionSave("old-touched", "{}", 1)))  # an access
    await store.commit(Changes(save=SessionSave("old-c", "{}", 1, touch=False)))  # the cron user: no access
    before = clock.now - 50
    assert await store.inactive_session_ids(before, None, [], 10) == ["old-a", "old-b", "old-c"]
    assert await store.inactive_session_ids(before, ["a", "c"], [], 10) == ["old-a", "old-c"]
    assert await store.inactive_session_ids(before, None, ["a"], 10) == ["old-b", "old-c"]
    assert await store.inactive_session_ids(before, None, [], 1) == ["old-a"]
    assert await store.inactive_session_ids(clock.now + 1, ["a"], [], 10) == ["new-a", "old-a", "old-touched"]


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


async def test_every_store_method_is_covered() -> None:
    """Each abstract method of Store is called as ``store.<name>(`` (or on a store this module opens)."""
    source = inspect.getsource(sys.modules[__name__])
    methods = sorted(Store.__abstractmethods__)
    assert len(methods) >= 38
    missing = [name for name in methods
               if not re.search(rf"\b(store|first|second|s)\.{name}\(", source.replace("test_every_store_method_is_covered", ""))]
    assert not missing, f"Store methods without a contract test: {missing}"
