"""The context an action runs in, and the control exceptions that end an action.

The runtime sets :data:`CURRENT` before calling a handler (sync handlers get a copy of the context
in their worker thread); :mod:`mailgate.author.functions` reads it. Control exceptions derive from
BaseException so that an author's ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from mailgate.errors import ActionError

ContextKind = Literal["foreground", "checkin", "background", "callback", "cron"]
LOCKED_KINDS: tuple[ContextKind, ...] = ("foreground", "checkin", "callback", "cron")


@dataclass(frozen=True)
class User:
    """Who an action runs as. ``id`` None is an anonymous user."""

    id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    privileges: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v not in (None, ())}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> User:
        if not text:
            return ANONYMOUS
        data = json.loads(text)
        data["privileges"] = tuple(data.get("privileges", ()))
        return cls(**data)

    @property
    def logged_in(self) -> bool:
        return self.id is not None


ANONYMOUS = User()
CRON_USER = User(id="cron", email="cron@localhost", first_name="Cron", last_name="User", privileges=("cron",))


@dataclass(slots=True)
class ActionContext:
    """Mutable state of one running action, visible to the docassemble-named functions."""

    kind: ContextKind
    session_id: str
    interview: Any  # mailgate.interviews.Interview
    action: str
    arguments: dict[str, Any]
    user: User
    runtime: Any  # mailgate.runtime.Runtime (typed Any to keep the import graph one-way)
    loop: asyncio.AbstractEventLoop
    task_id: str | None = None
    new_tasks: list[Any] = field(default_factory=list)  # NewTask rows committed with the action
    new_mailboxes: list[Any] = field(default_factory=list)  # NewMailbox rows committed with the action
    error_action: tuple[str, dict[str, Any]] | None = None
    task_records: dict[str, Any] = field(default_factory=dict)  # TaskRecord snapshots, by id
    answers: dict[str, Any] = field(default_factory=dict)  # the dict the handler was given
    accessed_at: float | None = None  # the session's last access by anyone but the cron user
    modified_at: float | None = None  # the session's last save by anyone, the cron user included
    # A locked action's budget ends at this monotonic time: what it waits for (another session's lease)
    # must give up before, so that the wait fails, not the whole action (None: no lease, no budget)
    deadline: float | None = None
    # An automation step's send_email goes through its runner's journal (prepared message -> accepted)
    send_hook: Any = None
    send_hook_async: Any = None  # the same for send_email_async in an ``async def`` step
    new_automations: list[Any] = field(default_factory=list)  # AutomationStart rows committed with the action
    automation_messages: list[Any] = field(default_factory=list)  # NewMessage rows committed with the action


CURRENT: contextvars.ContextVar[ActionContext | None] = contextvars.ContextVar("mailgate_action", default=None)


def current(function: str) -> ActionContext:
    ctx = CURRENT.get()
    if ctx is None:
        raise ActionError(f"{function}() can only be called from inside an action handler")
    return ctx


class ActionEnd(BaseException):
    """Ends a handler; nothing after the call that raised it runs."""


class BackgroundResponseEnd(ActionEnd):
    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], commands: list[dict[str, Any]] | None = None) -> None:
        super().__init__("background_response")
        self.args_ = args
        self.kwargs = kwargs
        self.commands = commands  # in a check-in: built while the action's context was live


class BackgroundResponseActionEnd(ActionEnd):
    def __init__(self, action: str, kwargs: dict[str, Any]) -> None:
        super().__init__("background_response_action")
        self.action = action
        self.kwargs = kwargs


class ResponseEnd(ActionEnd):
    def __init__(self, text: str | None, null: bool, data: Any = None, is_json: bool = False) -> None:
        super().__init__("response")
        self.text = text
        self.null = null
        self.data = data
        self.is_json = is_json


class CommandEnd(ActionEnd):
    def __init__(self, name: str) -> None:
        super().__init__("command")
        self.name = name
