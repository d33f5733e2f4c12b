"""Group commit for the PostgreSQL backend: calls that arrive while one group is on its way go
together in the next, one round trip and one disk flush for all of them.

``send`` receives the group and returns one outcome per item: its result, or the exception that
item alone raises. If ``send`` raises, the whole group failed: when the connection was lost, every
item gets that error (the server is away, or full: each item would fail alike); when an item broke
the group (a constraint it violates, a domain error a one-item call raises), each is sent again
alone, so that the bad one fails alone.

``parallel`` groups may be on their way at once (default one): an item that arrives while fewer are
goes at once, in a group of its own, instead of waiting for the one on its way to come back. The
server flushes the WAL of commits that arrive together once, so a second group in flight costs
little and halves the wait of an item that just missed one. Groups in flight together commit in
no set order: only calls whose order does not matter use it (the inbound queue's enqueue: the
messages of one SMTP connection arrive one after the other's reply anyway).

``linger`` (seconds, default none) holds a group that would go out alone, with nothing on its way,
that long for company, as PostgreSQL's ``commit_delay`` does: for calls that nobody answers a
client on (the processor's deliveries and reads, after the 250), so that a trickle of them still
shares round trips and leaves the server to the calls a client waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from mailgate.errors import StoreConflict, StoreError, StoreUnavailable

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result

Send = Callable[[list[I]], Awaitable[Sequence[R | Exception]]]


class Grouper(Generic[I, R]):
    def __init__(self, send: Send[I, R], max_batch: int, name: str, parallel: int = 1, linger: float = 0.0) -> None:
        self._send = send
        self.max_batch = max_batch
        self.name = name
        self.parallel = max(1, parallel)
        self.linger = linger
        self.groups = 0  # groups sent (for tests and benchmarks)
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # those sending, while any item waits

    async def submit(self, item: I) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._tasks) < self.parallel:
            task = asyncio.get_running_loop().create_task(self._flush(), name=self.name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)  # also if it is cancelled before it starts
        return await future

    async def _flush(self) -> None:
        try:
            if self.linger > 0 and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.linger)  # a batching window (see above), not synchronisation
            while self._pending:
                group, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                await self._send_group(group)
        finally:  # at once, not at the done callback: an item submitted from now on starts a sender
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    async def _send_group(self, group: list[tuple[I, asyncio.Future[R]]]) -> None:
        self.groups += 1
        failed: list[R | Exception]
        try:
            outcomes = await self._send([item for item, _ in group])
        except StoreError as exc:
            if isinstance(exc, StoreConflict) and len(group) > 1:
                await self._one_by_one(group)
            else:  # the server is away or full: each item would fail alike
                failed = [exc] * len(group)
                _settle(group, failed)
        except Exception as exc:  # the item's own error (a domain error), or one item broke the group
            if len(group) > 1:
                await self._one_by_one(group)
            else:
                failed = [exc]
                _settle(group, failed)
        except BaseException as exc:  # cancelled: the items' outcome is unknown
            failed = [StoreUnavailable(f"the store stopped while this was being written ({type(exc).__name__})")] * len(group)
            _settle(group, failed)
            raise
        else:
            _settle(group, list(outcomes))

    async def _one_by_one(self, group: list[tuple[I, asyncio.Future[R]]]) -> None:
        """Send each item of a group that failed as a whole alone: the one that broke it fails alone."""
        for one in group:
            await self._send_group([one])


def _settle(group: list[tuple[I, asyncio.Future[R]]], outcomes: list[R | Exception]) -> None:
    for (_, future), outcome in zip(group, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

