"""Calling action handlers, and what their ends mean.

:class:`Invoker` calls a handler in its context: async handlers on the loop, sync handlers in the
thread pool (so the loop never blocks), each within a time limit. How a handler ended (returned,
or raised one of the control exceptions of :mod:`mailgate.core.context`) is read here once, for
every context: :func:`end_result` for the locked contexts, :func:`response_value` and
:func:`encode_answers` and :func:`session_save` for them and for the background runner alike.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mailgate.core import answers as codec
from mailgate.core.commands import checkin_commands
from mailgate.core.context import (
    CURRENT,
    ActionContext,
    ActionEnd,
    BackgroundResponseEnd,
    CommandEnd,
    ContextKind,
    ResponseEnd,
    User,
)
from mailgate.core.interviews import Action, Interview
from mailgate.core.threads import DaemonThreadPool, Deadlines, LoopResults
from mailgate.errors import ActionError, AnswersError
from mailgate.store.base import SessionRecord, SessionSave

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionResult:
    """How a locked action ended, and what was committed."""

    kind: Literal["none", "response", "json", "command", "background_response"]
    text: str | None = None
    data: Any = None
    command: str | None = None
    commands: tuple[dict[str, Any], ...] = ()
    saved: bool = False
    deleted: bool = False
    version: int | None = None
    tasks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "data": json.loads(codec.encode_value(self.data)) if self.data is not None else None,
            "command": self.command,
            "commands": list(self.commands),
            "saved": self.saved,
            "deleted": self.deleted,
            "version": self.version,
            "tasks": list(self.tasks),
        }


def response_value(end: BackgroundResponseEnd) -> Any:
    """The value of ``background_response(value)`` (None when called without one)."""
    return end.args_[0] if end.args_ else None


def skips_save(end: ActionEnd | None) -> bool:
    """True if the handler ended with ``response(null=True)``: its answers are not saved."""
    return isinstance(end, ResponseEnd) and end.null


def end_result(ctx: ActionContext, end: ActionEnd | None) -> ActionResult:
    """What a locked action (foreground, check-in, cron) answers for how its handler ended."""
    if end is None:
        return ActionResult("none")
    if isinstance(end, ResponseEnd):
        if end.is_json:
            return ActionResult("json", data=end.data)
        return ActionResult("response", text=end.text)
    if isinstance(end, CommandEnd):
        return ActionResult("command", command=end.name, deleted=end.name == "exit")
    if isinstance(end, BackgroundResponseEnd):
        if ctx.kind == "checkin":
            commands = end.commands if end.commands is not None else checkin_commands(end.args_, end.kwargs)
            return ActionResult("background_response", commands=tuple(commands))
        return ActionResult("background_response", data=response_value(end), commands=tuple(end.commands or ()))
    raise ActionError(
        f"action {ctx.action!r} called background_response_action(), which only ends a background action; "
        "start it with background_action() instead"
    )


def encode_answers(answers: dict[str, Any], what: str, name: str) -> str:
    """The answers as stored; AnswersError naming ``what`` and ``name`` (the action) if they cannot be."""
    try:
        return codec.encode(answers)
    except AnswersError as exc:
        raise AnswersError(f"{what} {name!r} left answers that cannot be saved: {exc}; nothing was saved") from None


_warned_use_cron: set[str] = set()


def cron_enabled(answers: dict[str, Any], interview: str) -> bool:
    """Whether scheduled types run on the session: ``allow_cron`` is True, or ``use_cron``, the name
    docassemble's older documentation gives the flag (honoured, with one deprecation line per interview)."""
    if answers.get("allow_cron") is True:
        return True
    if answers.get("use_cron") is True and "allow_cron" not in answers:
        if interview not in _warned_use_cron:
            _warned_use_cron.add(interview)
            log.warning("interview %r sets use_cron, the older name of allow_cron; honoured, but rename it to allow_cron",
                        interview, extra={"event": "answers.use_cron_deprecated"})
        return True
    return False


def session_save(session: SessionRecord, text: str, answers: dict[str, Any], user: User) -> SessionSave:
    """The save of ``answers`` (encoded as ``text``) over ``session`` as read (versioned). The cron
    user's saves do not count as an access (``last_access_days()``), but are activity all the same
    (inactivity deletion counts any save)."""
    return SessionSave(session.id, text, session.version, touch=user.id != "cron",
                       allow_cron=cron_enabled(answers, session.interview))


def _call_sync(fn: Callable[[dict[str, Any]], Any], answers: dict[str, Any]) -> ActionEnd | None:
    """Run a sync handler in a worker thread; the ActionEnd that ended it comes back as a value
    (raising it again on the loop's side would only grow its traceback)."""
    try:
        fn(answers)
    except ActionEnd as end:
        end.__traceback__ = None
        return end
    return None


class Invoker:
    """Calls handlers in their contexts; owns the thread pool that sync handlers run in.

    ``services`` is what interview code reaches through its context (``ctx.runtime``): the
    docassemble-named functions call it to queue tasks, make addresses and read e-mails.
    """

    def __init__(self, threads: int, services: Any) -> None:
        self.executor = DaemonThreadPool(threads)
        self._services = services
        self._deadlines = Deadlines()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_results: LoopResults | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def new_context(self, kind: ContextKind, session_id: str, interview: Interview, action: str,
                    arguments: dict[str, Any], user: User, task_id: str | None = None) -> ActionContext:
        loop = self._loop if self._loop is not None else self.loop
        return ActionContext(kind=kind, session_id=session_id, interview=interview, action=action, arguments=arguments,
                             user=user, runtime=self._services, loop=loop, task_id=task_id)

    async def invoke(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], timeout: float) -> ActionEnd | None:
        """Call the handler; return the ActionEnd that ended it, or None if it returned.

        Handler exceptions propagate; TimeoutError means it overran ``timeout`` (a sync handler's
        thread cannot be stopped: it finishes in the background and its changes are ignored).
        """
        if not handler.is_async:
            return await self.submit_sync(ctx, handler, answers, timeout)
        ctx.answers = answers
        token = CURRENT.set(ctx)
        try:
            async with asyncio.timeout(timeout):
                await handler.fn(answers)
            return None
        except ActionEnd as end:
            return end
        finally:
            CURRENT.reset(token)

    def submit_sync(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], timeout: float) -> asyncio.Future[ActionEnd | None]:
        """Start a sync handler in the thread pool, in a copy of this context with ``ctx`` current.

        The future fails with TimeoutError after ``timeout`` (a coarse shared timer, cheaper than
        asyncio.timeout(); the thread cannot be stopped anyway).
        """
        ctx.answers = answers
        token = CURRENT.set(ctx)
        try:
            call = contextvars.copy_context().run
        finally:
            CURRENT.reset(token)
        if self._loop_results is None:
            self._loop_results = LoopResults(self.loop)
        done: asyncio.Future[ActionEnd | None] = self.executor.call(self._loop_results, call, _call_sync, handler.fn, answers)
        self._deadlines.add(done, timeout)
        return done
