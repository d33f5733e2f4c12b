"""Background tasks as they are read: the Task handle that interview code keeps in its answers, and
the TaskBook behind it (the worker pool that runs them is :mod:`mailgate.core.pool`).

A Task is stored in answers by id. Its methods follow docassemble (``ready``, ``failed``, ``wait``,
``get``, ``result``) and read the task's durable row. In a sync handler (a worker thread) they ask
the event loop for a fresh row; on the event loop itself (an async handler) they use the row read
when the action's answers were loaded, because a blocking read there would stall the loop; the
blocking waits have async twins (``wait_async``, ``get_async``) for that case. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailgate.config import TasksConfig
from mailgate.core import answers as codec
from mailgate.core.bridge import on_loop, refuse_on_loop, run_on_loop
from mailgate.core.context import CURRENT
from mailgate.errors import (
    ActionError,
    MailgateError,
    NotFound,
    StoreError,
    TaskFailed,
    TaskNotReady,
)
from mailgate.store.base import EventRecord, LostTask, Store, TaskRecord

PURGEABLE = ("succeeded", "failed", "queued")
PURGE_BATCH = 1000  # rows deleted per transaction: a purge never holds the write lock for long

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    """What ``Task.result()`` returns (docassemble's attribute names)."""

    value: Any
    error_type: str | None
    error_message: str | None
    error_trace: str | None
    variables: list[str]
    state: str

    @classmethod
    def from_record(cls, rec: TaskRecord) -> TaskResult:
        value = codec.decode_value(rec.result)["value"] if rec.result else None
        variables = codec.decode_value(rec.variables) if rec.variables else []
        return cls(value, rec.error_type, rec.error_message, rec.error_trace, variables, rec.state)


class TaskBook:
    """Reads task rows and waits for tasks to finish: what Task handles and the edges use.

    A finish committed by this process wakes its waiters at once (:meth:`finished`); other
    processes' finishes are seen by polling every ``poll_interval``.
    """

    def __init__(self, store: Store, config: TasksConfig, read_timeout: float) -> None:
        self._store = store
        self.config = config
        self.read_timeout = read_timeout  # how long a sync handler waits for one read
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the runtime opens
        self._finished: dict[str, asyncio.Event] = {}

    async def get(self, task_id: str) -> TaskRecord:
        rec = await self._store.get_task(task_id)
        if rec is None:
            raise NotFound(f"no task {task_id!r}; list tasks with: mailgate tasks list")
        return rec

    async def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """The task's row once it is done, or as it is when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            rec = await self.get(task_id)  # first: a task that is not there raises before it gets a waiter
            done = self._finished.setdefault(task_id, asyncio.Event())
            remaining = deadline - time.monotonic()
            if rec.done or remaining <= 0:
                return rec
            try:
                await asyncio.wait_for(done.wait(), min(remaining, self.config.poll_interval))
            except TimeoutError:
                pass

    def finished(self, task_id: str) -> None:
        """This process committed the task's finish: wake whoever waits for it."""
        done = self._finished.pop(task_id, None)
        if done is not None:
            done.set()

    async def list(self, *, session_id: str | None = None, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        return await self._store.list_tasks(session_id=session_id, state=state, limit=limit)

    async def retry(self, task_id: str) -> TaskRecord:
        """Queue a finished task again (``mailgate tasks retry``)."""
        return await self._store.retry_task(task_id)

    async def counts(self) -> dict[str, int]:
        return await self._store.count_tasks()

    async def cancel(self, task_id: str, lost: LostTask) -> tuple[TaskRecord, builtins.list[EventRecord]]:
        """Fail a queued or running task as ``Cancelled`` (``mailgate tasks cancel``).

        A queued task is never claimed; a running one keeps running in its worker until it ends, but
        its finish is refused (the task is no longer running: ``LeaseLost``), so nothing it did is
        saved. Its session's browsers get the task's failure event (``lost``)."""
        return await self._store.cancel_task(task_id, lost)

    async def purge(self, state: str, before: float | None, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Delete the tasks in ``state`` that finished (queued: were created) before ``before``, in
        batches; ``on_progress(deleted, total)`` after each. Running tasks are cancelled, not purged."""
        if state not in PURGEABLE:
            raise MailgateError(f"tasks in state {state!r} cannot be purged; purge one of {', '.join(PURGEABLE)} "
                              "(cancel a running task first: mailgate tasks cancel ID)")
        total = (await self._store.count_tasks()).get(state, 0)  # at most this many: the age is not counted
        deleted = 0
        while True:
            n = await self._store.purge_tasks(state, before, PURGE_BATCH)
            deleted += n
            if on_progress is not None:
                on_progress(deleted, max(total, deleted) if n else deleted)
            if n == 0:
                return deleted

    async def retry_failed(self, on_progress: Callable[[int, int], None] | None = None) -> builtins.list[str]:
        """Queue every failed task again, except those an operator cancelled (``mailgate tasks retry
        ID`` still queues one of those); the ids queued. The failed tasks are those failed when it
        starts: one that fails again meanwhile is not retried twice."""
        failed = [rec.id for rec in await self._store.list_tasks(state="failed", limit=10**9)
                  if rec.error_type != "Cancelled"]
        queued = []
        for n, task_id in enumerate(failed, 1):
            try:
                queued.append((await self._store.retry_task(task_id)).id)
            except StoreError:
                raise
            except MailgateError:
                pass  # retried, cancelled or deleted by someone else since the list was read
            if on_progress is not None:
                on_progress(n, len(failed))
        if on_progress is not None and not failed:
            on_progress(0, 0)
        return queued

    async def queue(self) -> tuple[int, int, float | None]:
        """Queued and running tasks and when the oldest queued one was created (an indexed read)."""
        return await self._store.task_queue()


class Task:
    """Handle on one background action run."""

    ref_kind = "task"

    def __init__(self, task_id: str, book: TaskBook | None = None, record: TaskRecord | None = None) -> None:
        self._id = task_id
        self._book = book
        self._record = record

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"Task({self._id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("task", self._id))

    # -- sync API (docassemble) ----------------------------------------------------------------------
    def ready(self) -> bool:
        """True once the task has finished (succeeded or failed, callbacks included)."""
        return self._fetch().done

    def failed(self) -> bool:
        """True if the task failed (even when an error action handled it)."""
        return self._fetch().state == "failed"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the task finishes, at most ``timeout`` seconds; True if it finished."""
        book, loop = self._bridge("wait")
        limit = book.config.wait_timeout if timeout is None else timeout
        refuse_on_loop(loop, "Task.wait()", "await task.wait_async()")
        rec = run_on_loop(loop, book.wait(self._id, limit), limit + 5)
        self._record = rec
        return rec.done

    def get(self, timeout: float | None = None) -> Any:
        """The task's value, waiting (bounded) for it. Raises TaskFailed if it failed unhandled."""
        if not self.wait(timeout):
            raise TaskNotReady(f"task {self._id} did not finish within the wait; check it with: mailgate tasks show {self._id}")
        return self._value(self._fetch())

    def result(self) -> TaskResult:
        """Details of the result, including the error of a failed task."""
        return TaskResult.from_record(self._fetch())

    # -- async twins -------------------------------------------------------------------------------
    async def wait_async(self, timeout: float | None = None) -> bool:
        book, _ = self._bridge("wait_async")
        limit = book.config.wait_timeout if timeout is None else timeout
        self._record = await book.wait(self._id, limit)
        return self._record.done

    async def get_async(self, timeout: float | None = None) -> Any:
        if not await self.wait_async(timeout):
            raise TaskNotReady(f"task {self._id} did not finish within the wait; check it with: mailgate tasks show {self._id}")
        assert self._record is not None
        return self._value(self._record)

    async def refresh(self) -> TaskResult:
        book, _ = self._bridge("refresh")
        self._record = await book.get(self._id)
        return TaskResult.from_record(self._record)

    # -- internals ---------------------------------------------------------------------------------
    def _value(self, rec: TaskRecord) -> Any:
        if rec.state == "failed" and rec.result is None:
            raise TaskFailed(f"task {self._id} failed: {rec.error_type}: {rec.error_message}")
        return codec.decode_value(rec.result)["value"] if rec.result else None

    def _bridge(self, method: str) -> tuple[TaskBook, asyncio.AbstractEventLoop]:
        ctx = CURRENT.get()
        if ctx is not None and ctx.kind == "background":
            raise ActionError(f"Task.{method}() cannot be used in code that runs in the background (docassemble's timing rule)")
        book = self._book or (ctx.runtime.tasks if ctx is not None else None)
        if book is None or book.loop is None:
            raise ActionError(f"Task.{method}() needs a running mailgate: call it from an action, or load answers with Runtime.get_answers()")
        return book, book.loop

    def _fetch(self) -> TaskRecord:
        book, loop = self._bridge("ready")
        if on_loop(loop):
            ctx = CURRENT.get()
            rec = ctx.task_records.get(self._id) if ctx is not None else None
            rec = rec or self._record
            if rec is None:
                raise ActionError(f"task {self._id} was started by this action and cannot be read before the action ends")
            return rec
        rec = run_on_loop(loop, book.get(self._id), book.read_timeout)
        self._record = rec
        return rec


codec.register_reference("task", Task, Task)
