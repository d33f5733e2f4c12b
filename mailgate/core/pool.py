"""The worker pool: claims background tasks from the store and runs them, up to ``[tasks] workers``
at once, with a lease it keeps alive by heartbeat; on stop, what does not finish within the grace
period goes back to the queue."""

from __future__ import annotations

import asyncio
import logging
import time

from mailgate import metrics
from mailgate.config import TasksConfig
from mailgate.core.background import TaskRunner, lost_task
from mailgate.core.commits import Commits
from mailgate.core.jobs import finish_within
from mailgate.errors import LeaseLost, StoreError
from mailgate.store.base import SessionRecord, Store, TaskRecord

log = logging.getLogger(__name__)


class WorkerPool:
    """Claims tasks from the store and runs up to ``config.workers`` of them at once."""

    def __init__(self, store: Store, commits: Commits, runner: TaskRunner, config: TasksConfig, worker_id: str) -> None:
        self._store = store
        self._commits = commits
        self._runner = runner
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
        """Claim loop; runs until :meth:`stop`.

        A store that refuses the claim for a while (full, locked) is logged once per outage and
        asked again every ``poll_interval``: the queued tasks wait in the store, nothing is lost, and
        the daemon's other roles keep serving. Any other error propagates (the daemon stops).
        """
        self._commits.add_task_listener(self.wake)
        self._store.watch_tasks(self.wake)  # tasks queued by other processes, where the store can ring
        heartbeat = asyncio.create_task(self._heartbeat(), name="task-heartbeat")
        failing = False
        try:
            while not self._stopping:
                # Cleared before looking, so a wake-up that arrives while we claim is not lost.
                self._wake.clear()
                free = self.config.workers - len(self.running)
                if free > 0:
                    try:
                        claim = await self._store.claim_tasks(self.worker_id, free, self.config.lease, lost_task)
                    except StoreError as exc:
                        if not failing:
                            log.error("claiming tasks failed: %s; trying again every %g s", exc, self.config.poll_interval,
                                      extra={"event": "task.claim_failed"})
                        failing = True
                        await asyncio.sleep(self.config.poll_interval)
                        continue
                    if failing:
                        log.info("claiming tasks works again", extra={"event": "task.claim_recovered"})
                        failing = False
                    if claim.events:
                        self._commits.after_commit(claim.events, False)
                    claimed = claim.tasks
                    if claimed:
                        try:
                            sessions = await self._store.get_sessions([rec.session_id for rec in claimed])
                        except StoreError:
                            sessions = {}  # each task reads its session itself (and fails to, if the store is still down)
                        for rec in claimed:
                            self._start(rec, sessions.get(rec.session_id))
                    if len(claimed) == free:
                        continue  # there may be more: claim again once a slot frees up
                try:
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
                except TimeoutError:
                    pass
        finally:
            self._commits.remove_task_listener(self.wake)
            heartbeat.cancel()

    def _start(self, rec: TaskRecord, session: SessionRecord | None) -> None:
        metrics.TASK_START_LATENCY.observe(max(0.0, self._store.now() - rec.created_at))
        job = asyncio.create_task(self._execute(rec, session), name=f"task-{rec.id}")
        self.running[rec.id] = job
        job.add_done_callback(lambda _: self._done(rec.id))

    def _done(self, task_id: str) -> None:
        self.running.pop(task_id, None)
        self.completed += 1
        self._wake.set()

    async def _execute(self, rec: TaskRecord, session: SessionRecord | None) -> None:
        started = time.monotonic()
        try:
            await self._runner.execute(rec, self.worker_id, session)
            metrics.TASK_DURATION.observe(time.monotonic() - started)
        except LeaseLost as exc:
            if await self._cancelled(rec.id):
                log.warning("task %s was cancelled while it ran (mailgate tasks cancel); its result was discarded",
                            rec.id, extra={"event": "task.cancelled_while_running", "task": rec.id, "session": rec.session_id})
            else:
                log.warning("task %s: %s; its result was discarded", rec.id, exc, extra={"event": "task.lease_lost", "task": rec.id, "session": rec.session_id})
        except asyncio.CancelledError:
            raise
        except StoreError as exc:  # the store's message says what to do; a traceback would add nothing
            log.error("task %s could not be finished: %s; it will be retried", rec.id, exc, extra={"event": "task.store_error", "task": rec.id, "session": rec.session_id})
        except Exception:
            # A bug or a store failure: the task stays claimed and is rerun after its lease expires.
            log.exception("task %s could not be finished; it will be retried", rec.id, extra={"event": "task.crashed", "task": rec.id, "session": rec.session_id})

    async def _cancelled(self, task_id: str) -> bool:
        """Whether an operator cancelled the task (so its lost finish is no lease expiry)."""
        try:
            rec = await self._store.get_task(task_id)
        except StoreError:
            return False
        return rec is not None and rec.error_type == "Cancelled"

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease / 3)
            if self.running:
                try:
                    await self._store.heartbeat(self.worker_id, list(self.running), self.config.lease)
                except StoreError as exc:
                    log.error("task heartbeat failed: %s", exc, extra={"event": "task.heartbeat_failed"})
                except Exception:
                    log.exception("task heartbeat failed", extra={"event": "task.heartbeat_failed"})

    async def stop(self, grace: float) -> None:
        """Stop claiming, let running tasks finish within ``grace``, give the rest back to the queue."""
        self._stopping = True
        self._wake.set()
        leftover = await finish_within(self.running, grace)
        if leftover:
            await self._store.release_tasks(self.worker_id, leftover)
            log.warning("gave %d unfinished tasks back to the queue", len(leftover), extra={"event": "task.released"})
