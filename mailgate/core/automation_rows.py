"""Automation rows between the store's records (JSON text) and the engine's objects (decoded values).

The store keeps JSON text it never interprets; the engine works on :class:`StepRow` and decoded
data. These functions are the one place where one becomes the other, so that the runner and the
author runtime agree on the encoding (the tagged codec of answers).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from mailgate.automations import engine
from mailgate.automations.context import OutgoingMessage, StepRow
from mailgate.automations.engine import MessageOutcome, QueuedMessage
from mailgate.core import answers as codec
from mailgate.store.base import (
    MessageDone,
    MessageRecord,
    NewMessage,
    NewStep,
    StepRecord,
    StepUpdate,
)

# The background task that runs a ``threaded=True`` Execute node on the worker pool (arguments: the
# step's id and node); its end sends ``task_done`` with this token, and the runner then finishes the step.
THREADED_ACTION = "mailgate.automation_step"


def threaded_outcome(arguments: str, value: Any, error: tuple[str, str, str | None] | None) -> StepUpdate | None:
    """The row of a ``threaded=True`` step once its task (with these ``arguments``) ended, for
    ``NewMessage.closes_step``: done with the task's (storable) value, or failed with its error
    (type, message, trace)."""
    step_id = codec.decode_value(arguments).get("step")
    if not isinstance(step_id, str):
        return None
    if error is None:
        return StepUpdate(step_id, "done", "OK", result=value_text(engine.storable(value)))
    kind, message, trace = error
    return StepUpdate(step_id, "failed", f"{kind}({message!r})", error_type=kind, error_message=message,
                      error_trace=trace)


def value_text(value: Any) -> str | None:
    """A stored result: None stays None (the column is NULL), anything else through the codec."""
    return None if value is None else codec.encode_value(value)


def text_value(text: str | None) -> Any:
    return None if text is None else codec.decode_value(text)


def step_row(rec: StepRecord) -> StepRow:
    return StepRow(
        id=rec.id, node=rec.node, state=rec.state, created_at=rec.created_at, previous_id=rec.previous_id,
        split_id=rec.split_id, message=rec.message, result=text_value(rec.result), error_type=rec.error_type,
        error_message=rec.error_message, error_trace=rec.error_trace, wake_at=rec.wake_at, attempts=rec.attempts,
        started_at=rec.started_at, finished_at=rec.finished_at, assignee_user=rec.assignee_user,
        assignee_privileges=json.loads(rec.assignee_privileges) if rec.assignee_privileges else None,
        submitted_by=rec.submitted_by,
    )


def new_step(row: StepRow) -> NewStep:
    return NewStep(
        id=row.id, node=row.node, state=row.state, previous_id=row.previous_id, split_id=row.split_id,  # type: ignore[arg-type]
        wake_at=row.wake_at, message=row.message, result=value_text(row.result), error_type=row.error_type,
        error_message=row.error_message, error_trace=row.error_trace, attempts=row.attempts,
        started=row.started_at is not None, assignee_user=row.assignee_user,
        assignee_privileges=json.dumps(row.assignee_privileges) if row.assignee_privileges is not None else None,
    )


def step_update(row: StepRow) -> StepUpdate:
    return StepUpdate(
        step_id=row.id, state=row.state, message=row.message, result=value_text(row.result),  # type: ignore[arg-type]
        error_type=row.error_type, error_message=row.error_message, error_trace=row.error_trace, wake_at=row.wake_at,
        attempts=row.attempts, submitted_by=row.submitted_by,
    )


def queued(rec: MessageRecord) -> QueuedMessage:
    return QueuedMessage(rec.id, rec.message, rec.token, codec.decode_value(rec.data), rec.sender)


def message_done(out: MessageOutcome) -> MessageDone:
    return MessageDone(out.id, "delivered" if out.state == "delivered" else "dropped", value_text(out.result))


def sender_json(automation_id: str | None, step_id: str | None = None, user: str | None = None) -> str:
    """Who sent a message: an automation's step or receiver, or a user (JSON of the user) from outside."""
    found: dict[str, Any] = {}
    if automation_id is not None:
        found["automation"] = automation_id
    if step_id is not None:
        found["step"] = step_id
    if user is not None:
        found["user"] = json.loads(user)
    return json.dumps(found, separators=(",", ":"))


def new_message(out: OutgoingMessage, automation_id: str | None) -> NewMessage:
    return NewMessage(id=uuid.uuid4().hex, message=out.message, automation_id=out.automation_id,
                      broadcast_class=out.broadcast_class, token=out.token, data=codec.encode_value(out.data),
                      sender=sender_json(automation_id, out.step_id))


def step_ids(automation_id: str, snap: engine.Snapshot) -> Callable[[], str]:
    """Step ids derived from what the run starts from: a re-run after its runner died makes the same
    ids, so a step's journal (keyed by step id) is found again."""
    seed = "|".join([automation_id, *sorted(s.id for s in snap.steps if s.state in engine.OPEN_STATES)])
    counter = [0]

    def new_id() -> str:
        counter[0] += 1
        return hashlib.sha256(f"{seed}|{counter[0]}".encode()).hexdigest()[:32]

    return new_id


def automation_event(automation_id: str, cls: str, snap: engine.Snapshot, out: engine.Outcome) -> dict[str, Any]:
    """The ``automation`` event for the bound session's pages."""
    steps = {s.id: s for s in snap.steps}
    steps.update({s.id: s for s in (*out.updated, *out.created)})
    open_steps = [s for s in steps.values() if s.state in engine.OPEN_STATES] if out.state == "running" else []
    return {"id": automation_id, "class": cls, "state": out.state,
            "open": sorted({s.node for s in open_steps}),
            "interactions": [{"step": s.id, "node": s.node} for s in open_steps if s.state == "interaction"]}
