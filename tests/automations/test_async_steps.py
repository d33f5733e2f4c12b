"""``async def`` step callables (Execute, AsSoonAs, If, Then/Else calls, receivers, threaded steps),
as mailgate's actions may be ``async def``: awaited by the engine on its own, run on the daemon's loop
by the runner (``await send_email_async`` journaled like ``send_email``), cancelled at the step budget
(StepTimeout, nothing saved)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate import record_messages
from mailgate.author.sending import send_email_async
from mailgate.automations import flow, this
from mailgate.automations.registry import AutomationRegistry
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.automations.driver import Driver
from tests.automations.test_runner import automation, cfg, settled
from tests.helpers import runtime_of as rt
from tests.helpers import wait_until

T0 = 1_800_000_000.0
CANCELLED = threading.Event()  # set by AsyncNap's step when the runner cancels it


class AsyncFlow(flow.Automation):
    class Meta:
        name = "AsyncFlow"

    get = flow.Execute(this.fetch)
    wait = flow.Execute(this.note).AsSoonAs(this.ready)
    branch = flow.If(this.big).Then(this.mark_big).Else(this.mark_small)
    post = flow.Execute(this.mail)
    end = flow.End()

    async def fetch(self, task: Any) -> int:
        await asyncio.sleep(0)
        self.data["fetched"] = self.data["n"] * 2
        return self.data["fetched"]

    async def ready(self, task: Any) -> bool:
        await asyncio.sleep(0)
        return bool(self.data.get("go"))

    async def note(self, task: Any) -> None:
        self.data["noted"] = True

    async def big(self, task: Any) -> bool:
        return bool(self.data["fetched"] > 10)

    async def mark_big(self, task: Any) -> None:
        self.data["size"] = "big"

    async def mark_small(self, task: Any) -> None:
        self.data["size"] = "small"

    async def mail(self, task: Any) -> None:
        if self.data.get("send"):
            self.data["accepted"] = await send_email_async(to="client@example.org", subject="Async", body="From an async step.")

    async def receive_go(self, token: str | None, data: Any) -> str:
        await asyncio.sleep(0)
        self.data["go"] = token
        return f"going {token}"


class AsyncNap(flow.Automation):
    class Meta:
        name = "AsyncNap"

    doze = flow.Execute(this.nap)
    end = flow.End()

    async def nap(self, task: Any) -> None:
        self.data["napped"] = True
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            CANCELLED.set()
            raise


class AsyncThreaded(flow.Automation):
    class Meta:
        name = "AsyncThreaded"

    job = flow.Execute(this.work, threaded=True)
    wait = flow.Execute().AsSoonAs(this.got)
    end = flow.End()

    async def work(self, task: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"x": 7}

    def got(self, task: Any) -> bool:
        return "done" in self.data

    def receive_task_done(self, token: str | None, data: Any) -> None:
        self.data["done"] = token


GATE = threading.Event()  # opened by the test: EarlyEnd's threaded step returns after its automation finished


class EarlyEnd(flow.Automation):
    """The path moves on from the threaded step straight to End: the automation finishes before its task."""

    class Meta:
        name = "EarlyEnd"

    job = flow.Execute(this.work, threaded=True)
    fail = flow.Execute(this.boom, threaded=True)
    end = flow.End()

    async def work(self, task: Any) -> dict[str, Any]:
        await asyncio.get_running_loop().run_in_executor(None, GATE.wait, 10)
        return {"late": True}

    async def boom(self, task: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, GATE.wait, 10)
        raise ValueError("too late to matter")


def test_the_engine_awaits_async_callables_on_its_own() -> None:
    d = Driver(AsyncFlow, {"n": 3}, now=T0)
    d.run()
    assert d.step("get").result == 6 and d.data["fetched"] == 6
    assert d.open_nodes() == ["wait"]  # the async AsSoonAs is false (a coroutine object would be truthy)
    mid = d.send("go", token="now")
    d.run()
    (outcome,) = [m for m in d.consumed if m.id == mid]
    assert (outcome.state, outcome.result) == ("delivered", "going now")
    assert d.state == "finished" and d.data["noted"] is True and d.data["size"] == "small"
    assert d.step("branch").message == "False"


def test_an_async_step_error_is_the_step_error() -> None:
    class Failing(flow.Automation):
        bang = flow.Execute(this.boom).OnError(this.err)
        end = flow.End()
        err = flow.Execute(this.recover).Next(this.end)

        async def boom(self, task: Any) -> None:
            await asyncio.sleep(0)
            raise ValueError("async trouble")

        def recover(self, task: Any) -> None:
            self.data["recovered"] = True

    d = Driver(Failing, now=T0)
    d.run()
    assert (d.step("bang").state, d.step("bang").error_type) == ("failed", "ValueError")
    assert d.state == "finished" and d.data["recovered"] is True


def daemon(tmp_path: Path, classes: list[type], **automations: Any) -> Daemon:
    config = cfg(tmp_path, automations=automations)
    return Daemon(config, roles=("worker",), clock=time.time, resolver=StaticResolver({}),
                  automations=AutomationRegistry(classes))


@pytest.mark.asyncio
async def test_the_runner_runs_async_steps_on_the_loop_and_journals_their_mail(tmp_path: Path) -> None:
    with record_messages() as outbox:
        async with daemon(tmp_path, [AsyncFlow]) as d:
            made, _ = await AsyncFlow.start_async(n=7, send=True)
            await settled(d, made.id)
            from mailgate.core import answers as codec

            assert codec.decode((await automation(d, made.id)).data)["fetched"] == 14
            assert (await automation(d, made.id)).state == "running"  # the async AsSoonAs said no
            await made.send_message_async("go", token="now")

            async def ended() -> bool:
                return (await automation(d, made.id)).state == "finished"

            await wait_until(ended, 10, "the async automation to end")
            data = codec.decode((await automation(d, made.id)).data)
            assert (data["go"], data["noted"], data["size"], data["accepted"]) == ("now", True, "big", True)
            history = {s.node: s for s in await rt(d).store.automation_history(made.id)}
            assert codec.decode_value(history["get"].result or "null") == 14
            assert history["branch"].message == "True"
            assert [m.subject for m in outbox] == ["Async"]
            # journaled by (step, call index): the Message-ID derives from the step
            assert outbox[0].message_id.startswith(f"<{history['post'].id}.0@")
            assert await rt(d).store.journal_entry(history["post"].id, 0) is not None


@pytest.mark.asyncio
async def test_an_async_step_past_its_budget_is_cancelled_with_step_timeout(tmp_path: Path) -> None:
    CANCELLED.clear()
    async with daemon(tmp_path, [AsyncNap], step_budget=0.3) as d:
        made, _ = await AsyncNap.start_async()
        started = time.monotonic()
        await settled(d, made.id)
        assert time.monotonic() - started < 5
        rec = await automation(d, made.id)
        assert rec.state == "failed"
        from mailgate.core import answers as codec

        assert "napped" not in codec.decode(rec.data)  # nothing it did was saved
        history = await rt(d).store.automation_history(made.id)
        assert [(s.node, s.error_type) for s in history if s.state == "failed"] == [("doze", "StepTimeout")]
        await wait_until(CANCELLED.is_set, 5, "the async step to be cancelled")


@pytest.mark.asyncio
async def test_an_async_threaded_step_runs_on_the_worker_pool(tmp_path: Path) -> None:
    async with daemon(tmp_path, [AsyncThreaded]) as d:
        sid = (await rt(d).create_session("autotest")).id
        made, _ = await AsyncThreaded.start_async(session=sid)

        async def done() -> bool:
            rows = await rt(d).store.automation_history(made.id)
            return any(s.node == "job" and s.state != "running" for s in rows)

        await wait_until(done, 10, "the threaded step's row to be finished")
        from mailgate.core import answers as codec

        (work,) = [s for s in await rt(d).store.automation_history(made.id) if s.node == "job"]
        assert work.state == "done" and codec.decode_value(work.result or "null") == {"x": 7}


@pytest.mark.asyncio
async def test_a_threaded_step_that_ends_after_its_automation_finished_gets_its_outcome(tmp_path: Path) -> None:
    """AUTOMATIONS.md §4.1: "the result is written to that step's history row when the task ends",
    also when the automation finished meanwhile (its ``task_done`` is then dropped)."""
    GATE.clear()
    async with daemon(tmp_path, [EarlyEnd]) as d:
        sid = (await rt(d).create_session("autotest")).id
        made, _ = await EarlyEnd.start_async(session=sid)

        async def finished() -> bool:
            return (await automation(d, made.id)).state == "finished"

        await wait_until(finished, 10, "the automation to finish before its threaded tasks")
        assert {s.node: s.state for s in await rt(d).store.automation_history(made.id)}["job"] == "running"
        GATE.set()

        async def closed() -> bool:
            rows = await rt(d).store.automation_history(made.id)
            return all(s.state != "running" for s in rows)

        await wait_until(closed, 10, "both threaded steps' rows to be closed by their tasks")
        from mailgate.core import answers as codec

        rows = {s.node: s for s in await rt(d).store.automation_history(made.id)}
        assert rows["job"].state == "done" and codec.decode_value(rows["job"].result or "null") == {"late": True}
        assert (rows["fail"].state, rows["fail"].error_type, rows["fail"].error_message) == (
            "failed", "ValueError", "too late to matter")
        assert [m.state for m in await rt(d).store.automation_messages(made.id)] == ["dropped", "dropped"]
        assert (await automation(d, made.id)).state == "finished"
