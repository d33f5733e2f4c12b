"""The Store contract for automations (AUTOMATIONS.md §4.2, §4.3): every backend passes it unchanged.

Creation with the database's unique rule, claims with leases, fenced commits through ``Changes``,
messages in order and consumed once, interactions, kill / retry / goto, history deletion, and the
session's deletion taking its automations along. Two stores opened on one database stand for two
processes (each has its own connections and, on SQLite, its own writer).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable

import pytest

from mailgate.errors import (
    AutomationFenced,
    InteractionClosed,
    MailgateError,
    NotFound,
    StoreConflict,
    VersionConflict,
)
from mailgate.store.base import (
    AutomationStart,
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
    NewMessage,
    NewStep,
    NewTask,
    Recheck,
    SessionSave,
    StepUpdate,
    Store,
)
from tests.helpers import wait_until
from tests.store.conftest import Clock

pytestmark = pytest.mark.asyncio


def auto(automation_id: str, cls: str = "app.Flow", *, session: str | None = None, unique: str | None = None,
         data: str = '{"n":0}') -> NewAutomation:
    return NewAutomation(automation_id, cls, session, data, key=f"key-{automation_id}", owner='{"id":"u1"}',
                         unique_key=unique)


def run(automation_id: str, version: int, holder: str | None, **kw: object) -> Changes:
    return Changes(automations=[AutomationUpdate(automation_id, version, holder, **kw)])  # type: ignore[arg-type]


async def test_create_with_first_steps_and_messages_then_read_it_back(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    rec, created = await store.create_automation(
        auto("a1", session="s1"), [NewStep("st1", "start")],
        [NewMessage("m1", "hello", token="t", data='{"x":1}'), NewMessage("m2", "again")])
    assert created is True
    assert (rec.id, rec.cls, rec.session_id, rec.state, rec.version, rec.data) == ("a1", "app.Flow", "s1", "running", 1, '{"n":0}')
    assert rec.wake_at == clock.now and rec.claim_holder is None and rec.finished_at is None
    assert await store.get_automation("a1") == rec
    assert await store.get_automation_by_key("key-a1") == rec
    assert await store.get_automation("nope") is None and await store.get_automation_by_key("nope") is None
    [step] = await store.automation_history("a1")
    assert (step.id, step.node, step.state, step.attempts, step.created_at, step.open) == ("st1", "start", "waiting", 0, clock.now, True)
    msgs = await store.automation_messages("a1")
    assert [(m.id, m.message, m.token, m.data, m.state) for m in msgs] == [
        ("m1", "hello", "t", '{"x":1}', "queued"), ("m2", "again", None, "{}", "queued")]
    with pytest.raises(NotFound, match="no session 'gone'"):
        await store.create_automation(auto("a2", session="gone"))
    assert await store.get_automation("a2") is None


async def test_list_filters_and_pages(store: Store) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    for i in range(5):
        await store.create_automation(auto(f"a{i}", "app.A" if i % 2 else "app.B", session="s1" if i < 2 else None))
    every = await store.list_automations()
    assert [a.id for a in every] == ["a0", "a1", "a2", "a3", "a4"]
    assert [a.id for a in await store.list_automations(cls="app.A")] == ["a1", "a3"]
    assert [a.id for a in await store.list_automations(session_id="s1")] == ["a0", "a1"]
    assert [a.id for a in await store.list_automations(state="failed")] == []
    page = await store.list_automations(limit=2)
    assert [a.id for a in await store.list_automations(after_seq=page[-1].seq, limit=2)] == ["a2", "a3"]


async def test_unique_returns_the_running_one_and_allows_a_new_one_after_it_ends(store: Store) -> None:
    first, created = await store.create_automation(auto("a1", unique="k"))
    assert created
    again, created = await store.create_automation(auto("a2", unique="k"), [NewStep("x", "start")],
                                                   [NewMessage("m1", "ping")])
    assert created is False and again.id == "a1"
    assert await store.get_automation("a2") is None and await store.automation_history("a1") == []
    assert [m.id for m in await store.automation_messages("a1")] == ["m1"]  # delivered to the running one
    # another class, or no unique key: no conflict
    assert (await store.create_automation(auto("a3", "app.Other", unique="k")))[1]
    assert (await store.create_automation(auto("a4")))[1] and (await store.create_automation(auto("a5")))[1]
    # the first one finishes: a new instance may start
    await store.commit(run("a1", first.version, None, state="finished"))
    fresh, created = await store.create_automation(auto("a6", unique="k"))
    assert created and fresh.id == "a6"
    # a duplicate id or key is a refused write, not a silent success
    with pytest.raises(StoreConflict):
        await store.create_automation(auto("a6"))


async def test_an_action_creates_automations_in_its_own_commit(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    await store.create_automation(auto("held", unique="k"))
    result = await store.commit(Changes(
        save=SessionSave("s1", '{"v":2}', 1),
        new_automations=[AutomationStart(auto("a1", session="s1"), [NewStep("st1", "start")]),
                         AutomationStart(auto("a2", unique="k"), [NewStep("st2", "start")], [NewMessage("m1", "email")])],
        messages=[NewMessage("m2", "hello", automation_id="a1")]))  # the rest of the commit sees it
    assert result.version == 2 and list(result.automations) == [("a1", True), ("held", False)]
    a1 = await store.get_automation("a1")
    assert a1 is not None and a1.session_id == "s1" and a1.wake_at == clock.now
    assert [m.id for m in await store.automation_messages("a1")] == ["m2"]
    assert [m.id for m in await store.automation_messages("held")] == ["m1"]  # create_on_message, unique held
    assert await store.get_automation("a2") is None
    # an action whose commit is refused creates nothing
    with pytest.raises(VersionConflict):
        await store.commit(Changes(save=SessionSave("s1", "{}", 1), new_automations=[AutomationStart(auto("a3"))]))
    assert await store.get_automation("a3") is None
    with pytest.raises(NotFound):
        await store.commit(Changes(new_automations=[AutomationStart(auto("a4", session="gone"))]))


async def test_twenty_racing_creates_from_two_stores_give_one_row(make_store: Callable[[Clock], Store], clock: Clock) -> None:
    first, second = make_store(clock), make_store(clock)
    await first.open()
    await first.migrate()
    await second.open()
    try:
        outcomes = await asyncio.gather(*[
            (first if i % 2 else second).create_automation(auto(f"a{i}", "app.Singleton", unique=""))
            for i in range(20)])
        assert sum(created for _, created in outcomes) == 1
        assert len({rec.id for rec, _ in outcomes}) == 1
        assert len(await first.list_automations(cls="app.Singleton")) == 1
    finally:
        await first.close()
        await second.close()


async def test_two_stores_claiming_at_once_never_get_the_same_automation(make_store: Callable[[Clock], Store],
                                                                          clock: Clock) -> None:
    first, second = make_store(clock), make_store(clock)
    await first.open()
    await first.migrate()
    await second.open()
    try:
        for i in range(60):
            await first.create_automation(auto(f"a{i:02}"), [NewStep(f"s{i}", "start")], [NewMessage(f"m{i}", "go")])
        claims = await asyncio.gather(*[(first if i % 2 else second).claim_automations(f"r{i}", 7, lease=30)
                                        for i in range(12)])
        got = [(c.automation.id, c.automation.claim_holder) for claim in claims for c in claim]
        assert len(got) == 60 and len({a for a, _ in got}) == 60  # every one claimed, none twice
        holders = {a: h for a, h in got}
        for i, claim in enumerate(claims):  # the holder each claimer was told is the one stored
            assert all(holders[c.automation.id] == f"r{i}" and [m.id for m in c.messages] == [f"m{int(c.automation.id[1:])}"]
                       for c in claim)
        stored = {a.id: a.claim_holder for a in await second.list_automations()}
        assert stored == holders
    finally:
        await first.close()
        await second.close()


async def test_claim_due_ones_with_lease_heartbeat_release_and_takeover(store: Store, clock: Clock) -> None:
    for i in range(4):
        await store.create_automation(auto(f"a{i}"), [NewStep(f"s{i}", "start")])
    clock.now += 2
    assert await store.automation_backlog() == (4, clock.now - 2)
    later = NewAutomation("late", "app.Flow", None, "{}", "key-late", "{}", wake_at=clock.now + 100)
    await store.create_automation(later, [NewStep("sl", "wait", wake_at=clock.now + 100)])
    await store.create_automation(auto("idle"))  # no step, no message: nothing due
    assert await store.next_wake() == clock.now - 2
    got = await store.claim_automations("r1", 3, lease=30)
    assert [c.automation.id for c in got] == ["a0", "a1", "a2"]
    assert all(c.automation.claim_holder == "r1" and c.automation.claim_until == clock.now + 30 for c in got)
    assert [[s.id for s in c.steps] for c in got] == [["s0"], ["s1"], ["s2"]]
    assert [c.automation.id for c in await store.claim_automations("r2", 10, lease=30)] == ["a3"]
    assert await store.claim_automations("r3", 10, lease=30) == []  # claimed ones are skipped
    clock.now += 20
    assert await store.heartbeat_automations("r1", ["a0", "a3"], lease=30) == ["a0"]  # a3 is r2's
    await store.release_automations("r2", ["a3"], wake_at=clock.now + 5)  # a back-off
    clock.now += 15  # r1's a1, a2 lapsed; a0 renewed; a3 due again
    taken = await store.claim_automations("r3", 10, lease=30)
    assert sorted(c.automation.id for c in taken) == ["a1", "a2", "a3"]
    assert await store.automation_backlog() == (4, clock.now - 37)  # a0..a3 (claimed or not), not "late" yet
    clock.now += 100  # every claim lapsed; "late" is due now
    assert sorted(c.automation.id for c in await store.claim_automations("r4", 10, lease=30)) == ["a0", "a1", "a2", "a3", "late"]
    assert await store.next_wake() is not None
    await store.heartbeat_automations("r4", [], lease=30)
    await store.release_automations("r4", [])


async def test_fenced_commit_applies_everything_at_once(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    rec, _ = await store.create_automation(auto("a1", session="s1"), [NewStep("st1", "start")], [NewMessage("m1", "go")])
    await store.create_automation(auto("a2"))
    [claim] = await store.claim_automations("r1", 10, lease=30)
    assert [m.id for m in claim.messages] == ["m1"]
    clock.now += 1
    due = clock.now + 3600
    result = await store.commit(Changes(
        save=SessionSave("s1", '{"v":2}', 1, touch=False),
        events=[NewEvent("s1", "automation", '{"id":"a1"}')],
        new_tasks=[NewTask("t1", "s1", "iv", "act", "{}", "{}", None, 3, automation_id="a1")],
        automations=[AutomationUpdate(
            "a1", rec.version, "r1", data='{"n":1}', wake_at=due,
            steps_finished=[StepUpdate("st1", "done", message="OK", result='{"value":1}', attempts=1)],
            steps_opened=[NewStep("st2", "wait", previous_id="st1", wake_at=due)],
            messages_done=[MessageDone("m1", result='"received"')],
            journal=[JournalEntry("st1", 0, "send_email", '{"message_id":"<x@y>"}')])],
        messages=[NewMessage("m2", "hello", automation_id="a2")]))
    assert result.version == 2 and len(result.events) == 1
    after = await store.get_automation("a1")
    assert after is not None and after.version == 2 and after.data == '{"n":1}' and after.wake_at == due
    assert after.claim_holder is None and after.claim_until is None and after.updated_at == clock.now
    steps = await store.automation_history("a1")
    assert [(s.id, s.state, s.message, s.previous_id) for s in steps] == [("st1", "done", "OK", None), ("st2", "waiting", None, "st1")]
    assert steps[0].finished_at == clock.now and steps[0].started_at == clock.now and steps[0].result == '{"value":1}'
    [m1] = await store.automation_messages("a1")
    assert (m1.state, m1.result, m1.delivered_at) == ("delivered", '"received"', clock.now)
    journal = await store.journal_entry("st1", 0)
    assert journal is not None and journal.kind == "send_email" and journal.created_at == clock.now
    assert await store.journal_entry("st1", 1) is None
    task = await store.get_task("t1")
    assert task is not None and task.state == "queued" and task.automation_id == "a1"
    [claimed_task] = (await store.claim_tasks("w1", 5, lease=30, lost=lambda rec: Changes())).tasks
    assert claimed_task.automation_id == "a1"  # the worker knows whom to tell when it ends
    other = await store.get_automation("a2")
    assert other is not None and other.wake_at == clock.now  # the message made it due now
    assert [m.state for m in await store.automation_messages("a2")] == ["queued"]
    assert await store.next_wake() == clock.now
    # the same version again: refused whole, nothing of it applied
    with pytest.raises(AutomationFenced, match="version 2, not 1"):
        await store.commit(Changes(save=SessionSave("s1", '{"v":3}', 2), events=[NewEvent("s1", "x", "{}")],
                                   automations=[AutomationUpdate("a1", 1, None, data='{"n":99}')]))
    assert (await store.get_session("s1")).answers == '{"v":2}'  # type: ignore[union-attr]
    assert len(await store.list_events("s1")) == 1
    # a step of another automation, a message consumed twice: refused
    with pytest.raises(NotFound):
        await store.commit(run("a1", 2, None, steps_finished=[StepUpdate("nope", "done")]))
    with pytest.raises(AutomationFenced, match="not queued"):
        await store.commit(run("a1", 2, None, messages_done=[MessageDone("m1")]))
    assert (await store.get_automation("a1")).version == 2  # type: ignore[union-attr]


async def test_a_late_commit_after_a_takeover_is_refused_with_nothing_applied(store: Store, clock: Clock) -> None:
    rec, _ = await store.create_automation(auto("a1"), [NewStep("st1", "start")], [NewMessage("m1", "go")])
    [first] = await store.claim_automations("r1", 1, lease=30)
    clock.now += 31  # r1 paused past its lease (SIGSTOP)
    [second] = await store.claim_automations("r2", 1, lease=30)
    assert second.automation.id == "a1" and [m.id for m in second.messages] == ["m1"]
    late = run("a1", first.automation.version, "r1", data='{"by":"r1"}', messages_done=[MessageDone("m1")],
               steps_finished=[StepUpdate("st1", "done", message="OK")])
    with pytest.raises(AutomationFenced, match="claimed by r2, not r1"):
        await store.commit(late)
    # r2 commits; r1's retry of the same commit is refused by the version now
    await store.commit(run("a1", rec.version, "r2", data='{"by":"r2"}', messages_done=[MessageDone("m1")],
                           steps_finished=[StepUpdate("st1", "done", message="OK")]))
    with pytest.raises(AutomationFenced, match="version 2, not 1"):
        await store.commit(late)
    final = await store.get_automation("a1")
    assert final is not None and final.data == '{"by":"r2"}' and final.version == 2
    assert [(m.state, m.delivered_at) for m in await store.automation_messages("a1")] == [("delivered", clock.now)]
    # a commit against a killed automation is refused as well
    assert await store.kill_automation("a1") is True
    with pytest.raises(AutomationFenced, match="no longer exists"):
        await store.commit(run("a1", 2, None))


async def test_messages_in_order_consumed_once_and_dropped_when_ended(store: Store, clock: Clock) -> None:
    rec, _ = await store.create_automation(auto("a1"))
    assert await store.next_wake() is None  # nothing due: no step, no message
    sent = [await store.enqueue_message(NewMessage(f"m{i}", "tick", automation_id="a1", data=f'{{"i":{i}}}')) for i in range(3)]
    assert [m.state for m in sent] == ["queued"] * 3 and sent[0].seq < sent[1].seq < sent[2].seq
    assert (await store.get_automation("a1")).wake_at == clock.now  # type: ignore[union-attr]
    [claim] = await store.claim_automations("r1", 1, lease=30)
    assert [m.id for m in claim.messages] == ["m0", "m1", "m2"]
    # a message arriving during the run keeps it due after the commit (whatever the runner computed)
    clock.now += 1
    await store.enqueue_message(NewMessage("m3", "tick", automation_id="a1"))
    await store.commit(run("a1", rec.version, "r1", wake_at=None, messages_done=[MessageDone(m.id) for m in claim.messages]))
    assert (await store.get_automation("a1")).wake_at == clock.now  # type: ignore[union-attr]
    [claim] = await store.claim_automations("r1", 1, lease=30)
    assert [m.id for m in claim.messages] == ["m3"]  # the delivered ones are never handed out again
    # it finishes with a message queued meanwhile: that one is dropped; later ones are stored dropped
    await store.enqueue_message(NewMessage("m4", "tick", automation_id="a1"))
    await store.commit(run("a1", rec.version + 1, "r1", state="finished", messages_done=[MessageDone("m3")]))
    ended = await store.get_automation("a1")
    assert ended is not None and ended.state == "finished" and ended.finished_at == clock.now and ended.wake_at is None
    late = await store.enqueue_message(NewMessage("m5", "tick", automation_id="a1"))
    assert late.state == "dropped"
    assert (await store.enqueue_message(NewMessage("m6", "tick", automation_id="nobody"))).state == "dropped"
    assert [(m.id, m.state) for m in await store.automation_messages("a1")] == [
        ("m0", "delivered"), ("m1", "delivered"), ("m2", "delivered"), ("m3", "delivered"), ("m4", "dropped"), ("m5", "dropped")]
    with pytest.raises(MailgateError, match="neither"):
        await store.enqueue_message(NewMessage("m7", "tick"))


async def test_a_threaded_steps_task_done_closes_its_running_step_whatever_the_automations_state(
        store: Store, clock: Clock) -> None:
    """``NewMessage.closes_step``: the task's commit writes the step's outcome if the step is still
    running, also when the automation finished before its threaded task (the message is dropped)."""
    rec, _ = await store.create_automation(auto("a1"), [NewStep("s1", "work", "running"), NewStep("s2", "other", "running"),
                                                        NewStep("s3", "end", "waiting")])
    await store.commit(run("a1", rec.version, None, state="finished",
                           steps_finished=[StepUpdate("s3", "done", "OK")]))
    clock.now += 5
    done = StepUpdate("s1", "done", "OK", result='{"x":42}')
    await store.commit(Changes(messages=[NewMessage("m1", "task_done", automation_id="a1", token="t", closes_step=done)]))
    failed = StepUpdate("s2", "failed", "ValueError('no')", error_type="ValueError", error_message="no", error_trace="tb")
    dropped = await store.enqueue_message(NewMessage("m2", "task_done", automation_id="a1", token="t", closes_step=failed))
    assert dropped.state == "dropped"
    rows = {s.id: s for s in await store.automation_history("a1")}
    assert (rows["s1"].state, rows["s1"].message, rows["s1"].result, rows["s1"].finished_at) == ("done", "OK", '{"x":42}', clock.now)
    assert (rows["s2"].state, rows["s2"].error_type, rows["s2"].error_message, rows["s2"].error_trace) == (
        "failed", "ValueError", "no", "tb")
    # a step no longer running is never overwritten (a second task_done, or the runner closed it)
    await store.commit(Changes(messages=[NewMessage("m3", "task_done", automation_id="a1", token="t",
                                                    closes_step=StepUpdate("s1", "failed", "late"))]))
    assert (await store.get_automation_step("s1")).state == "done"  # type: ignore[union-attr]


async def test_a_task_the_store_fails_itself_tells_its_automation_and_closes_its_threaded_step(
        store: Store, clock: Clock) -> None:
    """Worker lost on every attempt, or cancelled: ``lost_task`` commits the task's ``task_done`` to
    the automation that started it (due now), with the threaded step's failure."""
    from mailgate.core import answers as codec
    from mailgate.core.automation_rows import THREADED_ACTION
    from mailgate.core.background import lost_task

    await store.create_session("s1", "iv", "{}", "{}")
    rec, _ = await store.create_automation(auto("a1", session="s1"), [NewStep("st1", "work", "running"),
                                                                      NewStep("st2", "job", "running"),
                                                                      NewStep("st3", "wait", "waiting", wake_at=clock.now + 1e6)])

    def threaded(task_id: str, step_id: str) -> NewTask:
        return NewTask(task_id, "s1", "iv", THREADED_ACTION, codec.encode_value({"step": step_id, "node": "work"}), "{}",
                       None, 1, automation_id="a1")

    await store.commit(Changes(new_tasks=[threaded("t1", "st1"), threaded("t2", "st2")]))
    assert [t.id for t in (await store.claim_tasks("w", 1, lease=5, lost=lost_task)).tasks] == ["t1"]
    clock.now += 6  # the worker "died" on its only attempt
    claim = await store.claim_tasks("w", 1, lease=5, lost=lost_task)
    assert [t.id for t in claim.tasks] == ["t2"] and [e.kind for e in claim.events] == ["task"]
    await store.cancel_task("t2", lost_task)
    steps = {s.id: s for s in await store.automation_history("a1")}
    assert (steps["st1"].state, steps["st1"].error_type) == ("failed", "WorkerLost")
    assert (steps["st2"].state, steps["st2"].error_type) == ("failed", "Cancelled")
    assert [(m.message, m.token, m.state) for m in await store.automation_messages("a1")] == [
        ("task_done", THREADED_ACTION, "queued"), ("task_done", THREADED_ACTION, "queued")]
    due = (await store.get_automation("a1")).wake_at  # type: ignore[union-attr]
    assert due is not None and due <= clock.now  # due: its runner hears of both at once


async def test_broadcasts_queue_and_are_consumed_in_a_commit(store: Store) -> None:
    rec, _ = await store.create_automation(auto("a1", "app.B"))
    b = await store.enqueue_message(NewMessage("b1", "news", broadcast_class="app.B", data='{"v":1}'))
    assert b.state == "queued" and b.automation_id is None
    assert [m.id for m in await store.queued_broadcasts()] == ["b1"]
    await store.commit(run("a1", rec.version, None, messages_done=[MessageDone("b1", result='["received"]')]))
    assert await store.queued_broadcasts() == []


async def test_a_broadcast_that_reached_no_one_is_stored_dropped(store: Store, clock: Clock) -> None:
    await store.enqueue_message(NewMessage("b1", "news", broadcast_class="app.B"))
    await store.enqueue_message(NewMessage("b2", "news", broadcast_class="app.B"))
    clock.now += 1
    await store.commit(Changes(broadcasts_unreached=["b1"]))
    await store.commit(Changes(broadcasts_unreached=["b1"]))  # a second runner's commit changes nothing
    b1 = await store.get_automation_message("b1")
    assert b1 is not None and (b1.state, b1.delivered_at) == ("dropped", clock.now)
    assert [m.id for m in await store.queued_broadcasts()] == ["b2"]


async def test_open_interactions_and_submit(store: Store, clock: Clock) -> None:
    rec, _ = await store.create_automation(auto("a1"), [
        NewStep("f1", "approve", state="interaction", assignee_privileges='["caseworker"]'),
        NewStep("f2", "mine", state="interaction", assignee_user="u7"),
        NewStep("f3", "both", state="interaction", assignee_user="u7", assignee_privileges='["caseworker", "boss"]'),
        NewStep("w1", "wait")])
    ids = lambda pairs: sorted(s.id for _, s in pairs)  # noqa: E731
    assert ids(await store.open_interactions("u1", ["caseworker"])) == ["f1"]
    assert ids(await store.open_interactions("u7", [])) == ["f2"]
    assert ids(await store.open_interactions("u7", ["caseworker", "boss"])) == ["f1", "f2", "f3"]
    assert ids(await store.open_interactions("u1", ["admin"])) == ["f1", "f2", "f3"]
    [(owner, step)] = await store.open_interactions("u1", ["caseworker"])
    assert owner.id == "a1" and step.assignee_privileges == '["caseworker"]'
    with pytest.raises(AutomationFenced):
        await store.submit_interaction("a1", "f1", rec.version + 5, submitted_by='{"id":"u1"}', data="{}")
    clock.now += 2
    after = await store.submit_interaction("a1", "f1", rec.version, submitted_by='{"id":"u1"}',
                                           data='{"approve":{"ok":true}}', result='{"ok":true}')
    assert after.version == rec.version + 1 and after.wake_at == clock.now and after.data == '{"approve":{"ok":true}}'
    step = next(s for s in await store.automation_history("a1") if s.id == "f1")
    assert (step.state, step.message, step.submitted_by, step.finished_at) == ("done", "OK", '{"id":"u1"}', clock.now)
    assert await store.get_automation_step("f1") == step  # one step by its id, whatever its state
    assert await store.get_automation_step("nope") is None
    with pytest.raises(InteractionClosed):  # the second submit
        await store.submit_interaction("a1", "f1", after.version, submitted_by='{"id":"u2"}', data="{}")
    with pytest.raises(InteractionClosed):  # not an interaction
        await store.submit_interaction("a1", "w1", after.version, submitted_by="{}", data="{}")
    with pytest.raises(NotFound):
        await store.submit_interaction("a1", "nope", after.version, submitted_by="{}", data="{}")
    assert ids(await store.open_interactions("u1", ["caseworker"])) == []
    await store.commit(run("a1", after.version, None, state="finished"))
    assert await store.open_interactions("u7", ["admin"]) == []  # an ended automation offers nothing


async def test_kill_retry_and_goto(store: Store, clock: Clock) -> None:
    rec, _ = await store.create_automation(auto("a1"), [NewStep("st1", "start")], [NewMessage("m1", "go")])
    await store.commit(run("a1", rec.version, None, state="failed", steps_finished=[StepUpdate(
        "st1", "failed", message="ValueError('x')", error_type="ValueError", error_message="x", error_trace="Traceback", attempts=1)],
        journal=[JournalEntry("st1", 0, "send_email", "{}")]))
    failed = await store.get_automation("a1")
    assert failed is not None and failed.state == "failed" and failed.wake_at is None
    with pytest.raises(MailgateError, match="only failed"):
        await store.retry_automation("nope") if False else await store.retry_automation(
            (await store.create_automation(auto("a2")))[0].id)
    with pytest.raises(NotFound):
        await store.retry_automation("nope")
    clock.now += 5
    again = await store.retry_automation("a1")
    assert again.state == "running" and again.wake_at == clock.now and again.version == failed.version + 1 and again.finished_at is None
    [step] = await store.automation_history("a1")
    assert step.state == "waiting" and step.attempts == 0 and step.error_type == "ValueError"  # the error stays for show
    moved = await store.goto_automation("a1", "other", "st2")
    assert moved.version == again.version + 1 and moved.wake_at == clock.now
    assert [(s.id, s.state, s.message) for s in await store.automation_history("a1")] == [
        ("st1", "skipped", "goto other"), ("st2", "waiting", None)]
    with pytest.raises(NotFound):
        await store.goto_automation("nope", "x", "st9")
    assert await store.kill_automation("a1") is True
    assert await store.kill_automation("a1") is False
    assert await store.get_automation("a1") is None and await store.automation_history("a1") == []
    assert await store.automation_messages("a1") == [] and await store.journal_entry("st1", 0) is None
    await store.commit(run("a2", 1, None, state="finished"))
    with pytest.raises(MailgateError, match="finished"):
        await store.goto_automation("a2", "x", "st9")


async def test_retry_refused_beside_a_running_unique_twin(store: Store) -> None:
    rec, _ = await store.create_automation(auto("a1", unique="k"))
    await store.commit(run("a1", rec.version, None, state="failed"))
    await store.create_automation(auto("a2", unique="k"))
    with pytest.raises(MailgateError, match="same unique values"):
        await store.retry_automation("a1")


async def test_delete_history_counts_and_counts_by_state(store: Store, clock: Clock) -> None:
    for i, state in enumerate(["finished", "failed", "killed", "running", "finished"]):
        rec, _ = await store.create_automation(auto(f"a{i}"), [NewStep(f"a{i}-1", "start"), NewStep(f"a{i}-2", "next")])
        await store.commit(run(f"a{i}", rec.version, None, state=state,
                               journal=[JournalEntry(f"a{i}-1", 0, "send_email", "{}")]))
        if i == 3:
            clock.now += 1000
    await store.enqueue_message(NewMessage("b1", "news", broadcast_class="app.Flow"))
    await store.enqueue_message(NewMessage("b2", "news", broadcast_class="app.Flow"))
    await store.commit(run("a3", 2, None, messages_done=[MessageDone("b1")]))
    await store.enqueue_message(NewMessage("m1", "tick", automation_id="gone"))
    await store.enqueue_message(NewMessage("m2", "tick", automation_id="a3"))
    clock.now += 1
    assert await store.count_automations() == {"running": 1, "finished": 2, "failed": 1, "killed": 1}
    assert await store.delete_automation_history(clock.now - 500) == (3, 6)  # a0..a2: ended before
    assert [m.id for m in await store.automation_messages("gone")] == ["m1"]  # sent after "before"
    assert await store.journal_entry("a0-1", 0) is None and await store.journal_entry("a3-1", 0) is not None
    assert [a.id for a in await store.list_automations()] == ["a3", "a4"]
    assert await store.delete_automation_history(clock.now + 1) == (1, 2)  # a4; the running a3 stays
    assert [m.id for m in await store.queued_broadcasts()] == ["b2"]  # b1, consumed, went; b2 waits
    assert await store.automation_messages("gone") == []  # dropped for an automation that is gone
    assert [m.id for m in await store.automation_messages("a3")] == ["m2"]  # a running one's stay
    assert await store.count_automations() == {"running": 1, "finished": 0, "failed": 0, "killed": 0}


async def test_deleting_a_session_deletes_its_automations(store: Store) -> None:
    for sid in ("s1", "s2", "s3"):
        await store.create_session(sid, "iv", "{}", "{}")
        await store.create_automation(auto(f"a-{sid}", session=sid), [NewStep(f"st-{sid}", "start")],
                                      [NewMessage(f"m-{sid}", "go")])
    await store.create_automation(auto("free"))
    rec = await store.get_automation("a-s1")
    assert rec is not None
    await store.commit(run("a-s1", rec.version, None, journal=[JournalEntry("st-s1", 0, "send_email", "{}")]))
    assert await store.delete_session("s1") is True
    await store.commit(Changes(delete_session="s2"))  # an action's exit
    assert await store.get_automation("a-s1") is None and await store.get_automation("a-s2") is None
    assert await store.automation_history("a-s1") == [] and await store.automation_messages("a-s2") == []
    assert await store.journal_entry("st-s1", 0) is None
    assert sorted(a.id for a in await store.list_automations()) == ["a-s3", "free"]


async def test_the_doorbell_rings_for_messages_in_this_process(store: Store) -> None:
    rung: list[int] = []
    store.watch_automations(lambda: rung.append(1))
    await store.create_automation(auto("a1"))
    await wait_until(lambda: rung, what="the ring of a creation")
    rung.clear()
    await store.enqueue_message(NewMessage("m1", "go", automation_id="a1"))
    await wait_until(lambda: rung, what="the ring of a message")


async def test_automation_ids_and_json_travel_unchanged(store: Store) -> None:
    data = json.dumps({"text": "é ✓", "nested": {"list": [1, 2.5, None]}})
    rec, _ = await store.create_automation(auto("a1", data=data), [NewStep("st1", "start", result='{"x":"\\u00e9"}')])
    assert rec.data == data and (await store.automation_history("a1"))[0].result == '{"x":"\\u00e9"}'


async def test_mail_queues_email_messages_with_its_delivery_once(store: Store, clock: Clock) -> None:
    await store.create_session("s1", "iv", "{}", "{}")
    rec, _ = await store.create_automation(auto("a1", session="s1"))
    assert rec.wake_at is None
    raw = b"Subject: reply\r\n\r\nyes\r\n"
    sha = hashlib.sha256(raw).hexdigest()

    def email(email_id: str, message_id: str) -> NewEmail:
        return NewEmail(email_id, "box", "s1", "<r@x>", f"<r@x>\0{sha}", "{}", "{}", "{}", None,
                        NewEvent("s1", "email", "{}"),
                        [NewMessage(message_id, "email", automation_id="a1", token="docs", data='{"email":1}')])

    new, _ = await store.deliver(Delivery(sha, raw, [email("e1", "m1")]))
    assert new == ["e1"] and (await store.get_automation("a1")).wake_at == clock.now  # type: ignore[union-attr]
    new, _ = await store.deliver(Delivery(sha, raw, [email("e2", "m2")]))  # the same message again
    assert new == []
    # through the inbound queue: the message is queued in the transaction that leaves the queue
    await store.enqueue_inbound(NewInbound("q1", hashlib.sha256(b"x").hexdigest(), b"x", "{}"))
    [entry] = await store.claim_inbound("p1", 1, lease=30)
    other = hashlib.sha256(b"x").hexdigest()
    await store.deliver_inbound(InboundDelivery(entry.id, "p1", [NewEmail(
        "e3", "box", "s1", "<q@x>", f"<q@x>\0{other}", "{}", "{}", "{}", None, NewEvent("s1", "email", "{}"),
        [NewMessage("m3", "email", automation_id="a1", token="docs")])]))
    assert [(m.id, m.token, m.state) for m in await store.automation_messages("a1")] == [
        ("m1", "docs", "queued"), ("m3", "docs", "queued")]


async def test_a_commit_mid_run_keeps_the_claim_and_the_due_time(store: Store, clock: Clock) -> None:
    rec, _ = await store.create_automation(auto("a1"), [NewStep("st1", "start")])
    [claim] = await store.claim_automations("r1", 1, lease=30)
    # right after send_email: the journal row, the claim kept, the step still running
    await store.commit(run("a1", rec.version, "r1", keep_claim=True,
                           steps_finished=[StepUpdate("st1", "running", attempts=1)],
                           journal=[JournalEntry("st1", 0, "send_email", '{"message_id":"<1@x>"}')]))
    mid = await store.get_automation("a1")
    assert mid is not None and mid.claim_holder == "r1" and mid.wake_at == claim.automation.wake_at
    assert await store.claim_automations("r2", 1, lease=30) == []  # still r1's
    clock.now += 31  # r1 died: its lease lapses and the automation is due again
    [again] = await store.claim_automations("r2", 1, lease=30)
    assert again.automation.version == rec.version + 1 and [(s.id, s.attempts) for s in again.steps] == [("st1", 1)]
    journal = await store.journal_entry("st1", 0)
    assert journal is not None and journal.result == '{"message_id":"<1@x>"}'  # the re-run reads it, sends nothing
    await store.commit(run("a1", again.automation.version, "r2", state="finished",
                           steps_finished=[StepUpdate("st1", "done", message="OK", attempts=2)],
                           journal=[JournalEntry("st1", 0, "send_email", '{"message_id":"<2@x>"}')]))
    assert (await store.journal_entry("st1", 0)).result == '{"message_id":"<1@x>"}'  # type: ignore[union-attr]


async def test_rechecks_write_only_the_due_time_fenced_and_keep_a_new_message_due(store: Store, clock: Clock) -> None:
    for i in range(5):
        await store.create_automation(auto(f"a{i}", data=f'{{"n":{i}}}'), [NewStep(f"s{i}", "wait")])
    claimed = {c.automation.id: c.automation for c in await store.claim_automations("r1", 5, lease=30)}
    assert sorted(claimed) == ["a0", "a1", "a2", "a3", "a4"]
    before = {i: await store.get_automation(i) for i in claimed}
    await store.enqueue_message(NewMessage("m1", "ping", automation_id="a2"))  # arrives during the run
    clock.now += 1
    # a3 moved on meanwhile (another version); a4 was taken over by r2 after r1's lease lapsed
    await store.commit(run("a3", claimed["a3"].version, "r1", keep_claim=True))
    await store.release_automations("r1", ["a4"])
    await store.claim_automations("r2", 5, lease=30)
    done = await store.recheck_automations("r1", [Recheck(i, claimed[i].version, clock.now + 60) for i in claimed])
    assert sorted(done) == ["a0", "a1", "a2"]
    for i in ("a0", "a1"):
        rec = await store.get_automation(i)
        old = before[i]
        assert rec is not None and old is not None
        assert (rec.wake_at, rec.claim_holder, rec.claim_until) == (clock.now + 60, None, None)
        assert (rec.version, rec.data, rec.updated_at, rec.state) == (old.version, old.data, old.updated_at, "running")
        assert [(s.id, s.state, s.wake_at) for s in await store.automation_history(i)] == [
            (f"s{i[1]}", "waiting", None)]  # the steps are not written
    a2 = await store.get_automation("a2")
    assert a2 is not None and a2.wake_at == clock.now and a2.claim_holder is None  # its message keeps it due
    a3, a4 = await store.get_automation("a3"), await store.get_automation("a4")
    assert a3 is not None and a3.version == claimed["a3"].version + 1 and a3.wake_at != clock.now + 60
    assert a4 is not None and a4.claim_holder == "r2"
    assert await store.next_wake() == clock.now - 1  # a3 and a4 kept theirs; a2 is due now, a0 and a1 later
    assert [c.automation.id for c in await store.claim_automations("r3", 5, lease=30)] == ["a2"]
    assert await store.recheck_automations("r1", []) == []


async def test_one_message_by_id_whatever_its_state(store: Store) -> None:
    await store.create_automation(auto("a1"), [NewStep("st1", "start")])
    await store.enqueue_message(NewMessage("b1", "news", broadcast_class="app.Flow", token="t", data='{"x":1}',
                                           sender='{"user":"u"}'))
    await store.enqueue_message(NewMessage("b1.1", "news", automation_id="a1", token="t", sender='{"broadcast":"b1"}'))
    found = await store.get_automation_message("b1")
    assert found is not None
    assert (found.id, found.broadcast_class, found.token, found.data, found.sender, found.state) == (
        "b1", "app.Flow", "t", '{"x":1}', '{"user":"u"}', "queued")
    [claim] = await store.claim_automations("r1", 1, lease=30)
    await store.commit(run("a1", claim.automation.version, "r1",
                           messages_done=[MessageDone("b1.1", "delivered", '"ok"')]))
    hop = await store.get_automation_message("b1.1")
    assert hop is not None and (hop.automation_id, hop.state, hop.result, hop.sender) == (
        "a1", "delivered", '"ok"', '{"broadcast":"b1"}')
    assert await store.get_automation_message("nope") is None
