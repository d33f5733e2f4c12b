"""The action thread pool: loop calls travel in batches, a slow call does not hold up the rest."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mailgate.core.leases import SessionLocks
from mailgate.core.threads import DaemonThreadPool, Deadlines, LoopResults, blocking

pytestmark = pytest.mark.asyncio


async def test_calls_of_one_loop_turn_travel_together() -> None:
    pool = DaemonThreadPool(4)
    results = LoopResults(asyncio.get_running_loop())
    try:
        futures = [pool.call(results, lambda i=i: i * 2) for i in range(50)]
        assert await asyncio.gather(*futures) == [i * 2 for i in range(50)]
        assert pool.handovers == 1
        assert await pool.call(results, lambda: "next turn") == "next turn"
        assert pool.handovers == 2
    finally:
        pool.shutdown(wait=False)


async def test_errors_come_back_to_the_caller() -> None:
    pool = DaemonThreadPool(2)
    results = LoopResults(asyncio.get_running_loop())
    try:
        def boom() -> None:
            raise KeyError("missing")
        with pytest.raises(KeyError, match="missing"):
            await pool.call(results, boom)
    finally:
        pool.shutdown(wait=False)


async def test_a_slow_call_does_not_hold_up_the_calls_behind_it() -> None:
    pool = DaemonThreadPool(4, unstick_after=0.01)
    results = LoopResults(asyncio.get_running_loop())
    go = threading.Event()
    try:
        slow = pool.call(results, go.wait, 30)
        fast = pool.call(results, lambda: "fast")  # same turn: same batch, queued behind the slow one
        assert await asyncio.wait_for(fast, 10) == "fast"
        assert not slow.done()
        go.set()
        assert await asyncio.wait_for(slow, 10) is True
    finally:
        go.set()
        pool.shutdown(wait=False)


async def test_calls_blocking_on_a_later_call_do_not_take_every_thread() -> None:
    # Two handlers (as many as threads) wait, in blocking(), for a third call to run: an action
    # waiting for another session's lease, held by an action of that session that needs a thread.
    pool = DaemonThreadPool(2, unstick_after=0.01)
    results = LoopResults(asyncio.get_running_loop())
    go = threading.Event()

    def wait_for_go() -> bool:
        with blocking():
            return go.wait(30)

    try:
        blocked = [pool.call(results, wait_for_go)]
        await asyncio.sleep(0)
        blocked.append(pool.call(results, wait_for_go))
        await asyncio.sleep(0)
        assert await asyncio.wait_for(pool.call(results, go.set), 10) is None
        assert await asyncio.wait_for(asyncio.gather(*blocked), 10) == [True, True]
    finally:
        go.set()
        pool.shutdown(wait=False)


async def test_a_call_given_up_before_it_starts_is_skipped() -> None:
    pool = DaemonThreadPool(2)
    results = LoopResults(asyncio.get_running_loop())
    ran: list[str] = []
    try:
        skipped = pool.call(results, ran.append, "skipped")
        skipped.cancel()
        await pool.call(results, ran.append, "ran")
        assert ran == ["ran"]
    finally:
        pool.shutdown(wait=False)


async def test_session_locks_are_fifo_and_bounded() -> None:
    locks = SessionLocks()
    await locks.acquire("s", 1)
    order: list[str] = []

    async def take(name: str) -> None:
        await locks.acquire("s", 5)
        order.append(name)

    b = asyncio.create_task(take("b"))
    c = asyncio.create_task(take("c"))
    await asyncio.sleep(0)  # both queue behind the holder
    with pytest.raises(TimeoutError):
        await locks.acquire("s", 0.05)
    locks.release("s")
    await asyncio.wait_for(b, 5)
    assert order == ["b"] and not c.done()
    locks.release("s")
    await asyncio.wait_for(c, 5)
    assert order == ["b", "c"]
    locks.release("s")
    assert not locks.locked("s")
    await locks.acquire("other", 1)  # sessions are independent
    await locks.acquire("s", 0.05)


async def test_deadlines_fire_late_never_early_and_skip_finished_futures() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.01)
    finished, late = loop.create_future(), loop.create_future()
    start = loop.time()
    deadlines.add(finished, 0.05)
    deadlines.add(late, 0.05)  # same slot: one timer
    finished.set_result("in time")
    with pytest.raises(TimeoutError):
        await late
    assert loop.time() - start >= 0.05
    assert finished.result() == "in time"


async def test_work_queued_before_a_worker_blocks_gets_the_lent_thread() -> None:
    # The one thread takes A, and B (what A waits for) is queued behind it before A blocks: lending
    # must start a thread for B, or A and B wait for each other until A's timeout.
    pool = DaemonThreadPool(1)
    b_queued, go = threading.Event(), threading.Event()

    def a() -> bool:
        b_queued.wait(10)
        with blocking():
            return go.wait(10)

    try:
        first = pool.submit(a)
        second = pool.submit(go.set)
        b_queued.set()
        assert await asyncio.to_thread(first.result, 20) is True
        assert second.result(1) is None
    finally:
        pool.shutdown(wait=False)
