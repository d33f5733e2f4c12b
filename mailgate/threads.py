"""A thread pool of daemon threads for sync action handlers.

A sync handler cannot be interrupted. When one overruns its budget or the daemon stops, its result
is already discarded (the task went back to the queue, or nothing was saved); the standard
ThreadPoolExecutor would still make the interpreter wait for it at exit, so SIGTERM could hang for
as long as the slowest handler. Daemon threads let the process exit on time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_STOP = object()


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
            if future.cancelled():  # the caller gave up (a budget ran out)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class DaemonThreadPool(Executor):
    def __init__(self, max_workers: int, name: str = "mailgate-action") -> None:
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._put((future, fn, args, kwargs))
        return future

    def call(self, results: LoopResults, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker; the returned future (of ``results``' loop) gets its outcome."""
        future: asyncio.Future[Any] = results.loop.create_future()
        self._put((future, fn, args, results))
        return future

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run an action: the thread pool is shut down")
            self._queue.put(item)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, fn, args, extra = item
            if isinstance(extra, LoopResults):
                try:
                    extra.put(future, True, fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    extra.put(future, False, exc)
            elif future.set_running_or_notify_cancel():
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
                if item is not _STOP:
                    item[0].cancel()
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                thread.join()
