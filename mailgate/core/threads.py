"""A thread pool of daemon threads for sync action handlers.

A sync handler cannot be interrupted. When one overruns its budget or the daemon stops, its result
is already discarded (the task went back to the queue, or nothing was saved); the standard
ThreadPoolExecutor would still make the interpreter wait for it at exit, so SIGTERM could hang for
as long as the slowest handler. Daemon threads let the process exit on time.

Calls from the event loop (:meth:`DaemonThreadPool.call`) travel in batches both ways: the calls
made in one turn of the loop go to the workers with one wake-up, a worker runs them one after the
other, and the results come back with one wake-up of the loop (:class:`LoopResults`). Under load
(a thousand pages checking in) this saves most of what a thread hop costs in Python: waking a
thread and winning the GIL back. So that one slow handler does not hold up the calls queued behind
it, a timer wakes another worker whenever calls have waited ``unstick_after`` seconds.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any

_STOP = object()
_CALLS = object()  # wake-up: run the queued loop calls
_WORKER = threading.local()  # .pool: the pool a worker thread belongs to


@contextmanager
def blocking() -> Iterator[None]:
    """Around a worker's wait for work that may itself need a worker (a handler waiting for another
    session's lease, held by an action of that session that still has to run): the pool may run one
    more thread meanwhile, so that such waits cannot take every thread and wait for each other until
    their timeouts. Outside a pool's worker it does nothing."""
    pool: DaemonThreadPool | None = getattr(_WORKER, "pool", None)
    if pool is None or not pool.lend():
        yield
        return
    try:
        yield
    finally:
        pool.unlend()


class LoopResults:
    """Hands results from the worker threads back to one event loop, one wake-up per batch.

    ``run_in_executor`` costs a chained future and a self-pipe write per call; under load (many
    check-ins) the finished calls of one loop iteration are delivered together instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        with self._lock:
            self._items.append((future, ok, value))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _drain(self) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._scheduled = False
        for future, ok, value in items:
            if future.done():  # the caller gave up (a budget ran out)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class DaemonThreadPool(Executor):
    def __init__(self, max_workers: int, name: str = "mailgate-action", unstick_after: float = 0.005) -> None:
        self._max = max_workers
        self._base = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False
        self._unstick_after = unstick_after
        # loop calls: made in this turn of the loop (loop thread only), then handed to the workers
        self._made: list[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...], LoopResults]] = []
        self._calls: deque[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...], LoopResults]] = deque()
        self._unstick: asyncio.TimerHandle | None = None
        self.handovers = 0  # batches of loop calls handed to the workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._put((future, fn, args, kwargs))
        return future

    def call(self, results: LoopResults, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker; the returned future (of ``results``' loop) gets its outcome.

        Call from ``results``' loop only. If the future is done (cancelled, timed out) before a
        worker gets to the call, the call is skipped.
        """
        if self._shutdown:
            raise RuntimeError("cannot run an action: the thread pool is shut down")
        future: asyncio.Future[Any] = results.loop.create_future()
        if not self._made:
            results.loop.call_soon(self._hand_over, results.loop)
        self._made.append((future, fn, args, results))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        made, self._made = self._made, []
        if self._shutdown:
            for future, *_ in made:
                future.cancel()
            return
        self._calls.extend(made)
        self.handovers += 1
        self._put(_CALLS)
        if self._unstick is None:
            self._unstick = loop.call_later(self._unstick_after, self._check_stuck, loop)

    def _check_stuck(self, loop: asyncio.AbstractEventLoop) -> None:
        """Calls still queued after a while: a worker is busy with a slow one, so wake another."""
        self._unstick = None
        if self._calls and not self._shutdown:
            self._put(_CALLS)
            self._unstick = loop.call_later(self._unstick_after, self._check_stuck, loop)

    def _run_calls(self) -> None:
        while True:
            try:
                future, fn, args, results = self._calls.popleft()
            except IndexError:
                return
            if future.done():
                continue
            try:
                results.put(future, True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                results.put(future, False, exc)
            del future, fn, args, results

    def lend(self) -> bool:
        """A worker is about to block (see :func:`blocking`): allow one more thread, up to twice
        ``max_workers``; False if none is left to lend."""
        with self._lock:
            if self._max >= 2 * self._base:
                return False
            self._max += 1
            queued = bool(self._calls) or not self._queue.empty()
        if queued:  # work already waiting for a thread: wake (or start) one for it
            try:
                self._put(_CALLS)
            except RuntimeError:  # shut down
                pass
        return True

    def unlend(self) -> None:
        with self._lock:
            self._max -= 1  # threads started meanwhile stay (idle): the pool never shrinks

    def _put(self, item: Any) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run an action: the thread pool is shut down")
            self._queue.put(item)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        _WORKER.pool = self
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _CALLS:
                self._run_calls()
                self._idle.release()
                continue
            future, fn, args, extra = item
            if future.set_running_or_notify_cancel():
                kwargs = extra
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    future.set_exception(exc)
            del item, future, fn, args, extra
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item is not _CALLS:
                    item[0].cancel()
            while self._calls:
                self._calls.popleft()[0].cancel()
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                thread.join()


class Deadlines:
    """Fails futures with TimeoutError once their time is up, with one timer per ``resolution`` slot.

    A timer per call (or ``asyncio.timeout``) costs a heap entry and a cancellation per call; calls
    that end in the same slot share one timer here, and a future that finished in time is skipped.
    A deadline may fire up to ``resolution`` seconds late, never early.
    """

    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self._slots: dict[int, list[asyncio.Future[Any]]] = {}

    def add(self, future: asyncio.Future[Any], timeout: float) -> None:
        loop = future.get_loop()
        slot = math.ceil((loop.time() + timeout) / self.resolution)
        waiting = self._slots.get(slot)
        if waiting is None:
            waiting = self._slots[slot] = []
            loop.call_at(slot * self.resolution, self._expire, slot)
        waiting.append(future)

    def _expire(self, slot: int) -> None:
        for future in self._slots.pop(slot, ()):
            if not future.done():
                future.set_exception(TimeoutError())
