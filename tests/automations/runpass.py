"""One pass of "run what is due now" for the admin tests, until the runner's own pass (branch
autorun) is merged: claim the due automations, advance each with the pure engine, commit fenced."""

from __future__ import annotations

import json

from mailgate.automations import engine
from mailgate.automations.context import StepRow
from mailgate.automations.registry import AutomationRegistry
from mailgate.core import answers as codec
from mailgate.core.automation_admin import _row
from mailgate.store.base import AutomationUpdate, Changes, MessageDone, NewStep, StepUpdate, Store


def _text(value: object) -> str | None:
    return None if value is None else codec.encode_value(value)


def _new(row: StepRow) -> NewStep:
    return NewStep(id=row.id, node=row.node, state=row.state, previous_id=row.previous_id,  # type: ignore[arg-type]
                   split_id=row.split_id, wake_at=row.wake_at, message=row.message, result=_text(row.result),
                   error_type=row.error_type, error_message=row.error_message, error_trace=row.error_trace,
                   attempts=row.attempts, started=row.started_at is not None, assignee_user=row.assignee_user,
                   assignee_privileges=json.dumps(row.assignee_privileges) if row.assignee_privileges else None)


def _update(row: StepRow) -> StepUpdate:
    return StepUpdate(step_id=row.id, state=row.state, message=row.message, result=_text(row.result),  # type: ignore[arg-type]
                      error_type=row.error_type, error_message=row.error_message, error_trace=row.error_trace,
                      wake_at=row.wake_at, attempts=row.attempts, submitted_by=row.submitted_by)


async def run_due(store: Store, classes: AutomationRegistry, holder: str = "test-pass") -> int:
    """Advance every due automation once; how many ran."""
    claimed = await store.claim_automations(holder, 100, 30.0)
    for c in claimed:
        rec = c.automation
        history = await store.automation_history(rec.id)
        snap = engine.Snapshot(rec.id, codec.decode(rec.data), [_row(s) for s in history],
                               [engine.QueuedMessage(m.id, m.message, m.token, codec.decode_value(m.data), m.sender)
                                for m in c.messages],
                               session_id=rec.session_id, state=rec.state, fresh=not history)
        out = engine.advance(classes.resolve(rec.cls), snap, now=store.now())
        await store.commit(Changes(automations=[AutomationUpdate(
            rec.id, rec.version, holder, state=out.state, data=codec.encode(out.data),  # type: ignore[arg-type]
            wake_at=out.wake_at, steps_finished=[_update(r) for r in out.updated],
            steps_opened=[_new(r) for r in out.created],
            messages_done=[MessageDone(m.id, "delivered" if m.state == "delivered" else "dropped", _text(m.result))
                           for m in out.messages])]))
    return len(claimed)
