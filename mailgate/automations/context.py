"""What a step's code sees (``task``) and where its outgoing messages go."""

from __future__ import annotations

import contextvars
import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailgate.automations.errors import AutomationError
from mailgate.core.context import CURRENT

_AUTOMATION_ID = re.compile(r"[0-9a-f]{32}\Z")  # ids are uuid4().hex, like task ids


@dataclass
class StepRow:
    """One step row (the shared data model's ``automation_steps``; times are epoch seconds)."""

    id: str
    node: str
    state: str
    created_at: float
    previous_id: str | None = None
    split_id: str | None = None
    message: str | None = None
    result: Any = None  # a Python value; the runner encodes it with the tagged codec
    error_type: str | None = None
    error_message: str | None = None
    error_trace: str | None = None
    wake_at: float | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    assignee_user: str | None = None
    assignee_privileges: list[str] | None = None
    submitted_by: str | None = None  # the submitting user's JSON


@dataclass(frozen=True)
class OutgoingMessage:
    """A message a step or receiver sent: exactly one of ``automation_id`` / ``broadcast_class`` is set.
    The runner stores it as a queued message row in the same commit; it is never delivered in-process."""

    automation_id: str | None
    broadcast_class: str | None
    message: str
    token: str | None
    data: Any
    step_id: str | None  # the sending step (None: a receiver)


@dataclass
class Outbox:
    """Collects the messages sent during one engine run (``flow.CURRENT_RUN`` points at it)."""

    sent: list[OutgoingMessage] = field(default_factory=list)
    step_id: str | None = None
    node: str | None = None  # the node of ``step_id`` (what the runner blames for an overrun budget)

    def send(self, automation_id: str | None, cls: type | None, message: str, token: str | None,
             data: Any) -> OutgoingMessage | None:
        """Record one message; to a class whose receiver's ``@require_data_parameters`` the data does not
        meet, nothing is recorded and the result is None (checked at send time, as the seed)."""
        if not isinstance(message, str) or not message:
            raise AutomationError(f"send_message: the message name must be a non-empty string, not {message!r}")
        if token is not None and not isinstance(token, str):
            raise AutomationError(f"send_message({message!r}): the token must be a string or None, not {type(token).__name__}")
        broadcast = None
        if cls is not None:
            if not cls.satisfies_data_requirements(message, data):  # type: ignore[attr-defined]
                return None
            broadcast = cls.get_automation_class_name()  # type: ignore[attr-defined]
        out = OutgoingMessage(automation_id, broadcast, message, token, data, self.step_id)
        self.sent.append(out)
        return out

    def send_to(self, target: Any, message: str, token: str | None, data: Any) -> OutgoingMessage | None:
        """``SendMessage``'s target: an instance or id (one automation), a class or class name (broadcast).
        A string of 32 hex digits is an automation id; any other string names a class."""
        if hasattr(type(target), "get_automation_class_name"):  # an instance (no import: flow imports this module)
            return self.send(target.id, None, message, token, data)
        if isinstance(target, type) and hasattr(target, "get_automation_class_name"):
            return self.send(None, target, message, token, data)
        if isinstance(target, str) and target:
            if _AUTOMATION_ID.match(target):
                return self.send(target, None, message, token, data)
            out = OutgoingMessage(None, target, message, token, data, self.step_id)
            self.sent.append(out)
            return out
        raise AutomationError(f"SendMessage: target {target!r} is no automation, id, class or class name")


class StepContext:
    """The ``task`` a step's callables receive. ``data`` is the automation's data, live (the same dict
    as ``self.data`` of the bound instance); ``answers`` the bound session's answers or None."""

    def __init__(self, automation: Any, step: StepRow, now: float, *,
                 hooks: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.automation = automation
        self.data: dict[str, Any] = automation.data
        self.answers: dict[str, Any] | None = automation.answers
        self.id = step.id
        self.node = step.node
        self.created_at = step.created_at
        self.created = dt.datetime.fromtimestamp(step.created_at, dt.UTC)
        self.attempt = step.attempts + 1 if step.state in ("waiting", "interaction") else step.attempts
        self.now = now
        self._hooks = dict(hooks or {})

    def hours_since_created(self) -> float:
        return max(0.0, (self.now - self.created_at) / 3600.0)

    def save(self) -> None:
        """Accepted for the seed's code; data is saved with the step's commit."""

    def send_email(self, *args: Any, **kwargs: Any) -> Any:
        """mailgate's ``send_email`` inside a step: provided (and journaled) by the runner."""
        hook = self._hooks.get("send_email")
        if hook is None:
            raise AutomationError("send_email inside an automation step needs the automations runner (it runs steps)")
        return hook(*args, **kwargs)

    async def send_email_async(self, *args: Any, **kwargs: Any) -> Any:
        """``send_email`` in an ``async def`` step (journaled alike)."""
        hook = self._hooks.get("send_email_async")
        if hook is None:
            raise AutomationError("send_email_async inside an automation step needs the automations runner (it runs steps)")
        return await hook(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<StepContext {self.node} {self.id}>"


# The engine run a step or receiver is executing in (set by the engine): where ``send_message`` and
# its class-method forms record their outgoing messages.
CURRENT_RUN: contextvars.ContextVar[Outbox | None] = contextvars.ContextVar("mailgate_automation_run", default=None)


# The author runtime (mailgate.core.automation_author): how ``Class(**data)``, ``Class.start``,
# handles and messages from outside a step reach the store. Installed by each Runtime of the process;
# the action context's runtime wins over the latest installed one.
_BINDINGS: list[Any] = []


def install_binding(binding: Any) -> None:
    _BINDINGS.append(binding)


def remove_binding(binding: Any) -> None:
    if binding in _BINDINGS:
        _BINDINGS.remove(binding)


def binding() -> Any:
    ctx = CURRENT.get()
    found = getattr(getattr(ctx, "runtime", None), "automation_author", None)
    if found is not None:
        return found
    return _BINDINGS[-1] if _BINDINGS else None
