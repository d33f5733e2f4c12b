"""Committing what actions produced, and telling this process about it.

Every change of durable state that an action, a task or a delivery made goes through
:meth:`Commits.commit` (one store transaction); then this process learns what it did: the event
feed is woken for its events (it reads them from the store: its cursor moves only by what the store returns), the worker pool for its new tasks, waiters for its finished tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mailgate.core.events import EventFeed
from mailgate.core.tasks import TaskBook
from mailgate.store.base import Changes, CommitResult, EventRecord, Store


class Commits:
    def __init__(self, store: Store, feed: EventFeed, tasks: TaskBook) -> None:
        self._store = store
        self._feed = feed
        self._tasks = tasks
        self._task_listeners: list[Callable[[], None]] = []

    def add_task_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever this process commits new tasks (the worker pool's wake-up)."""
        self._task_listeners.append(callback)

    def remove_task_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._task_listeners:
            self._task_listeners.remove(callback)

    async def commit(self, changes: Changes) -> CommitResult:
        result = await self._store.commit(changes)
        if changes.finish is not None:
            self._tasks.finished(changes.finish.task_id)
        self.after_commit(result.events, bool(changes.new_tasks))
        return result

    def after_commit(self, events: Sequence[EventRecord], new_tasks: bool) -> None:
        """Tell this process what a commit did: its events to the event feed, its tasks to the
        workers."""
        self._feed.committed(events)
        if new_tasks:
            for listener in list(self._task_listeners):
                listener()
