"""The PostgreSQL backend's group commit: grouping, and which items an error fails."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.errors import StoreConflict, StoreUnavailable, VersionConflict
from mailgate.store.postgres.grouper import Grouper

pytestmark = pytest.mark.asyncio


class Server:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail

    async def send(self, group: list[int]) -> list[int | Exception]:
        self.calls.append(group)
        await asyncio.sleep(0)  # on its way: later items gather meanwhile
        if self.fail is not None:
            raise self.fail
        if 13 in group and len(group) > 1:
            raise StoreConflict("item 13 breaks any group it is in")
        if group == [13]:
            raise StoreConflict("item 13 alone")
        return [VersionConflict(f"{n} conflicts") if n == 7 else n * 10 for n in group]


async def test_items_that_arrive_while_a_group_is_sent_go_together() -> None:
    server = Server()
    grouper = Grouper(server.send, 100, "test")
    results = await asyncio.gather(*(grouper.submit(n) for n in range(1, 6)))
    assert results == [10, 20, 30, 40, 50]
    assert len(server.calls) <= 2 and sum(map(len, server.calls)) == 5


async def test_one_item_that_breaks_a_group_fails_alone() -> None:
    server = Server()
    grouper = Grouper(server.send, 100, "test")
    outcomes = await asyncio.gather(*(grouper.submit(n) for n in (1, 13, 7, 2)), return_exceptions=True)
    assert outcomes[0] == 10 and outcomes[3] == 20
    assert isinstance(outcomes[1], StoreConflict) and isinstance(outcomes[2], VersionConflict)


async def test_the_server_away_fails_every_item_of_the_group_once() -> None:
    server = Server(StoreUnavailable("away"))
    grouper = Grouper(server.send, 100, "test")
    outcomes = await asyncio.gather(*(grouper.submit(n) for n in range(4)), return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    assert sum(map(len, server.calls)) == 4  # not sent again one by one


async def test_groups_are_capped() -> None:
    server = Server()
    grouper = Grouper(server.send, 3, "test")
    await asyncio.gather(*(grouper.submit(n) for n in range(10)), return_exceptions=True)
    assert max(map(len, server.calls)) <= 3


async def test_parallel_groups_send_at_once_up_to_their_number() -> None:
    gates: list[asyncio.Future[None]] = []
    calls: list[list[int]] = []

    async def send(group: list[int]) -> list[int]:
        calls.append(group)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gates.append(gate)
        await gate
        return [n * 10 for n in group]

    grouper = Grouper(send, 100, "test", parallel=2)
    first = asyncio.ensure_future(grouper.submit(1))
    await asyncio.sleep(0)  # let it start
    second = asyncio.ensure_future(grouper.submit(2))  # one on its way: goes at once, alone
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(grouper.submit(n)) for n in (3, 4, 5)]  # two on their way: these wait
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == [[1], [2]]
    gates[0].set_result(None)
    assert await first == 10
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == [[1], [2], [3, 4, 5]]  # the freed sender takes all that waited, in one group
    gates[1].set_result(None)
    gates[2].set_result(None)
    assert await second == 20 and [await r for r in rest] == [30, 40, 50]
    assert not grouper._tasks  # every sender is done: the next item starts one


async def test_one_group_at_a_time_by_default() -> None:
    server = Server()
    in_flight = 0
    most = 0

    async def send(group: list[int]) -> list[int | Exception]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await server.send(group)
        finally:
            in_flight -= 1

    grouper = Grouper(send, 2, "test")
    assert await asyncio.gather(*(grouper.submit(n) for n in (1, 2, 3, 4, 5, 6, 8))) == [10, 20, 30, 40, 50, 60, 80]
    assert most == 1


async def test_a_lingering_grouper_waits_for_company_before_a_lone_group() -> None:
    server = Server()
    grouper = Grouper(server.send, 100, "test", linger=0.05)
    first = asyncio.ensure_future(grouper.submit(1))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(grouper.submit(n)) for n in (2, 3)]  # within the window
    assert await first == 10 and [await f for f in later] == [20, 30]
    assert server.calls == [[1, 2, 3]]
