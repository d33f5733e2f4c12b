"""``send_email`` inside an automation step, journaled by (step, call index) (AUTOMATIONS.md G3).

The first time a step's n-th ``send_email`` runs, the message goes to the relay with a Message-ID
derived from (step, n), and the relay's answer is recorded in a commit of its own, fenced by the
run's claim (the step's attempt count moves with it, so the history shows a re-run). When the step
runs again because its runner died, the n-th call finds the record and returns its answer without
sending: a duplicate is only possible if the process dies between the relay's 250 and that commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mailgate.automations.context import CURRENT_RUN, StepRow
from mailgate.automations.flow import Automation
from mailgate.core.bridge import refuse_on_loop
from mailgate.core.context import CURRENT
from mailgate.outbound.message import Message, msgid_domain
from mailgate.outbound.transport import Outbound
from mailgate.store.base import (
    AutomationUpdate,
    Changes,
    ClaimedAutomation,
    JournalEntry,
    SessionRecord,
    StepUpdate,
    Store,
)


@dataclass
class Run:
    """What one run of one claimed automation carries between its parts."""

    claimed: ClaimedAutomation
    cls: type[Automation]
    version: int
    session: SessionRecord | None = None
    lease_holder: str | None = None
    threaded: list[StepRow] = field(default_factory=list)  # threaded steps whose task ended: their rows
    threaded_closed: bool = False  # a threaded step's task ended and closed its row: the pages hear of it
    sends: dict[str, int] = field(default_factory=dict)  # step id -> journaled send_email calls so far
    current_step: list[str | None] = field(default_factory=lambda: [None, None])  # step id, node
    # async step callables of this run being awaited on the loop (cancelled at the step budget)
    pending: set[concurrent.futures.Future[Any]] = field(default_factory=set)
    abandoned: bool = False  # past the step budget: its thread may go on, but runs no more async code
    # the claim of the automation due next, sent with this run's commit (same group commit): started
    # once this run has ended, in its slot
    successor: asyncio.Future[list[ClaimedAutomation]] | None = None

    @property
    def id(self) -> str:
        return self.claimed.automation.id


class SendJournal:
    """Journaled ``send_email`` for the runs of one runner (holder)."""

    def __init__(self, store: Store, outbound: Outbound, holder: str) -> None:
        self.store = store
        self.outbound = outbound
        self.holder = holder

    def hook(self, run: Run, ctx: Any) -> Callable[..., bool]:
        loop = asyncio.get_running_loop()

        def send(*args: Any, **kwargs: Any) -> bool:
            refuse_on_loop(loop, "task.send_email()", "await task.send_email_async(...)")
            message = args[0] if len(args) == 1 and not kwargs else None
            if not isinstance(message, Message):  # task.send_email(to, subject, ...): the author function
                from mailgate.author.sending import send_email  # noqa: PLC0415 - the author layer calls the core, not back
                token = CURRENT.set(ctx)
                try:
                    return send_email(*args, **kwargs)
                finally:
                    CURRENT.reset(token)
            run_state = CURRENT_RUN.get()
            step_id = run_state.step_id if run_state is not None else None
            future = asyncio.run_coroutine_threadsafe(self.send(run, step_id, message), loop)
            return bool(future.result(self.outbound.deadline + 10))

        return send

    def hook_async(self, run: Run, ctx: Any) -> Callable[..., Awaitable[bool]]:
        """``send_email_async`` inside an ``async def`` step (on the loop): journaled like ``send_email``."""

        async def send(*args: Any, **kwargs: Any) -> bool:
            message = args[0] if len(args) == 1 and not kwargs else None
            if not isinstance(message, Message):  # task.send_email_async(to, subject, ...): the author function
                from mailgate.author.sending import send_email_async  # noqa: PLC0415 - the author layer calls the core, not back
                token = CURRENT.set(ctx)
                try:
                    return await send_email_async(*args, **kwargs)
                finally:
                    CURRENT.reset(token)
            run_state = CURRENT_RUN.get()
            return await self.send(run, run_state.step_id if run_state is not None else None, message)

        return send

    async def send(self, run: Run, step_id: str | None, message: Message) -> bool:
        if step_id is None:  # a receiver: not a step, nothing to re-run
            return (await self.outbound.send_one(message)).accepted
        index = run.sends.get(step_id, 0)
        run.sends[step_id] = index + 1
        found = await self.store.journal_entry(step_id, index)
        if found is not None:
            return bool(json.loads(found.result).get("accepted"))
        message = replace(message, message_id=f"<{step_id}.{index}@{msgid_domain(message.sender)}>")
        accepted = (await self.outbound.send_one(message)).accepted
        auto = run.claimed.automation
        known = {s.id: s for s in run.claimed.steps}
        bump = []
        if step_id in known and known[step_id].state == "waiting":  # the attempt shows in the history
            s = known[step_id]
            bump.append(StepUpdate(s.id, "waiting", s.message, s.result, wake_at=s.wake_at, attempts=s.attempts + 1))
        update = AutomationUpdate(auto.id, run.version, self.holder, data=None, wake_at=auto.wake_at,
                                  steps_finished=bump, keep_claim=True,
                                  journal=[JournalEntry(step_id, index, "send_email",
                                                        json.dumps({"accepted": accepted,
                                                                    "message_id": message.message_id}))])
        await self.store.commit(Changes(automations=[update]))
        run.version += 1
        return accepted
