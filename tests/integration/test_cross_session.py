"""docassemble's cross-session functions from interview code, under the session lease rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import ActionError, MailgateError, NotFound
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


async def test_a_background_action_may_set_its_own_session(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=("worker",)) as d:
        a = (await rt(d).create_session("cross")).id
        await rt(d).run_action(a, "start_bg_push", {"value": 42})

        async def pushed() -> bool:
            return (await rt(d).get_answers(a)).get("from_background") == 42

        await wait_until(pushed, what="the background action's set_session_variables")
