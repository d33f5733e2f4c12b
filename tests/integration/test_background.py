"""Background actions end to end in one process: real SQLite file, real worker pool."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate.core.context import User
from mailgate.core.runtime import Runtime
from mailgate.core.tasks import Task
from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import (
    ActionError,
    AnswersError,
    BudgetExceeded,
    LeaseTimeout,
    UnknownAction,
    UnknownInterview,
)
from mailgate.store.base import Changes, SessionSave
from mailgate.store.sqlite.backend import SqliteStore
from tests.helpers import make_config, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio


async def start_task(daemon: Daemon, interview: str, start_args: dict[str, Any], timeout: float = 10) -> tuple[str, Task]:
    runtime = rt(daemon)
    session = await runtime.create_session(interview)
    await runtime.run_action(session.id, "start", start_args)
    task = (await runtime.get_answers(session.id))["the_task"]
    assert isinstance(task, Task)
    assert await task.wait_async(timeout), f"task {task.id} did not finish"
    return session.id, task


async def screen(daemon: Daemon, session_id: str) -> str | None:
    return (await rt(daemon).run_action(session_id, "screen")).text


async def commands(daemon: Daemon, session_id: str) -> list[dict[str, Any]]:
    events = await rt(daemon).store.list_events(session_id)
    return [json.loads(e.payload) for e in events if e.kind == "command"]


# -- the demo interviews ---------------------------------------------------------------------------
async def test_background_action_demo(daemon: Daemon) -> None:
    sid, task = await start_task(daemon, "background_action", {"value_to_add": 2})
    assert await task.get_async() == 555
    assert await screen(daemon, sid) == "The answer is 555."


async def test_background_action_with_response_action(daemon: Daemon) -> None:
    sid, task = await start_task(daemon, "background_action_with_response_action", {"value_to_add": 2})
    assert (await rt(daemon).get_answers(sid))["answer"] == 555
    assert await screen(daemon, sid) == "The answer is 555."
    assert not (await task.refresh()).error_type


async def test_background_error_action_demo_success_and_error(daemon: Daemon) -> None:
    sid, task = await start_task(daemon, "background-error-action-demo", {"numerator": 8, "denominator": 2})
    assert await screen(daemon, sid) == "The answer is 4.0."
    sid, task = await start_task(daemon, "background-error-action-demo", {"numerator": 4, "denominator": 0})
    result = await task.refresh()
    assert result.state == "failed" and result.error_type == "ZeroDivisionError"
    assert await screen(daemon, sid) == "There was an error in the division: float division by zero"


async def test_background_error_action_handled(daemon: Daemon) -> None:
    sid, task = await start_task(daemon, "background-error-action", {})
    assert await task.get_async() == "handled_error"
    result = await task.refresh()
    assert result.state == "failed" and result.error_type == "ZeroDivisionError" and result.value == "handled_error"
    text = await screen(daemon, sid)
    assert text == "The task failed: True. Its value: handled_error. The error was a ZeroDivisionError: division by zero."


@pytest.mark.parametrize(
    ("interview", "expected"),
    [
        ("background_action_flash", {"command": "flash", "message": "The answer is 555."}),
        ("background_response_action_flash", {"command": "flash", "message": "The answer is 555."}),
        ("background_action_refresh", {"command": "refresh"}),
        ("background_action_javascript", {"command": "javascript", "script": 'alert("The answer is 555.");'}),
        ("background_action_fields", {"command": "fields", "fields": {"the_sum": 555, "the_product": 1106}}),
    ],
)
async def test_ui_notifications_record_command_events(daemon: Daemon, interview: str, expected: dict[str, Any]) -> None:
    seen: list[Any] = []
    (await daemon.start_feed()).subscribe(lambda e: seen.append(e))
    sid, _ = await start_task(daemon, interview, {"value_to_add": 2})
    assert await commands(daemon, sid) == [expected]

    async def pushed() -> bool:
        return [json.loads(e.payload) for e in seen if e.session_id == sid and e.kind == "command"] == [expected]

    await wait_until(pushed, what="the command event from the feed")


# -- Task handle -------------------------------------------------------------------------------------
async def test_task_handle_from_sync_and_async_handlers(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    await runtime.run_action(session.id, "start", {"task": "with_callback", "kwargs": {"value": 7}})
    task = (await runtime.get_answers(session.id))["the_task"]
    await task.wait_async(10)
    sync = await runtime.run_action(session.id, "task_status")
    assert sync.data == {"ready": True, "failed": False, "value": "saved"}
    asy = await runtime.run_action(session.id, "task_status_async")
    assert asy.data == {"ready": True, "result": "saved"}
    answers = await runtime.get_answers(session.id)
    assert answers["result"] == 7 and answers["callback_runs"] == 1


async def test_task_methods_refused_in_background(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    await runtime.run_action(session.id, "start", {"task": "noop"})
    other = await runtime.start_background_action(session.id, "task_in_background")
    await other.wait_async(10)
    result = await other.refresh()
    assert result.error_type == "ActionError"
    assert "cannot be used in code that runs in the background" in (result.error_message or "")


async def test_wait_is_bounded(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    task = await runtime.start_background_action(session.id, "blocking_bg")
    started = time.monotonic()
    assert await task.wait_async(0.2) is False
    assert time.monotonic() - started < 2
    release = runtime.registry.get("testing").get_action("blocking_bg").fn.__globals__["RELEASE"]
    release.set()
    assert await task.wait_async(10) is True


async def test_results_survive_restart(config: Any) -> None:
    async with Daemon(config, roles=("worker",)) as d:
        sid, task = await start_task(d, "background_action", {"value_to_add": 40})
    async with Daemon(config, roles=()) as d:
        answers = await rt(d).get_answers(sid)
        assert answers["the_task"].ready() is True  # on the loop: the row read with the answers
        assert await answers["the_task"].get_async() == 593


async def test_user_identity_travels_to_background(daemon: Daemon) -> None:
    runtime = rt(daemon)
    admin = User(id="alice", email="alice@example.com", privileges=("admin",))
    session = await runtime.create_session("testing", owner=admin)
    result = await runtime.run_action(session.id, "whoami", user=admin)
    assert result.data == {"id": "alice", "logged_in": True, "admin": True}
    anon = await runtime.run_action(session.id, "whoami")
    assert anon.data == {"id": None, "logged_in": False, "admin": False}
    task = await runtime.start_background_action(session.id, "whoami_bg", user=admin)
    assert await task.get_async(10) == {"id": "alice", "admin": True}


async def test_background_spawns_background(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    task = await runtime.start_background_action(session.id, "spawn_from_bg")
    assert await task.get_async(10) == "spawned"
    tasks = await runtime.store.list_tasks(session_id=session.id)
    assert len(tasks) == 2
    await wait_until(lambda: _all_done(runtime, session.id), what="spawned task")


async def _all_done(runtime: Runtime, sid: str) -> bool:
    return all(t.done for t in await runtime.store.list_tasks(session_id=sid))


async def test_background_answers_are_a_throwaway_copy(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing", {"keep": 1})
    task = await runtime.start_background_action(session.id, "no_response")  # sets answers["x"]
    await task.wait_async(10)
    assert await runtime.get_answers(session.id) == {"keep": 1}


# -- bad input -----------------------------------------------------------------------------------
async def test_unknown_interview_and_action(daemon: Daemon) -> None:
    runtime = rt(daemon)
    with pytest.raises(UnknownInterview, match="no interview named 'nope'"):
        await runtime.create_session("nope")
    session = await runtime.create_session("testing")
    with pytest.raises(UnknownAction, match="interview 'testing' has no action 'nope'; its actions:"):
        await runtime.run_action(session.id, "nope")
    with pytest.raises(UnknownAction, match="has no action 'nope'"):
        await runtime.start_background_action(session.id, "nope")
    with pytest.raises(UnknownAction, match="has no action 'ghost'"):
        await runtime.run_action(session.id, "start", {"task": "ghost"})


async def test_unserialisable_answers_are_refused_and_nothing_saved(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing", {"a": 1})
    with pytest.raises(AnswersError, match=r"action 'unserialisable' left answers that cannot be saved: answers\['bad'\]\['inner'\] holds a builtins.object"):
        await runtime.run_action(session.id, "unserialisable")
    after = await runtime.get_session(session.id)
    assert after.version == 1 and json.loads(after.answers) == {"a": 1}


async def test_background_without_background_response_fails_clearly(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    task = await runtime.start_background_action(session.id, "no_response")
    await task.wait_async(10)
    result = await task.refresh()
    assert result.state == "failed" and result.error_type == "NoBackgroundResponse"
    assert "ended without calling background_response()" in (result.error_message or "")


async def test_callback_that_raises(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing", {"a": 1})
    task = await runtime.start_background_action(session.id, "with_bad_callback")
    await task.wait_async(10)
    result = await task.refresh()
    assert result.state == "failed" and result.error_type == "ValueError"
    assert result.error_message == "the response action 'raising_callback' raised: the callback broke"
    assert "Traceback" in (result.error_trace or "")
    assert await runtime.get_answers(session.id) == {"a": 1}


async def test_handler_exception_details_and_variables(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    task = await runtime.start_background_action(session.id, "fails")
    await task.wait_async(10)
    result = await task.refresh()
    assert result.error_type == "KeyError" and result.variables == ["missing_variable"]
    with pytest.raises(Exception, match="KeyError"):
        await task.get_async()


async def test_error_action_gets_error_arguments(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    task = await runtime.start_background_action(session.id, "error_action_then_fail")
    assert await task.get_async(10) == "handled"
    error = (await runtime.get_answers(session.id))["error"]
    assert error == {"error_type": "RuntimeError", "error_message": "boom", "variables": [], "where": "here"}


async def test_unstorable_value_fails_the_task(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    task = await runtime.start_background_action(session.id, "respond_with_bad_value")
    await task.wait_async(10)
    result = await task.refresh()
    assert result.error_type == "AnswersError" and "cannot be stored" in (result.error_message or "")


async def test_bad_ui_notification(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    with pytest.raises(ActionError, match="ui_notification 'toast' is not one of"):
        await runtime.run_action(session.id, "start", {"task": "noop", "ui": "toast"})


# -- foreground outcomes -----------------------------------------------------------------------------
async def test_null_response_does_not_save_and_exit_deletes(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    result = await runtime.run_action(session.id, "null")
    assert not result.saved and (await runtime.get_session(session.id)).version == 1
    result = await runtime.run_action(session.id, "exit")
    assert result.deleted and await runtime.store.get_session(session.id) is None


async def test_checkin_saves_only_changes(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing", {"a": 1})
    same = await runtime.run_action(session.id, "set", {"a": 1}, kind="checkin")
    assert not same.saved
    changed = await runtime.run_action(session.id, "set", {"a": 2}, kind="checkin")
    assert changed.saved and changed.version == 2


# -- concurrency, leases, budgets ----------------------------------------------------------------------
async def test_checkin_that_changes_nothing_writes_nothing(config: Any) -> None:
    async with Daemon(config, roles=()) as d:  # no worker role: nothing else writes (task polling does)
        runtime = rt(d)
        store = runtime.store
        assert isinstance(store, SqliteStore)
        session = await runtime.create_session("testing", {"a": 1})
        before = store.commit_stats
        for _ in range(20):
            result = await runtime.run_action(session.id, "set", {"a": 1}, kind="checkin")
            assert not result.saved and result.version == 1
        assert store.commit_stats == before  # no lease taken, nothing saved: not one write
        changed = await runtime.run_action(session.id, "set", {"a": 2}, kind="checkin")
        assert changed.saved and changed.version == 2
        assert store.commit_stats[1] == before[1] + 1  # one unit: the save, with no lease writes around it
        assert runtime.checkin_retries == 0


async def test_checkin_that_saves_waits_for_another_process_lease(daemon: Daemon) -> None:
    runtime = rt(daemon)
    store = runtime.store
    session = await runtime.create_session("testing", {"a": 1})
    assert await store.try_acquire_lease(session.id, "other-host:9#1", ttl=30, budget=4) is None
    # a check-in that changes nothing does not wait for the other process
    assert not (await runtime.run_action(session.id, "set", {"a": 1}, kind="checkin")).saved
    assert runtime.checkin_retries == 0
    # one that saves is refused at commit and runs again under the lease, once the holder lets go
    saving = asyncio.create_task(runtime.run_action(session.id, "set", {"a": 2}, kind="checkin"))

    async def retried() -> bool:
        return runtime.checkin_retries == 1

    await wait_until(retried, what="the check-in to fall back to the lease")
    assert not saving.done() and (await runtime.get_session(session.id)).version == 1
    await store.release_lease(session.id, "other-host:9#1")
    result = await asyncio.wait_for(saving, 10)
    assert result.saved and result.version == 2
    assert (await runtime.get_answers(session.id))["a"] == 2


async def test_checkin_racing_another_writer_runs_again_and_loses_nothing(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing", {"counted": 0})
    other = SqliteStore(runtime.config.store.path)  # another process's connections to the same file
    await other.open()

    async def foreign_save() -> None:
        rec = await other.get_session(session.id)
        assert rec is not None
        await other.commit(Changes(save=SessionSave(session.id, '{"counted":100,"foreign":true}', rec.version)))

    # the interview module as the daemon loaded it (from its file path)
    module = runtime.registry.get("testing").get_action("counted").fn.__globals__
    module["COUNTED_RUNS"][0] = 0
    module["RACE_HOOKS"].append(foreign_save)
    try:
        result = await runtime.run_action(session.id, "counted", kind="checkin")
    finally:
        module["RACE_HOOKS"].clear()
        await other.close()
    assert module["COUNTED_RUNS"][0] == 2 and runtime.checkin_retries == 1
    assert result.saved and result.version == 3
    assert await runtime.get_answers(session.id) == {"counted": 101, "foreign": True}


async def test_callback_racing_foreground_saves_loses_no_update(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing", {"counter": 0})
    tasks = [await runtime.start_background_action(session.id, "with_callback", arguments={"value": i}) for i in range(20)]
    await asyncio.gather(*(runtime.run_action(session.id, "incr") for _ in range(50)))
    for task in tasks:
        assert await task.wait_async(20)
    answers = await runtime.get_answers(session.id)
    assert answers["counter"] == 50
    assert answers["callback_runs"] == 20


async def test_sync_handlers_do_not_block_the_loop(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        await runtime.run_action(session.id, "slow_sync", {"seconds": 0.5})
    finally:
        t.cancel()
    assert ticks >= 20  # a blocked loop would tick ~once


async def test_budget_exceeded_is_reported_and_not_saved(tmp_path: Path) -> None:
    config = make_config(tmp_path, sessions={"lock_timeout": 0.3})
    async with Daemon(config, roles=()) as d:
        runtime = rt(d)
        for action in ("slow_sync", "slow_async"):
            session = await runtime.create_session("testing")
            with pytest.raises(BudgetExceeded, match=f"action '{action}' of session .* ran past its 0.3 s lock budget"):
                await runtime.run_action(session.id, action, {"seconds": 0.8})
            assert "slow_done" not in await runtime.get_answers(session.id)
            # the lease was released: the next action runs at once
            await runtime.run_action(session.id, "set", {"ok": True})


async def test_lease_held_past_budget_by_a_live_holder_is_reported_not_broken(tmp_path: Path) -> None:
    config = make_config(tmp_path, sessions={"lock_timeout": 0.3, "lease_ttl": 30})
    async with Daemon(config, roles=()) as d:
        runtime = rt(d)
        session = await runtime.create_session("testing")
        # another process holds the lease (acquired 5 s ago with a 0.3 s budget) and keeps renewing it
        store = runtime.store
        assert await store.try_acquire_lease(session.id, "other-host:123#1", ttl=30, budget=0.3) is None
        real_clock = store.clock  # type: ignore[attr-defined]
        store.clock = lambda: real_clock() + 5  # type: ignore[attr-defined]
        try:
            with pytest.raises(LeaseTimeout, match=r"locked by other-host:123#1 for 5.\d s.*past its 0.3 s budget but still alive"):
                await runtime.run_action(session.id, "set", {"x": 1})
        finally:
            store.clock = real_clock  # type: ignore[attr-defined]
        assert (await runtime.get_session(session.id)).version == 1
        await store.release_lease(session.id, "other-host:123#1")
        await runtime.run_action(session.id, "set", {"x": 1})


async def test_task_timeout(tmp_path: Path) -> None:
    config = make_config(tmp_path, tasks={"timeout": 0.2, "poll_interval": 0.05})
    async with Daemon(config, roles=("worker",)) as d:
        runtime = rt(d)
        session = await runtime.create_session("testing")
        task = await runtime.start_background_action(session.id, "sleep_bg", arguments={"seconds": 1})
        await task.wait_async(10)
        result = await task.refresh()
        assert result.error_type == "TaskTimeout" and "[tasks] timeout = 0.2 s" in (result.error_message or "")


async def test_many_tasks_from_one_action(daemon: Daemon) -> None:
    runtime = rt(daemon)
    session = await runtime.create_session("testing")
    await runtime.run_action(session.id, "start_many", {"task": "noop", "n": 50})
    tasks = (await runtime.get_answers(session.id))["tasks"]
    for task in tasks:
        assert await task.wait_async(20)
    counts = await runtime.store.count_tasks()
    assert counts["succeeded"] == 50


async def test_busy_session_in_this_process_names_the_holder(tmp_path: Path) -> None:
    config = make_config(tmp_path, sessions={"lock_timeout": 0.3})
    async with Daemon(config, roles=()) as d:
        runtime = rt(d)
        session = await runtime.create_session("testing")
        async with runtime.leases.locked(session.id, "foreground slow_report"):
            with pytest.raises(LeaseTimeout, match="foreground slow_report is running long"):
                await runtime.run_action(session.id, "set", {"x": 1})
        await runtime.run_action(session.id, "set", {"x": 1})  # free again
