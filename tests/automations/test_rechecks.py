"""A false ``AsSoonAs`` evaluated again writes nothing but its next recheck time, batched
(AUTOMATIONS.md §4.1): in a real daemon on a SQLite file with a controllable store clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailgate.core.automation_runner import RecheckBatch
from mailgate.store.base import NewAutomation, NewStep, Recheck
from tests.automations.test_runner import Clock, automation, daemon, settled
from tests.helpers import runtime_of as rt
from tests.helpers import wait_until

pytestmark = pytest.mark.asyncio
T0 = 1_800_000_000.0


async def test_a_false_as_soon_as_writes_only_its_next_recheck_time(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with daemon(tmp_path, clock, roles=("worker",), automations={"recheck_interval": 60}) as d:
        runner = rt(d).automation_runner
        cls = rt(d).automation_classes.resolve("Inbox")
        # bound ones too (each its own session: the clock stands still, a busy one's back-off would too)
        sids = [(await rt(d).create_session("autotest")).id for _ in range(3)]
        made = [(await cls.start_async(session=sids[i // 2] if i % 2 else None, n=i))[0] for i in range(6)]
        for m in made:
            await settled(d, m.id, clock)
        first = {m.id: await automation(d, m.id) for m in made}
        steps = {m.id: await rt(d).store.automation_history(m.id) for m in made}
        assert {r.wake_at for r in first.values()} == {T0 + 60}
        commits: list[Any] = []
        real_commit = runner.commit

        async def counting(changes: Any) -> Any:
            commits.append(changes)
            return await real_commit(changes)

        runner.commit = counting  # type: ignore[method-assign]
        rechecks: list[int] = []
        real_recheck = rt(d).store.recheck_automations

        async def counting_rechecks(holder: str, items: Any) -> Any:
            rechecks.append(len(items))
            return await real_recheck(holder, items)

        rt(d).store.recheck_automations = counting_rechecks  # type: ignore[method-assign]
        for k in (1, 2):  # two rechecks that stay false
            clock.now = T0 + 60 * k + 1
            runner.wake()
            for m in made:
                await wait_until(lambda m=m: _rechecked_at(d, m.id, clock.now + 60), 10, "the recheck")
            for m in made:
                await settled(d, m.id, clock)
        assert commits == []  # no full update
        assert sum(rechecks) == 12
        for m in made:
            rec = await automation(d, m.id)
            old = first[m.id]
            assert (rec.version, rec.data, rec.updated_at, rec.claim_holder) == (old.version, old.data, old.updated_at, None)
            assert await rt(d).store.automation_history(m.id) == steps[m.id]  # no step row written
        # the tree shows when the waiting step is looked at next, not the time its row was written
        shown = await rt(d).automations.show(made[0].id)
        assert any("wait [waiting]" in line and "wakes 2027-01-15T08:03:01" in line for line in shown["tree"]), shown["tree"]
        # a message still advances it at once, with a full commit
        await made[0].send_message_async("stop")
        await wait_until(lambda: _state(d, made[0].id, "finished"), 10, "the stopped automation to finish")
        assert len(commits) == 1


async def _rechecked_at(d: Any, automation_id: str, wake_at: float) -> bool:
    rec = await rt(d).store.get_automation(automation_id)
    return rec is not None and rec.wake_at == wake_at and rec.claim_holder is None


async def _state(d: Any, automation_id: str, state: str) -> bool:
    rec = await rt(d).store.get_automation(automation_id)
    return rec is not None and rec.state == state


async def test_rechecks_ending_together_go_to_the_store_in_one_call(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with daemon(tmp_path, clock, roles=()) as d:
        store = rt(d).store
        for i in range(5):
            await store.create_automation(NewAutomation(f"a{i}", "Inbox", None, "{}", f"key-{i}", "{}"),
                                          [NewStep(f"s{i}", "wait")])
        claimed = await store.claim_automations("me", 10, lease=30)
        calls: list[int] = []
        real = store.recheck_automations

        async def counting(holder: str, items: Any) -> Any:
            calls.append(len(items))
            return await real(holder, items)

        store.recheck_automations = counting  # type: ignore[method-assign]
        batch = RecheckBatch(store, "me")
        applied = await asyncio.gather(*(batch.add(Recheck(c.automation.id, c.automation.version, T0 + 99))
                                         for c in claimed), batch.add(Recheck("gone", 1, T0 + 99)))
        assert calls == [6]
        assert applied == [True] * 5 + [False]  # no such automation: skipped
        assert {(await store.get_automation(f"a{i}")).wake_at for i in range(5)} == {T0 + 99}  # type: ignore[union-attr]
