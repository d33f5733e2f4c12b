"""The automations runner in a real daemon (in-process, real SQLite file, real SMTP client, a
controllable store clock for day-long waits): AUTOMATIONS.md §5.1, 3, 4, 6, 8."""

from __future__ import annotations

import asyncio
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailgate import record_messages
from mailgate.config import Config
from mailgate.core.context import User
from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import ActionError
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio
AUTOMATIONS = Path(__file__).parent.parent / "interviews" / "automations.py"
T0 = 1_800_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cfg(tmp_path: Path, **tables: Any) -> Config:
    return make_config(tmp_path, interviews={"paths": (str(AUTOMATIONS),)},
                       automations={"timer_poll": 0.05, **tables.pop("automations", {})},
                       outbound={"default_sender": "Office <office@example.test>"}, **tables)


def daemon(tmp_path: Path, clock: Clock | None = None, roles: tuple[str, ...] = ("worker", "smtp"), **tables: Any) -> Daemon:
    return Daemon(cfg(tmp_path, smtp={"port": 0, "parse_processes": 0}, **tables), roles=roles,
                  clock=clock or time.time, resolver=StaticResolver({}))


async def automation(d: Daemon, automation_id: str) -> Any:
    rec = await rt(d).store.get_automation(automation_id)
    assert rec is not None
    return rec


async def steps(d: Daemon, automation_id: str) -> list[tuple[str, str, str | None]]:
    return [(s.node, s.state, s.message) for s in await rt(d).store.automation_history(automation_id)]


async def settled(d: Daemon, automation_id: str, clock: Clock | None = None) -> None:
    """Wait until nothing of the automation is due or claimed (the runner is done with it for now)."""
    async def idle() -> bool:
        rec = await automation(d, automation_id)
        now = clock() if clock is not None else time.time()
        return rec.state != "running" or (rec.claim_holder is None and (rec.wake_at is None or rec.wake_at > now))

    await wait_until(idle, 10, f"automation {automation_id} to settle")


def reply(port: int, to: str, subject: str = "Re: Your documents") -> None:
    msg = EmailMessage()
    msg["From"] = "client@example.org"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Here they are.")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(msg)


async def start_reply(d: Daemon) -> tuple[str, str]:
    sid = (await rt(d).create_session("autotest")).id
    await rt(d).run_action(sid, "start_reply", {"to": "client@example.org"}, User(id="ann"))
    aid = (await rt(d).get_answers(sid))["automation"]
    return sid, aid


async def test_reply_by_smtp_advances_within_a_second_and_thanks_once(tmp_path: Path) -> None:
    clock = Clock(T0)
    with record_messages() as outbox:
        async with daemon(tmp_path, clock) as d:
            sid, aid = await start_reply(d)
            await settled(d, aid, clock)
            assert [m.subject for m in outbox] == ["Your documents"]
            reply_to = (await automation(d, aid)).data
            address = outbox[0].reply_to[0]
            assert address in reply_to and address.endswith("@localhost")
            clock.now = T0 + 3600  # one hour later the reply comes
            assert d.smtp is not None
            await asyncio.to_thread(reply, d.smtp.port, address)
            accepted = time.monotonic()

            async def thanked() -> bool:
                return ("thank", "done", "OK") in await steps(d, aid)

            await wait_until(thanked, 5, "the thank-you step")
            assert time.monotonic() - accepted < 1.0  # the message advanced it, not a recheck (60 s)
            await settled(d, aid, clock)
            rec = await automation(d, aid)
            assert rec.state == "finished"
            assert [m.subject for m in outbox] == ["Your documents", "Thank you"]
            history = await steps(d, aid)
            assert [h[:2] for h in history] == [("start", "done"), ("wait", "done"), ("branch", "done"),
                                                ("thank", "done"), ("end", "done")]
            assert history[2][2] == "True"
            messages = await rt(d).store.automation_messages(aid)
            assert [(m.message, m.state, m.token) for m in messages] == [("email", "delivered", "docs")]
            # the session: the automation's steps are no access, and nothing else changed it
            session = await rt(d).get_session(sid)
            assert session.accessed_at < T0 + 1


async def test_no_reply_reminds_once_then_a_caseworker_form(tmp_path: Path) -> None:
    clock = Clock(T0)
    with record_messages() as outbox:
        async with daemon(tmp_path, clock, roles=("worker",)) as d:
            sid, aid = await start_reply(d)
            await settled(d, aid, clock)
            clock.now = T0 + 3 * DAY - 10
            rt(d).automation_runner.wake()
            await settled(d, aid, clock)
            assert [m.subject for m in outbox] == ["Your documents"]  # not before the 3 days
            clock.now = T0 + 3 * DAY + 1
            rt(d).automation_runner.wake()
            await settled(d, aid, clock)
            assert [m.subject for m in outbox] == ["Your documents", "Reminder"]
            clock.now = T0 + 6 * DAY + 2
            rt(d).automation_runner.wake()
            await settled(d, aid, clock)
            assert [m.subject for m in outbox] == ["Your documents", "Reminder"]
            tasks = await rt(d).store.open_interactions("bob", ["caseworker"])
            assert [(a.id, s.node) for a, s in tasks] == [(aid, "give_up")]
            assert await rt(d).store.open_interactions("eve", []) == []
            events = [e for e in await rt(d).session_events(sid) if e.kind == "automation"]
            assert '"give_up"' in events[-1].payload and '"interactions"' in events[-1].payload
            history = await steps(d, aid)
            assert [h[:3] for h in history][:4] == [("start", "done", "OK"), ("wait", "skipped", "skipped"),
                                                     ("branch", "done", "False"), ("remind", "done", "OK")]


async def test_reply_and_timeout_at_the_same_instant_take_one_branch(tmp_path: Path) -> None:
    clock = Clock(T0)
    with record_messages() as outbox:
        async with daemon(tmp_path, clock, roles=("smtp",)) as d:  # no worker role: the test runs each pass
            runner = rt(d).automation_runner
            sid, aid = await start_reply(d)
            assert await runner.run_due() == 1
            address = outbox[0].reply_to[0]
            clock.now = T0 + 3 * DAY + 1  # the timeout is due, and the reply arrives at the same instant
            assert d.smtp is not None
            await asyncio.to_thread(reply, d.smtp.port, address)

            async def queued() -> bool:
                return len(await rt(d).store.automation_messages(aid)) == 1

            await wait_until(queued, 5, "the e-mail message")
            assert await runner.run_due() >= 1
            history = await steps(d, aid)
            assert [h for h in history if h[0] == "branch"] == [("branch", "done", "True")]  # the message came first
            subjects = [m.subject for m in outbox]
            assert subjects.count("Thank you") + subjects.count("Reminder") == 1


async def test_a_busy_session_delays_its_automation_without_waiting_on_it(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        store = rt(d).store
        sid = (await rt(d).create_session("autotest")).id
        assert await store.try_acquire_lease(sid, "someone-else", 30.0, 30.0) is None
        cls = rt(d).automation_classes.resolve("Inbox")
        made, _ = await cls.start_async(session=sid)

        async def backed_off() -> bool:
            rec = await automation(d, made.id)
            return rec.claim_holder is None and rec.wake_at is not None and rec.wake_at > time.time()

        await wait_until(backed_off, 5, "the claim given back with a back-off")
        assert await store.automation_history(made.id) == []  # nothing ran under another's lease
        await store.release_lease(sid, "someone-else")
        assert await made.run_async(wait=10) == ["wait"]


async def test_an_automation_created_in_a_failed_action_does_not_exist(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        sid = (await rt(d).create_session("autotest")).id
        with pytest.raises(ActionError):
            await rt(d).run_action(sid, "start_and_fail")
        assert await rt(d).store.list_automations() == []


async def test_messages_from_free_code_delivered_in_order_and_dropped_when_finished(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        from tests.interviews import automations as classes_module  # noqa: F401 - the path-loaded copy is used

        cls = rt(d).automation_classes.resolve("Inbox")
        inbox, created = await cls.start_async(user=User(id="ann"))
        assert created
        handles = [await inbox.send_message_async("ping", token=str(i)) for i in range(5)]
        for h in handles:
            assert await h.wait_async(5)
        assert [h.result() for h in handles] == [{"count": i + 1} for i in range(5)]
        rec = await automation(d, inbox.id)
        from mailgate.core import answers as codec

        assert codec.decode(rec.data)["tokens"] == ["0", "1", "2", "3", "4"]
        stop = await inbox.send_message_async("stop")
        assert await stop.wait_async(5)
        await settled(d, inbox.id)
        assert (await automation(d, inbox.id)).state == "finished"
        late = await inbox.send_message_async("ping")
        assert late is not None and late.state == "dropped" and late.result() is None


async def test_unique_returns_the_running_instance_and_allows_a_new_one_after_it_ends(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Single")
        first, created = await cls.start_async()
        again, created_again = await cls.start_async()
        assert created and not created_again and again.id == first.id
        done = await first.send_message_async("finish")
        assert await done.wait_async(5)
        await settled(d, first.id)
        assert (await automation(d, first.id)).state == "finished"
        third, created_third = await cls.start_async()
        assert created_third and third.id != first.id


async def test_an_error_fails_with_its_traceback_and_retry_resumes(tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Faulty")
        made, _ = await cls.start_async(fixed_flag=str(flag))
        await settled(d, made.id)
        rec = await automation(d, made.id)
        assert rec.state == "failed"
        (boom,) = [s for s in await rt(d).store.automation_history(made.id) if s.node == "boom"]
        assert boom.error_type == "ValueError" and "not fixed yet" in (boom.error_trace or "")
        flag.write_text("yes")
        await rt(d).store.retry_automation(made.id)
        await settled(d, made.id)
        assert (await automation(d, made.id)).state == "finished"


async def test_a_step_past_its_budget_fails_with_step_timeout(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",), automations={"step_budget": 0.3}) as d:
        cls = rt(d).automation_classes.resolve("Sleeper")
        made, _ = await cls.start_async(seconds=5)
        started = time.monotonic()
        await settled(d, made.id)
        assert time.monotonic() - started < 3
        rec = await automation(d, made.id)
        assert rec.state == "failed"
        history = await rt(d).store.automation_history(made.id)
        assert [s.error_type for s in history if s.state == "failed"] == ["StepTimeout"]


async def test_session_delete_removes_its_automations(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        sid, aid = await start_reply(d)
        await settled(d, aid)
        assert await rt(d).delete_session(sid)
        assert await rt(d).store.get_automation(aid) is None


async def test_a_background_task_of_a_step_sends_task_done(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        sid = (await rt(d).create_session("autotest")).id
        await rt(d).run_action(sid, "start_delegate")
        aid = (await rt(d).get_answers(sid))["automation"]

        async def ended() -> bool:
            return (await automation(d, aid)).state == "finished"

        await wait_until(ended, 10, "the delegate automation to end")
        from mailgate.core import answers as codec

        data = codec.decode((await automation(d, aid)).data)
        assert data["done_token"] == "double" and data["done_task"] == data["task"].id
        task = await rt(d).get_task_record(data["task"].id)
        assert task.automation_id == aid and task.state == "succeeded"


async def test_the_seed_examples_run_in_the_daemon_two_issue_discussions_interleaved(tmp_path: Path) -> None:
    """§5.2 in the daemon: WebinarWorkflow's mails at or after their due times; two IssueDiscussions
    (a conference call or not) interleaved in one runner, hourly loops, Split into 3 paths, Join, End."""
    from mailgate.automations.registry import AutomationRegistry
    from mailgate.core import answers as codec
    from tests.automations.test_seed_examples import HOUR, IssueDiscussion, WebinarWorkflow, at
    from tests.automations.test_seed_examples import T0 as SEED_T0

    clock = Clock(SEED_T0)
    classes = AutomationRegistry([WebinarWorkflow, IssueDiscussion])
    config = cfg(tmp_path)
    async with Daemon(config, roles=("worker",), clock=clock, automations=classes) as d:
        webinar, _ = await WebinarWorkflow.start_async(webinar_at=at(SEED_T0 + 48 * HOUR))
        deadline = SEED_T0 + 6 * 24 * HOUR + 30 * 60
        with_call, _ = await IssueDiscussion.start_async(deadline=deadline, call=True)
        without, _ = await IssueDiscussion.start_async(deadline=deadline, call=False)
        ids = [webinar.id, with_call.id, without.id]
        for hour in range(0, 7 * 24 + 2):
            clock.now = SEED_T0 + hour * HOUR
            rt(d).automation_runner.wake()
            for aid in ids:
                await settled(d, aid, clock)
        records = {aid: await automation(d, aid) for aid in ids}
        assert {aid: r.state for aid, r in records.items()} == {aid: "finished" for aid in ids}
        fired = {what: t for what, t in codec.decode(records[webinar.id].data)["log"]}
        assert fired["reminder"] >= SEED_T0 + 47 * HOUR and fired["replay"] >= fired["reminder"] + 150 * 60
        logs = {aid: [what for what, _ in codec.decode(records[aid].data)["log"]] for aid in ids[1:]}
        assert logs[with_call.id] == ["announce", "calendar", "warning", "evaluate"]
        assert logs[without.id] == ["announce", "warning", "evaluate"]  # opposite branch, no cross-talk
        history = await steps(d, with_call.id)
        assert sum(1 for node, _, _ in history if node == "repeat") >= 6 * 24  # the hourly loop
        assert [state for node, state, _ in history if node == "join"].count("joined") + \
            [state for node, state, _ in history if node == "join"].count("done") == 3


async def test_a_threaded_step_runs_on_the_worker_pool_and_its_row_gets_the_result(tmp_path: Path) -> None:
    from mailgate.core.automation_rows import THREADED_ACTION

    async with daemon(tmp_path, roles=("worker",)) as d:
        sid = (await rt(d).create_session("autotest")).id
        await rt(d).run_action(sid, "start_threaded")
        aid = (await rt(d).get_answers(sid))["automation"]

        async def ended() -> bool:
            return (await automation(d, aid)).state == "finished"

        await wait_until(ended, 10, "the threaded automation to end")
        (work,) = [s for s in await rt(d).store.automation_history(aid) if s.node == "work"]
        from mailgate.core import answers as codec

        assert work.state == "done" and codec.decode_value(work.result or "null") == {"x": 42, "answers": ["automation"]}
        (task,) = await rt(d).store.list_tasks(session_id=sid)
        assert (task.action, task.automation_id, task.state) == (THREADED_ACTION, aid, "succeeded")
        assert codec.decode((await automation(d, aid)).data)["done"] == THREADED_ACTION


async def test_handles_by_key_and_run_wait_return_the_open_nodes(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Inbox")
        made, _ = await cls.start_async()
        assert await made.run_async(wait=5) == ["wait"]
        found = await cls.by_key_async(made.get_key())
        assert found.id == made.id and len(made.get_key()) == 22  # 128 bits, URL-safe base64
        from mailgate.errors import NotFound

        key = made.get_key()
        with pytest.raises(NotFound):  # another key: its first character changed (one in 64 keys begins with "x")
            await cls.by_key_async(("y" if key.startswith("x") else "x") + key[1:])
        handle = cls(automation_id=made.id)
        await handle.send_message_async("stop")
        assert await handle.run_async(wait=5) == []
        assert handle.is_finished()


async def test_cron_daily_deletes_the_history_of_automations_ended_long_ago(tmp_path: Path) -> None:
    import datetime as dt

    clock = Clock(T0)
    async with daemon(tmp_path, clock, roles=("worker",), automations={"history_days": 30}) as d:
        cls = rt(d).automation_classes.resolve("Inbox")
        ended, _ = await cls.start_async()
        await (await ended.send_message_async("stop")).wait_async(5)
        running, _ = await cls.start_async()
        await settled(d, running.id, clock)
        assert d.cron is not None
        clock.now = T0 + 29 * DAY
        await d.cron.fire("cron_daily", dt.datetime.fromtimestamp(clock.now, dt.UTC))
        assert await rt(d).store.get_automation(ended.id) is not None  # not 30 days yet
        clock.now = T0 + 31 * DAY
        await d.cron.fire("cron_daily", dt.datetime.fromtimestamp(clock.now, dt.UTC))
        assert await rt(d).store.get_automation(ended.id) is None
        assert (await automation(d, running.id)).state == "running"


async def test_metrics_count_steps_messages_and_the_due_backlog(tmp_path: Path) -> None:
    from mailgate import metrics

    done = metrics.sample("mailgate_automation_steps_total", outcome="done")
    delivered = metrics.sample("mailgate_automation_messages_total", outcome="delivered")
    dropped = metrics.sample("mailgate_automation_messages_total", outcome="dropped")
    finished = metrics.sample("mailgate_automations_ended_total", state="finished")
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Inbox")
        made, _ = await cls.start_async()
        assert await (await made.send_message_async("ping")).wait_async(5)
        assert await (await made.send_message_async("stop")).wait_async(5)
        await settled(d, made.id)
        assert await (await made.send_message_async("nothing")).wait_async(5)  # to a finished one: dropped at once
    assert metrics.sample("mailgate_automation_messages_total", outcome="delivered") == delivered + 2
    assert metrics.sample("mailgate_automation_steps_total", outcome="done") == done + 2  # wait, end
    assert metrics.sample("mailgate_automations_ended_total", state="finished") == finished + 1
    assert metrics.sample("mailgate_automation_messages_total", outcome="dropped") == dropped  # the store dropped it
    assert metrics.sample("mailgate_automations_due") == 0


async def test_a_broadcast_reaches_the_instances_running_at_send_time_in_order_until_received(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Listener")
        made = [(await cls.start_async(n=n, stop_here=n == 2))[0] for n in range(4)]
        for m in made:
            await m.run_async(wait=5)
        handle = await cls.broadcast_message_async("news", token="t1")
        assert handle is not None
        later, _ = await cls.start_async(n=9)  # started after the send: not reached

        async def third_heard() -> bool:
            return (await automation(d, made[2].id)).state == "finished"

        await wait_until(third_heard, 10, "the broadcast to reach the third instance")
        for m in [*made, later]:
            await settled(d, m.id)
        states = [(await automation(d, m.id)).state for m in [*made, later]]
        assert states == ["finished", "finished", "finished", "running", "running"]
        hops = [(await rt(d).store.automation_messages(m.id)) for m in made]
        assert [[(h.message, h.state) for h in hs] for hs in hops] == [
            [("news", "delivered")], [("news", "delivered")], [("news", "delivered")], []]
        assert [codec_result(hs[0].result) for hs in hops[:3]] == [0, 1, "received"]


def codec_result(text: str | None) -> object:
    from mailgate.core import answers as codec

    return codec.decode_value(text) if text is not None else None


async def test_autorun_false_waits_for_run(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Inbox")
        idle, _ = await cls.start_async(autorun=False)
        await rt(d).automation_runner.run_due()
        assert await rt(d).store.automation_history(idle.id) == []  # nothing entered
        assert await idle.run_async(wait=5) == ["wait"]


async def test_store_trouble_is_retried_then_fails_with_worker_lost(tmp_path: Path) -> None:
    from mailgate.errors import StoreUnavailable

    async with daemon(tmp_path, roles=("worker",), automations={"max_attempts": 3}) as d:
        runner = rt(d).automation_runner
        real = runner.commit
        refusals = {"n": 0, "limit": 2}

        async def flaky(changes: Any) -> Any:
            if any(u.state != "failed" for u in changes.automations) and refusals["n"] < refusals["limit"]:
                refusals["n"] += 1
                raise StoreUnavailable("the store does not answer (injected)")
            return await real(changes)

        runner.commit = flaky  # type: ignore[method-assign]
        cls = rt(d).automation_classes.resolve("Single")
        made, _ = await cls.start_async(done=True)

        async def finished() -> bool:
            return (await automation(d, made.id)).state == "finished"

        await wait_until(finished, 10, "the automation to finish after two refused commits")
        assert refusals["n"] == 2  # retried, not fatal
        refusals.update(n=0, limit=100)
        again, _ = await cls.start_async(done=True)

        async def ended() -> bool:
            return (await automation(d, again.id)).state != "running"

        await wait_until(ended, 10, "the automation to fail")
        assert (await automation(d, again.id)).state == "failed" and refusals["n"] == 3
        history = await rt(d).store.automation_history(again.id)
        assert [(s.node, s.error_type) for s in history if s.state == "failed"] == [("wait", "WorkerLost")]


async def test_an_orphaned_node_is_not_run_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import uuid

    caplog.set_level(logging.INFO, logger="mailgate.core.automation_runner")
    async with daemon(tmp_path, roles=("worker",), automations={"recheck_interval": 0.2}) as d:
        cls = rt(d).automation_classes.resolve("Inbox")
        made, _ = await cls.start_async()
        await settled(d, made.id)
        await rt(d).store.goto_automation(made.id, "ghost", uuid.uuid4().hex)
        await wait_until(lambda: any(getattr(r, "event", None) == "automation.orphaned" for r in caplog.records), 5,
                         "the orphaned log line")
        version = (await automation(d, made.id)).version
        await wait_until(lambda: runner_claims(d) >= 3, 5, "the runner to look at it again")
        orphaned = [r for r in caplog.records if getattr(r, "event", None) == "automation.orphaned"]
        assert len(orphaned) == 1 and "ghost" in orphaned[0].getMessage()
        assert (await automation(d, made.id)).version == version  # never run


def runner_claims(d: Daemon) -> int:
    """How many times the runner looked at due automations since the orphan was logged (a counter
    kept by wrapping the store's claim in the test)."""
    store = rt(d).store
    if not hasattr(store, "_test_claims"):
        real = store.claim_automations

        async def counting(*args: Any, **kwargs: Any) -> Any:
            found = await real(*args, **kwargs)
            store._test_claims += len(found)  # type: ignore[attr-defined]
            return found

        store._test_claims = 0  # type: ignore[attr-defined]
        store.claim_automations = counting  # type: ignore[method-assign]
    return int(store._test_claims)  # type: ignore[attr-defined]
