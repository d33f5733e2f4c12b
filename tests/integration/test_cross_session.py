"""docassemble's cross-session functions from interview code, under the session lease rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import ActionError, LeaseTimeout, MailgateError, NotFound
from tests.helpers import make_config, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio
INTERVIEWS = Path(__file__).parent.parent / "interviews"


def cfg(tmp_path: Path, **tables: object) -> Config:
    return make_config(tmp_path, interviews={"paths": (str(INTERVIEWS / "cross.py"), str(INTERVIEWS / "testing.py"))},
                       **tables)


async def test_create_then_set_variables_in_the_new_session(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        a = (await rt(d).create_session("cross")).id
        child = (await rt(d).run_action(a, "spawn", {"greeting": "hello", "ref": 7})).text
        assert child is not None and child != a
        rec = await rt(d).get_session(child)
        assert rec.interview == "testing" and rec.version == 3  # created, then two saves under its lease
        answers = await rt(d).get_answers(child)
        assert answers["greeting"] == "hello" and "doomed" not in answers
        assert answers["url_args"] == {"from": a, "ref": 7}
        assert (await rt(d).get_answers(a))["child"] == child


async def test_async_handlers_have_their_twins(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        a = (await rt(d).create_session("cross")).id
        await rt(d).run_action(a, "spawn_async", {"greeting": "hi"})
        answers = await rt(d).get_answers(a)
        assert answers["seen"] == "hi"
        assert (await rt(d).get_answers(answers["child"]))["url_args"] == {"from": a}


async def test_get_session_variables_reads_another_session_without_bookkeeping(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        b = (await rt(d).create_session("testing", {"colour": "blue", "_internal": {"tasks": {"sent": 1}}})).id
        await rt(d).run_action(b, "incr")
        assert "_internal" in await rt(d).get_answers(b)  # mailgate's bookkeeping: not for other sessions
        a = (await rt(d).create_session("cross")).id
        await rt(d).run_action(a, "pull", {"id": b})
        pulled = (await rt(d).get_answers(a))["pulled"]
        assert pulled == {"colour": "blue", "counter": 1}
        with pytest.raises(NotFound, match="not a session of interview 'cross'"):
            await rt(d).run_action(a, "pull", {"id": b, "interview": "cross"})


async def test_get_session_variables_simplifies_as_docassemble_by_default(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        when = dt.datetime(2026, 4, 1, 9, 30, tzinfo=dt.UTC)
        b = (await rt(d).create_session("testing", {"when": when, "day": when.date(), "tags": {"x"},
                                                    "pair": (1, 2), "deep": {"at": [when]}})).id
        await rt(d).run_action(b, "start", {"task": "noop"})  # answers["the_task"]: a Task
        a = (await rt(d).create_session("cross")).id
        text = (await rt(d).run_action(a, "pull_json", {"id": b})).text
        assert text is not None
        task_id = (await rt(d).get_answers(b))["the_task"].id
        assert json.loads(text) == {"when": "2026-04-01T09:30:00+00:00", "day": "2026-04-01", "tags": ["x"],
                                    "pair": [1, 2], "deep": {"at": ["2026-04-01T09:30:00+00:00"]},
                                    "the_task": {"_class": "Task", "id": task_id}}
        await rt(d).run_action(a, "pull_raw", {"id": b})
        assert (await rt(d).get_answers(a))["raw_types"] == {"when": "datetime", "day": "date", "tags": "set",
                                                            "pair": "tuple", "deep": "dict", "the_task": "Task"}


async def test_set_session_variables_refuses_its_own_locked_session_and_bookkeeping(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        a = (await rt(d).create_session("cross")).id
        b = (await rt(d).create_session("testing")).id
        with pytest.raises(ActionError, match="change `answers` instead"):
            await rt(d).run_action(a, "push_self")
        with pytest.raises(ActionError, match="_internal"):
            await rt(d).run_action(a, "push", {"id": b, "variables": {"_internal": {}}})
        with pytest.raises(NotFound):
            await rt(d).run_action(a, "push", {"id": "nope", "variables": {"x": 1}})
        assert "x" not in await rt(d).get_answers(b)


async def test_set_session_variables_waits_for_the_lease_and_never_steals_it(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path, sessions={"lock_timeout": 0.5}), roles=()) as d:
        a = (await rt(d).create_session("cross")).id
        b = (await rt(d).create_session("testing", {"n": 1})).id
        store = rt(d).store
        assert await store.try_acquire_lease(b, "other-host#1", 30, 30) is None  # another process holds b
        with pytest.raises(MailgateError, match="locked by other-host#1"):
            await rt(d).run_action(a, "push", {"id": b, "variables": {"n": 2}})
        assert (await rt(d).get_answers(b))["n"] == 1
        await store.release_lease(b, "other-host#1")
        await rt(d).run_action(a, "push", {"id": b, "variables": {"n": 2}})
        assert (await rt(d).get_answers(b))["n"] == 2


@pytest.mark.parametrize("action", ["slow_push", "slow_push_async"])
async def test_a_busy_session_fails_the_push_within_the_callers_budget(tmp_path: Path, action: str) -> None:
    # The push waits only for what is left of the calling action's budget: it fails naming the busy
    # session, not as the caller's budget overrun (after which a sync handler's push, still waiting in
    # its abandoned thread, used to land in the other session although the caller had saved nothing).
    async with Daemon(cfg(tmp_path, sessions={"lock_timeout": 1.0}), roles=()) as d:
        a = (await rt(d).create_session("cross")).id
        b = (await rt(d).create_session("testing", {"n": 1})).id
        store = rt(d).store
        assert await store.try_acquire_lease(b, "other-host#1", 30, 30) is None
        with pytest.raises(LeaseTimeout, match=r"locked by other-host#1.*what was left of the calling action's 1 s"):
            await rt(d).run_action(a, action, {"id": b, "pause": 0.5})
        await store.release_lease(b, "other-host#1")
        assert (await rt(d).get_answers(b))["n"] == 1
        await rt(d).run_action(a, action, {"id": b, "pause": 0})  # free: it waits for nothing
        assert (await rt(d).get_answers(b))["n"] == 2


async def test_concurrent_pushes_and_actions_lose_no_update(tmp_path: Path) -> None:
    # More pushing sync handlers than the action pool has threads (tests run 4 + 4): blocked in their
    # pushes, they used to take every thread from b's own actions, which held b's lease meanwhile.
    async with Daemon(cfg(tmp_path), roles=()) as d:
        b = (await rt(d).create_session("testing", {"counter": 0})).id
        pushers = [(await rt(d).create_session("cross")).id for _ in range(10)]
        await asyncio.gather(
            *(rt(d).run_action(a, "push", {"id": b, "variables": {f"from_{i}": i}}) for i, a in enumerate(pushers)),
            *(rt(d).set_session_variables(b, {f"api_{i}": i}) for i in range(10)),
            *(rt(d).run_action(b, "incr") for _ in range(10)))
        answers = await rt(d).get_answers(b)
        assert answers["counter"] == 10
        assert all(answers[f"from_{i}"] == i and answers[f"api_{i}"] == i for i in range(10))
        assert (await rt(d).get_session(b)).version == 31


async def test_a_background_action_may_set_its_own_session(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=("worker",)) as d:
        a = (await rt(d).create_session("cross")).id
        await rt(d).run_action(a, "start_bg_push", {"value": 42})

        async def pushed() -> bool:
            return (await rt(d).get_answers(a)).get("from_background") == 42

        await wait_until(pushed, what="the background action's set_session_variables")


def stashed_rows(tmp_path: Path) -> list[tuple[str]]:
    with sqlite3.connect(tmp_path / "mailgate.sqlite3") as conn:
        return conn.execute("SELECT data FROM stashes").fetchall()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 4, 1, 12, 0, tzinfo=dt.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


async def test_stash_then_retrieve_from_a_session_started_with_the_tokens(tmp_path: Path) -> None:
    clock = Clock()
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        a = (await rt(d).create_session("cross", {"name": "Zebulon Quux", "items": [1, 2]})).id
        tokens = (await rt(d).run_action(a, "stash", {"expire": 3600})).data
        assert set(tokens) == {"stash_key", "secret"}
        wrong = (await rt(d).create_session_with("cross", url_args={**tokens, "secret": tokens["stash_key"]})).id
        await rt(d).run_action(wrong, "claim", {"delete": True})  # a wrong secret neither reads nor deletes
        assert (await rt(d).get_answers(wrong))["claimed"] is False
        [(stored,)] = stashed_rows(tmp_path)
        assert "Zebulon" not in stored and "Quux" not in stored  # sealed: the store never sees the data
        b = (await rt(d).create_session_with("cross", url_args=tokens)).id
        await rt(d).run_action(b, "claim")
        answers = await rt(d).get_answers(b)
        assert answers["claimed"] is True and answers["name"] == "Zebulon Quux" and answers["items"] == [1, 2]
        clock.now += 3000
        await rt(d).run_action(b, "claim", {"refresh": True})  # 3600 s from now again
        clock.now += 3000
        c = (await rt(d).create_session_with("cross", url_args=tokens)).id
        await rt(d).run_action(c, "claim", {"delete": True})
        assert (await rt(d).get_answers(c))["claimed"] is True
        await rt(d).run_action(c, "claim")  # deleted once read
        assert (await rt(d).get_answers(c))["claimed"] is False


async def test_stashes_expire_and_the_daily_cron_purges_them(tmp_path: Path) -> None:
    clock = Clock()
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        a = (await rt(d).create_session("cross", {"name": "n", "items": []})).id
        tokens = (await rt(d).run_action(a, "stash", {"expire": 60})).data
        b = (await rt(d).create_session_with("cross", url_args=tokens)).id
        clock.now += 61
        await rt(d).run_action(b, "claim")
        assert (await rt(d).get_answers(b))["claimed"] is False
        assert len(stashed_rows(tmp_path)) == 1  # expired: absent to readers, in the store until purged
        assert d.cron is not None
        await d.cron.run("cron_daily")
        assert stashed_rows(tmp_path) == []
        default = (await rt(d).run_action(a, "stash", {"expire": None})).data
        rec = await rt(d).store.take_stash(default["stash_key"], clock.now)
        assert rec is not None and rec.expires_at == clock.now + 90 * 86400  # docassemble's default
        with pytest.raises(ActionError, match="positive number of seconds"):
            await rt(d).run_action(a, "stash", {"expire": -5})


async def test_stash_tokens_never_begin_with_a_dash(tmp_path: Path) -> None:
    # `mailgate stash get KEY SECRET` would take such a token for an option. Without the redraw, one
    # token in 64 begins with "-": 1 - (63/64)**600 = 99.99% of these runs would see one.
    async with Daemon(cfg(tmp_path), roles=()) as d:
        tokens = await asyncio.gather(*(rt(d).stashes.stash({"n": n}, 60) for n in range(300)))
        assert not [t for t in tokens if t["stash_key"].startswith("-") or t["secret"].startswith("-")]
        assert await rt(d).stashes.retrieve(tokens[-1]["stash_key"], tokens[-1]["secret"]) == {"n": 299}


async def test_stash_functions_in_async_handlers(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        a = (await rt(d).create_session("cross")).id
        await rt(d).run_action(a, "stash_async")
        answers = await rt(d).get_answers(a)
        assert answers["roundtrip"] == [1, 2, 3] and answers["again"] is None


async def test_a_cron_push_keeps_the_other_session_alive_without_counting_as_its_access(tmp_path: Path) -> None:
    clock = Clock()
    start = clock.now
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        assert d.cron is not None
        a = (await rt(d).create_session("cross", {"allow_cron": True})).id
        child = (await rt(d).run_action(a, "spawn", {"greeting": "hi", "ref": 1})).text
        assert child is not None
        ran, deleted = [], []
        for day in range(1, 101):
            clock.now = start + day * 86400
            report = await d.cron.run("cron_daily")
            assert report.errors == 0
            ran += [day] * report.sessions
            deleted += [day] * report.deleted_inactive
        # a ends its cron_daily with response(null=True), so it is not saved: deleted after 90 days
        # (on day 91, after its last run); the child, saved by the cron user's pushes until then,
        # lives on, and its last access is still its creation
        assert ran == list(range(1, 92)) and deleted == [91]
        assert await rt(d).store.get_session(a) is None
        rec = await rt(d).get_session(child)
        assert rec.accessed_at == start and rec.modified_at == start + 91 * 86400
        assert (await rt(d).get_answers(child))["pinged"] == dt.date(2026, 7, 1)
