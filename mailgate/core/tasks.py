"""Background tasks: the Task handle that interview code keeps in its answers, and the worker pool.

A Task is stored in answers by id. Its methods follow docassemble (``ready``, ``failed``, ``wait``,
``get``, ``result``) and read the task's durable row. In a sync handler (a worker thread) they ask
the event loop for a fresh row; on the event loop itself (an async handler) they use the row read
when the action's answers were loaded, because a blocking read there would stall the loop; the
blocking waits have async twins (``wait_async``, ``get_async``) for that case. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailgate.config import TasksConfig
from mailgate.core import answers as codec
from mailgate.core.context import CURRENT
from mailgate.errors import ActionError, LeaseLost, StoreError, TaskFailed, TaskNotReady
from mailgate.store.base import SessionRecord, TaskRecord

if TYPE_CHECKING:
    from mailgate.core.runtime import Runtime

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


class Task:
    """Handle on one background action run."""

    ref_kind = "task"

    def __init__(self, task_id: str, runtime: Runtime | None = None, record: TaskRecord | None = None) -> None:
        self._id = task_id
        self._runtime = runtime
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
        runtime, loop = self._bridge("wait")
        limit = runtime.config.tasks.wait_timeout if timeout is None else timeout
        if self._on_loop(loop):
            raise ActionError("Task.wait() would block the event loop; in an async handler use `await task.wait_async()`")
        future = asyncio.run_coroutine_threadsafe(runtime.wait_task(self._id, limit), loop)
        rec = future.result(limit + 5)
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
        runtime, _ = self._bridge("wait_async")
        limit = runtime.config.tasks.wait_timeout if timeout is None else timeout
        self._record = await runtime.wait_task(self._id, limit)
        return self._record.done

    async def get_async(self, timeout: float | None = None) -> Any:
        if not await self.wait_async(timeout):
            raise TaskNotReady(f"task {self._id} did not finish within the wait; check it with: mailgate tasks show {self._id}")
        assert self._record is not None
        return self._value(self._record)

    async def refresh(self) -> TaskResult:
        runtime, _ = self._bridge("refresh")
        self._record = await runtime.get_task_record(self._id)
        return TaskResult.from_record(self._record)

    # -- internals ---------------------------------------------------------------------------------
    def _value(self, rec: TaskRecord) -> Any:
        if rec.state == "failed" and rec.result is None:
            raise TaskFailed(f"task {self._id} failed: {rec.error_type}: {rec.error_message}")
        return codec.decode_value(rec.result)["value"] if rec.result else None

    def _bridge(self, method: str) -> tuple[Runtime, asyncio.AbstractEventLoop]:
        ctx = CURRENT.get()
        if ctx is not None and ctx.kind == "background":
            raise ActionError(f"Task.{method}() cannot be used in code that runs in the background (docassemble's timing rule)")
        runtime = self._runtime or (ctx.runtime if ctx is not None else None)
        if runtime is None:
            raise ActionError(f"Task.{method}() needs a running mailgate: call it from an action, or load answers with Runtime.get_answers()")
        return runtime, runtime.loop

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _fetch(self) -> TaskRecord:
        runtime, loop = self._bridge("ready")
        if self._on_loop(loop):
            ctx = CURRENT.get()
            rec = ctx.task_records.get(self._id) if ctx is not None else None
            rec = rec or self._record
            if rec is None:
                raise ActionError(f"task {self._id} was started by this action and cannot be read before the action ends")
            return rec
        rec = asyncio.run_coroutine_threadsafe(runtime.get_task_record(self._id), loop).result(runtime.config.sessions.lock_timeout + 5)
        self._record = rec
        return rec


codec.register_reference("task", Task, Task)


class WorkerPool:
    """Claims tasks from the store and runs up to ``config.workers`` of them at once."""

    def __init__(self, runtime: Runtime, config: TasksConfig, worker_id: str) -> None:
        self.runtime = runtime
        self.config = config
        self.worker_id = worker_id
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self.completed = 0

    def wake(self) -> None:
        """New work may be queued (called after a local commit that queued tasks)."""
        self._wake.set()

    async def run(self) -> None:
        """Claim loop; runs until :meth:`stop`. A store error propagates (the daemon stops)."""
        self.runtime.add_task_listener(self.wake)
        heartbeat = asyncio.create_task(self._heartbeat(), name="task-heartbeat")
        try:
            while not self._stopping:
                # Cleared before looking, so a wake-up that arrives while we claim is not lost.
                self._wake.clear()
                free = self.config.workers - len(self.running)
                if free > 0:
                    claimed = await self.runtime.store.claim_tasks(self.worker_id, free, self.config.lease)
                    if claimed:
                        sessions = await self.runtime.store.get_sessions([rec.session_id for rec in claimed])
                        for rec in claimed:
                            self._start(rec, sessions.get(rec.session_id))
                    if len(claimed) == free:
                        continue  # there may be more: claim again once a slot frees up
                try:
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
                except TimeoutError:
                    pass
        finally:
            self.runtime.remove_task_listener(self.wake)
            heartbeat.cancel()

    def _start(self, rec: TaskRecord, session: SessionRecord | None) -> None:
        job = asyncio.create_task(self._execute(rec, session), name=f"task-{rec.id}")
        self.running[rec.id] = job
        job.add_done_callback(lambda _: self._done(rec.id))

    def _done(self, task_id: str) -> None:
        self.running.pop(task_id, None)
        self.completed += 1
        self._wake.set()

    async def _execute(self, rec: TaskRecord, session: SessionRecord | None) -> None:
        try:
            await self.runtime.execute_task(rec, self.worker_id, session)
        except LeaseLost as exc:
            log.warning("task %s: %s; its result was discarded", rec.id, exc, extra={"event": "task.lease_lost"})
        except asyncio.CancelledError:
            raise
        except StoreError as exc:  # the store's message says what to do; a traceback would add nothing
            log.error("task %s could not be finished: %s; it will be retried", rec.id, exc, extra={"event": "task.store_error"})
        except Exception:
            # A bug or a store failure: the task stays claimed and is rerun after its lease expires.
            log.exception("task %s could not be finished; it will be retried", rec.id, extra={"event": "task.crashed"})

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease / 3)
            if self.running:
                try:
                    await self.runtime.store.heartbeat(self.worker_id, list(self.running), self.config.lease)
                except StoreError as exc:
                    log.error("task heartbeat failed: %s", exc, extra={"event": "task.heartbeat_failed"})
                except Exception:
                    log.exception("task heartbeat failed", extra={"event": "task.heartbeat_failed"})

    async def stop(self, grace: float) -> None:
        """Stop claiming, let running tasks finish within ``grace``, give the rest back to the queue."""
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            await asyncio.wait(list(self.running.values()), timeout=max(0.0, deadline - time.monotonic()))
        leftover = list(self.running)
        jobs = list(self.running.values())
        for job in jobs:
            job.cancel()
        if leftover:
            await asyncio.gather(*jobs, return_exceptions=True)
            await self.runtime.store.release_tasks(self.worker_id, leftover)
            log.warning("gave %d unfinished tasks back to the queue", len(leftover), extra={"event": "task.released"})
