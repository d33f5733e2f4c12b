"""Encryption at rest for the automations' tables: the part of :class:`~mailgate.store.sealed.SealedStore`
that seals what automations write and opens what they read (mixed into it, like the backends' own
automation mixins).

Sealed (see :data:`AUTOMATION_SEALED`), each bound to its table, column and row: an automation's data
and owner; a step's message, result, errors and ``submitted_by``; a message's token (the mailbox key
of an ``email`` message, or text a sender chose), data, sender and result; a journal entry's result.
``unique_key`` becomes a keyed hash under the store's index key: the core makes it a SHA-256 of the
unique fields' values, which anyone can recompute for a guessed value (an e-mail address), while the
keyed hash stays comparable for the database's unique index. In clear, because the store queries,
indexes or orders by them and they hold no user text: ids, the class, states, node names, the URL
``key`` (an HMAC already), ``version``, due times, claims, attempts, error types, message names,
broadcast classes, times, and a step's assignee (a user id, and privilege names: ``open_interactions``
selects by them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from mailgate.store.base import (
    AutomationRecord,
    AutomationStart,
    AutomationUpdate,
    ClaimedAutomation,
    JournalEntry,
    JournalRecord,
    MessageDone,
    MessageRecord,
    NewAutomation,
    NewMessage,
    NewStep,
    Recheck,
    StepRecord,
    StepUpdate,
    Store,
)

# table -> (row id column, sealed text columns); the journal's row is "step id/call index" (its key)
AUTOMATION_SEALED: dict[str, tuple[str, tuple[str, ...]]] = {
    "automations": ("id", ("data", "owner")),
    "automation_steps": ("id", ("message", "result", "error_message", "error_trace", "submitted_by")),
    "automation_messages": ("id", ("token", "data", "sender", "result")),
    "automation_journal": ("step_id", ("result",)),
}
STEP_SEALED = AUTOMATION_SEALED["automation_steps"][1]
MESSAGE_SEALED = ("token", "data", "sender")  # result: set when the message is consumed (MessageDone)
T = TypeVar("T")


def replace_record(record: T, **changes: Any) -> T:
    """``dataclasses.replace`` for the store's frozen records, at a fraction of its cost (it runs on
    every read and write of a sealed value); records without a ``__dict__`` take the slow way."""
    if not hasattr(record, "__dict__"):
        return dataclasses.replace(record, **changes)  # type: ignore[type-var]
    new = object.__new__(type(record))
    new.__dict__.update(record.__dict__)
    new.__dict__.update(changes)
    return new


_with = replace_record


def journal_row(step_id: str, call_index: int) -> str:
    """The row a journal entry's result is bound to: its step and call index (its primary key)."""
    return f"{step_id}/{call_index}"


class SealedAutomations:
    """The automation methods of SealedStore (which provides the codec below)."""

    inner: Store

    # -- SealedStore's codec --------------------------------------------------------------------------
    def _seal(self, table: str, column: str, row: str, value: str) -> str:
        raise NotImplementedError

    def _seal_opt(self, table: str, column: str, row: str, value: str | None) -> str | None:
        raise NotImplementedError

    def _open(self, table: str, column: str, row: str, value: str) -> str:
        raise NotImplementedError

    def _open_opt(self, table: str, column: str, row: str, value: str | None) -> str | None:
        raise NotImplementedError

    async def _hash(self, value: str) -> str:
        raise NotImplementedError

    # -- writing -------------------------------------------------------------------------------------
    async def _new_automation(self, a: NewAutomation) -> NewAutomation:
        return _with(a, data=self._seal("automations", "data", a.id, a.data),
                     owner=self._seal("automations", "owner", a.id, a.owner),
                     unique_key=None if a.unique_key is None else await self._hash(a.unique_key))

    def _new_step(self, s: NewStep) -> NewStep:
        return _with(s, **{c: self._seal_opt("automation_steps", c, s.id, getattr(s, c)) for c in STEP_SEALED
                           if c != "submitted_by"})

    def _step_update(self, s: StepUpdate) -> StepUpdate:
        return _with(s, **{c: self._seal_opt("automation_steps", c, s.step_id, getattr(s, c)) for c in STEP_SEALED})

    def _new_message(self, m: NewMessage) -> NewMessage:
        return _with(m, token=self._seal_opt("automation_messages", "token", m.id, m.token),
                     data=self._seal("automation_messages", "data", m.id, m.data),
                     sender=self._seal("automation_messages", "sender", m.id, m.sender),
                     closes_step=None if m.closes_step is None else self._step_update(m.closes_step))

    def _new_messages(self, messages: Sequence[NewMessage]) -> list[NewMessage]:
        return [self._new_message(m) for m in messages]

    def _message_done(self, d: MessageDone) -> MessageDone:
        return _with(d, result=self._seal_opt("automation_messages", "result", d.message_id, d.result))

    def _journal(self, j: JournalEntry) -> JournalEntry:
        return _with(j, result=self._seal("automation_journal", "result", journal_row(j.step_id, j.call_index), j.result))

    async def _start(self, s: AutomationStart) -> AutomationStart:
        return AutomationStart(await self._new_automation(s.automation), [self._new_step(st) for st in s.steps],
                               self._new_messages(s.messages))

    def _update(self, u: AutomationUpdate) -> AutomationUpdate:
        return _with(
            u, data=self._seal_opt("automations", "data", u.automation_id, u.data),
            steps_finished=[self._step_update(s) for s in u.steps_finished],
            steps_opened=[self._new_step(s) for s in u.steps_opened],
            messages_done=[self._message_done(d) for d in u.messages_done],
            journal=[self._journal(j) for j in u.journal])

    # -- reading -------------------------------------------------------------------------------------
    def _automation(self, r: AutomationRecord) -> AutomationRecord:
        return _with(r, data=self._open("automations", "data", r.id, r.data),
                     owner=self._open("automations", "owner", r.id, r.owner))

    def _step(self, r: StepRecord) -> StepRecord:
        return _with(r, **{c: self._open_opt("automation_steps", c, r.id, getattr(r, c)) for c in STEP_SEALED})

    def _message(self, r: MessageRecord) -> MessageRecord:
        return _with(r, token=self._open_opt("automation_messages", "token", r.id, r.token),
                     data=self._open("automation_messages", "data", r.id, r.data),
                     sender=self._open("automation_messages", "sender", r.id, r.sender),
                     result=self._open_opt("automation_messages", "result", r.id, r.result))

    def _claimed_automation(self, c: ClaimedAutomation) -> ClaimedAutomation:
        return ClaimedAutomation(self._automation(c.automation), tuple(self._step(s) for s in c.steps),
                                 tuple(self._message(m) for m in c.messages))

    # -- the Store methods ---------------------------------------------------------------------------
    async def create_automation(self, new: NewAutomation, steps: Sequence[NewStep] = (),
                                messages: Sequence[NewMessage] = ()) -> tuple[AutomationRecord, bool]:
        start = await self._start(AutomationStart(new, steps, messages))
        rec, created = await self.inner.create_automation(start.automation, start.steps, start.messages)
        if created and rec.data == start.automation.data and rec.owner == start.automation.owner:
            return _with(rec, data=new.data, owner=new.owner), True  # just sealed here: no need to open them again
        return self._automation(rec), created

    async def claim_automations(self, holder: str, limit: int, lease: float) -> list[ClaimedAutomation]:
        return [self._claimed_automation(c) for c in await self.inner.claim_automations(holder, limit, lease)]

    async def heartbeat_automations(self, holder: str, automation_ids: Sequence[str], lease: float) -> list[str]:
        return await self.inner.heartbeat_automations(holder, automation_ids, lease)

    async def release_automations(self, holder: str, automation_ids: Sequence[str], wake_at: float | None = None) -> None:
        await self.inner.release_automations(holder, automation_ids, wake_at)

    async def recheck_automations(self, holder: str, rechecks: Sequence[Recheck]) -> list[str]:
        return await self.inner.recheck_automations(holder, rechecks)  # ids, versions and times: in clear

    async def next_wake(self) -> float | None:
        return await self.inner.next_wake()

    async def get_automation(self, automation_id: str) -> AutomationRecord | None:
        rec = await self.inner.get_automation(automation_id)
        return None if rec is None else self._automation(rec)

    async def get_automation_by_key(self, key: str) -> AutomationRecord | None:
        rec = await self.inner.get_automation_by_key(key)  # the key is an HMAC already, looked up as it is
        return None if rec is None else self._automation(rec)

    async def list_automations(self, *, cls: str | None = None, state: str | None = None,
                               session_id: str | None = None, after_seq: int = 0,
                               limit: int = 100) -> list[AutomationRecord]:
        return [self._automation(r) for r in await self.inner.list_automations(
            cls=cls, state=state, session_id=session_id, after_seq=after_seq, limit=limit)]

    async def automation_history(self, automation_id: str) -> list[StepRecord]:
        return [self._step(s) for s in await self.inner.automation_history(automation_id)]

    async def get_automation_step(self, step_id: str) -> StepRecord | None:
        step = await self.inner.get_automation_step(step_id)
        return None if step is None else self._step(step)

    async def get_automation_message(self, message_id: str) -> MessageRecord | None:
        found = await self.inner.get_automation_message(message_id)
        return None if found is None else self._message(found)

    async def automation_messages(self, automation_id: str) -> list[MessageRecord]:
        return [self._message(m) for m in await self.inner.automation_messages(automation_id)]

    async def queued_broadcasts(self, limit: int = 100) -> list[MessageRecord]:
        return [self._message(m) for m in await self.inner.queued_broadcasts(limit)]

    async def enqueue_message(self, message: NewMessage) -> MessageRecord:
        sealed = self._new_message(message)
        rec = await self.inner.enqueue_message(sealed)
        if (rec.token, rec.data, rec.sender, rec.result) == (sealed.token, sealed.data, sealed.sender, None):
            return _with(rec, token=message.token, data=message.data, sender=message.sender)  # just sealed here
        return self._message(rec)

    async def open_interactions(self, user_id: str | None, privileges: Sequence[str],
                                limit: int = 100) -> list[tuple[AutomationRecord, StepRecord]]:
        # the assignee (a user id, privilege names) stays clear: the store selects by it
        return [(self._automation(a), self._step(s)) for a, s in await self.inner.open_interactions(user_id, privileges, limit)]

    async def submit_interaction(self, automation_id: str, step_id: str, expected_version: int, *,
                                 submitted_by: str, data: str, result: str | None = None) -> AutomationRecord:
        return self._automation(await self.inner.submit_interaction(
            automation_id, step_id, expected_version,
            submitted_by=self._seal("automation_steps", "submitted_by", step_id, submitted_by),
            data=self._seal("automations", "data", automation_id, data),
            result=self._seal_opt("automation_steps", "result", step_id, result)))

    async def kill_automation(self, automation_id: str) -> bool:
        return await self.inner.kill_automation(automation_id)

    async def retry_automation(self, automation_id: str) -> AutomationRecord:
        return self._automation(await self.inner.retry_automation(automation_id))

    async def goto_automation(self, automation_id: str, node: str, step_id: str) -> AutomationRecord:
        # the skipped steps' message ("goto <node>", a node name) is written by the store, in clear
        return self._automation(await self.inner.goto_automation(automation_id, node, step_id))

    async def delete_automation_history(self, before: float) -> tuple[int, int]:
        return await self.inner.delete_automation_history(before)

    async def count_automations(self) -> dict[str, int]:
        return await self.inner.count_automations()

    async def automation_backlog(self) -> tuple[int, float | None]:
        return await self.inner.automation_backlog()

    async def journal_entry(self, step_id: str, call_index: int) -> JournalRecord | None:
        rec = await self.inner.journal_entry(step_id, call_index)
        if rec is None:
            return None
        return _with(rec, result=self._open("automation_journal", "result", journal_row(step_id, call_index), rec.result))

