"""Task and DAEmail handles inside answers and arguments, filled from the store.

Answers keep tasks and e-mails by id (the answers codec's references); before an action runs, the
handles in its answers and arguments are bound to the readers behind them and filled with their
rows, in two store reads at most.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mailgate.core import answers as codec
from mailgate.core.daemail import DAEmail
from mailgate.core.emails import Emails
from mailgate.core.tasks import Task, TaskBook
from mailgate.store.base import Store, TaskRecord

Hydrate = Callable[..., Awaitable[dict[str, TaskRecord]]]


class References:
    def __init__(self, store: Store, tasks: TaskBook, emails: Emails) -> None:
        self._store = store
        self._tasks = tasks
        self._emails = emails

    async def hydrate(self, *values: Any) -> dict[str, TaskRecord]:
        """Fill the Task and DAEmail references inside ``values``; the task rows read, by id."""
        refs = [r for v in values for r in codec.references(v)]
        tasks = [r for r in refs if isinstance(r, Task)]
        emails = [r for r in refs if isinstance(r, DAEmail)]
        records = await self._store.get_tasks([t.id for t in tasks]) if tasks else {}
        for t in tasks:
            t._book = self._tasks
            t._record = records.get(t.id)
        if emails:
            found = await self._emails.get_many([e.id for e in emails])
            for e in emails:
                e._emails, e._loop = self._emails, self._tasks.loop
                if e.id in found:
                    e._fill(found[e.id], await self._emails.stored_bodies(found[e.id]))
        return records
