"""A broadcast's list of results (AUTOMATIONS.md §4.1 "results list on the broadcast"): the sender's
``MessageHandle`` waits until the last hop was consumed and returns the receivers' results in order;
``automations broadcast --wait`` prints them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mailgate.core.automation_broadcasts import hop_id, results
from tests.automations.test_runner import daemon, settled
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio


async def test_the_handle_of_a_broadcast_returns_the_results_in_order(tmp_path: Path) -> None:
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Listener")
        made = [(await cls.start_async(n=n, stop_here=n == 2))[0] for n in range(4)]
        for m in made:
            await m.run_async(wait=5)
        stopped = await cls.broadcast_message_async("news", token="t1")
        assert stopped is not None and stopped.broadcast and stopped.result() is None
        assert await stopped.wait_async(10)
        assert (stopped.state, stopped.result()) == ("delivered", [0, 1, "received"])
        for m in made:
            await settled(d, m.id)
        # the rest are still running: a second broadcast reaches the last one only, to the end
        others = [(await cls.start_async(n=n))[0] for n in (10, 11)]
        for m in others:
            await m.run_async(wait=5)
        everyone = await cls.broadcast_message_async("news", token="t2")
        assert everyone is not None and await everyone.wait_async(10)
        assert everyone.result() == [3, 10, 11]
        assert (await rt(d).store.get_automation_message(hop_id(everyone.id, 3))) is not None
        assert await rt(d).store.get_automation_message(hop_id(everyone.id, 4)) is None
        # read on from a hop count: the same list
        assert await results(rt(d).store, everyone.id, 2) == ("delivered", [3, 10, 11], 3)


async def test_broadcast_wait_in_the_cli_prints_the_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mailgate.edges.cli.automations import _dispatch

    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Listener")
        made = [(await cls.start_async(n=n))[0] for n in range(2)]
        for m in made:
            await m.run_async(wait=5)
        capsys.readouterr()
        args = argparse.Namespace(automations_cmd="broadcast", cls="Listener", message="news", token="t", data=None,
                                  user=None, json=True, wait=10.0)
        assert await _dispatch(args, rt(d)) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["state"], out["results"]) == ("delivered", [0, 1])


async def test_a_broadcast_waits_for_a_claimed_first_instance_instead_of_skipping_it(tmp_path: Path) -> None:
    """Instances running at send time are reached in id order: one being run when the broadcast is
    expanded is waited for, not passed over for the next one."""
    from mailgate.core.automation_broadcasts import expand
    from mailgate.store.base import Changes, NewAutomation, NewMessage, NewStep
    from mailgate.store.sqlite.backend import SqliteStore

    store = SqliteStore(str(tmp_path / "b.sqlite3"))
    await store.open()
    try:
        await store.migrate()
        for n in (1, 2):
            await store.create_automation(NewAutomation(f"a{n}", "app.L", None, "{}", f"k{n}", "{}"), [NewStep(f"s{n}", "wait")])
        [claimed] = await store.claim_automations("runner", 1, 30)
        assert claimed.automation.id == "a1"
        await store.commit(Changes(messages=[NewMessage("b1", "news", broadcast_class="app.L")]))
        assert await expand(store, store.commit) == 0  # a1 is being run: not now, and not a2 instead
        assert await store.automation_messages("a2") == []
        await store.release_automations("runner", ["a1"])
        assert await expand(store, store.commit) == 1
        assert [m.id for m in await store.automation_messages("a1")] == [hop_id("b1", 1)]
        assert await store.automation_messages("a2") == []
    finally:
        await store.close()


async def test_broadcasts_that_reach_no_instance_are_dropped_and_do_not_block_later_ones(tmp_path: Path) -> None:
    """More unreached broadcasts than one expansion reads (20): each is stored ``dropped`` with no
    results, and a broadcast sent after them still reaches the instance started since."""
    async with daemon(tmp_path, roles=("worker",)) as d:
        cls = rt(d).automation_classes.resolve("Listener")
        nobody = [await cls.broadcast_message_async("news", token=f"n{i}") for i in range(25)]
        for handle in nobody:
            assert handle is not None and await handle.wait_async(10)
            assert (handle.state, handle.result()) == ("dropped", [])
        (made, _) = await cls.start_async(n=7)
        await made.run_async(wait=5)
        later = await cls.broadcast_message_async("news", token="later")
        assert later is not None and await later.wait_async(10)
        assert (later.state, later.result()) == ("delivered", [7])
        assert {m.state for m in [await rt(d).store.get_automation_message(h.id) for h in nobody if h]} == {"dropped"}
