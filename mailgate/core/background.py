"""Background tasks: running one claimed task to its end, its callback, and committing its outcome.

A background action runs on a throwaway copy of the answers (never saved). How it ends decides the
rest: a value (``background_response``) is the task's result; ``background_response_action`` runs a
callback under the session lease on fresh answers and saves them; an exception, a time-out or a
missing ``background_response`` fails the task, and a registered ``background_error_action`` runs
then as a callback with the error's details. The outcome, the callback's save, the tasks and
mailboxes the handlers made and the events for the session's browsers commit in one transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mailgate import metrics
from mailgate.automations import engine
from mailgate.automations.registry import AutomationRegistry
from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core.actions import Invoker, encode_answers, response_value, session_save, skips_save
from mailgate.core.automation_rows import THREADED_ACTION, step_row, threaded_outcome
from mailgate.core.commands import notification_command
from mailgate.core.context import (
    ActionContext,
    BackgroundResponseActionEnd,
    BackgroundResponseEnd,
    CommandEnd,
    User,
)
from mailgate.core.interviews import Action, Registry
from mailgate.core.leases import Leases
from mailgate.core.references import Hydrate
from mailgate.core.tasks import Task
from mailgate.errors import ActionError, AnswersError, LeaseTimeout, MailgateError, NotFound
from mailgate.store.base import (
    Changes,
    CommitResult,
    NewEvent,
    NewMessage,
    SessionRecord,
    SessionSave,
    Store,
    TaskFinish,
    TaskRecord,
)

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """How a background task failed: what its error action receives and its record keeps."""

    error_type: str
    error_message: str
    error_trace: str | None = None
    variables: list[str] = field(default_factory=list)

    @classmethod
    def from_exception(cls, exc: BaseException, prefix: str = "") -> Failure:
        variables: list[str] = []
        if isinstance(exc, NameError) and getattr(exc, "name", None):
            variables = [str(exc.name)]
        elif isinstance(exc, KeyError) and exc.args:
            variables = [str(exc.args[0])]
        trace = "".join(traceback.format_exception(exc))
        return cls(type(exc).__name__, prefix + str(exc), trace, variables)


def task_event_payload(rec: TaskRecord, state: str, error_type: str | None) -> str:
    """The payload of every ``task`` event (what ``mailgate:task`` gives the page): one shape for
    every way a task ends, the worker's death included."""
    return json.dumps({"task": rec.id, "action": rec.action, "state": state, "error_type": error_type})


def task_events(rec: TaskRecord, state: str, has_value: bool, value: Any, error_type: str | None) -> list[NewEvent]:
    """The events a finished task sends its session's browsers: its ``task`` event, and the command
    of its ``ui_notification`` (when it has a value, or always for ``refresh``)."""
    events = [NewEvent(rec.session_id, "task", task_event_payload(rec, state, error_type))]
    mode = rec.ui_notification
    if mode and (has_value or mode == "refresh"):
        try:
            command = notification_command(mode, value)
            events.append(NewEvent(rec.session_id, "command", json.dumps(command, default=str)))
        except ActionError as exc:
            log.warning("task %s: no %s notification: %s", rec.id, mode, exc, extra={"event": "task.notification_skipped", "task": rec.id, "session": rec.session_id})
    return events


def lost_task(rec: TaskRecord) -> Changes:
    """What commits with a task the store failed itself (``Store.claim_tasks``: its worker kept dying;
    ``Store.cancel_task``): its events, and its ``task_done`` to the automation that started it.

    Runs inside the store's transaction (the SQLite writer's thread): pure, no I/O.
    """
    error = (rec.error_type or "WorkerLost", rec.error_message or "", None)
    return Changes(events=task_events(rec, "failed", False, None, rec.error_type),
                   messages=task_done(rec, None, error))


def task_done(rec: TaskRecord, value: Any, error: tuple[str, str, str | None] | None) -> list[NewMessage]:
    """The ``task_done`` message of a task an automation's step started (none for other tasks); a
    ``threaded=True`` step's also carries the step's outcome (``closes_step``), whatever the
    automation's state by then."""
    if rec.automation_id is None:
        return []
    closes = threaded_outcome(rec.arguments, value, error) if rec.action == THREADED_ACTION else None
    return [NewMessage(uuid.uuid4().hex, "task_done", automation_id=rec.automation_id, token=rec.action,
                       data=codec.encode_value({"task": Task(rec.id)}),
                       sender=json.dumps({"task": rec.id}, separators=(",", ":")), closes_step=closes)]


class TaskRunner:
    """Runs claimed tasks: each on a throwaway copy of its session's answers, its callback under the
    session lease, its outcome committed with what the handlers produced."""

    def __init__(self, config: Config, store: Store, registry: Registry, invoker: Invoker, hydrate: Hydrate,
                 leases: Leases, commit: Callable[[Changes], Awaitable[CommitResult]]) -> None:
        self.config = config
        self._store = store
        self._registry = registry
        self._invoker = invoker
        self._hydrate = hydrate
        self._leases = leases
        self._commit = commit
        self.automation_classes = AutomationRegistry()  # the runtime sets the loaded ones (threaded steps)

    def _threaded(self, rec: TaskRecord, session: SessionRecord) -> Action:
        """The handler of a ``threaded=True`` step's task: the node's callable, its value the task's."""
        store, classes = self._store, self.automation_classes

        async def run_step(answers: dict[str, Any]) -> None:
            step_id = codec.decode_value(rec.arguments)["step"]
            auto = await store.get_automation(str(rec.automation_id))
            if auto is None:
                raise ActionError(f"automation {rec.automation_id} is gone; its threaded step {step_id} does not run")
            cls = classes.resolve(auto.cls)
            step = next((s for s in await store.automation_history(auto.id) if s.id == step_id), None)
            if step is None:
                raise ActionError(f"automation {auto.id} has no step {step_id}")
            call = contextvars.copy_context().run
            value = await asyncio.get_running_loop().run_in_executor(
                self._invoker.executor, call, lambda: engine.call_threaded(
                    cls, auto.id, codec.decode(auto.data), step_row(step), now=store.now(), session_id=session.id,
                    answers=answers))
            if inspect.isawaitable(value):  # an async def step: awaited here, on the loop, within the task's timeout
                value = await value
            raise BackgroundResponseEnd((value,), {})

        return Action(THREADED_ACTION, run_step, True)

    async def execute(self, rec: TaskRecord, worker: str, session: SessionRecord | None = None) -> None:
        """Run one claimed task to its end and commit its outcome (with any callback's save).

        ``session`` is the session as read right after the claim (the pool reads a claimed batch's
        sessions at once); without it the session is read here.
        """
        user = User.from_json(rec.user)
        ctx: ActionContext | None = None
        value: Any = None
        failure: Failure | None = None
        callback: tuple[str, dict[str, Any]] | None = None
        if session is None:
            session = await self._store.get_session(rec.session_id)
        handler: Action | None = None
        if session is None:
            failure = Failure("SessionGone", f"session {rec.session_id} was deleted before the task ran")
        else:
            try:
                interview = self._registry.get(rec.interview)
                if rec.action == THREADED_ACTION and rec.automation_id is not None:
                    handler = self._threaded(rec, session)
                else:
                    handler = interview.get_action(rec.action)
                arguments = codec.decode_value(rec.arguments)
            except MailgateError as exc:
                failure = Failure(type(exc).__name__, str(exc))
            else:
                ctx = self._invoker.new_context("background", session.id, interview, rec.action, arguments, user, task_id=rec.id)
                ctx.accessed_at = session.accessed_at
                ctx.modified_at = session.modified_at
        if ctx is not None and handler is not None and session is not None:
            try:
                answers = codec.decode(session.answers)  # a throwaway copy: never saved
                await self._hydrate(answers, ctx.arguments)
                end = await self._invoker.invoke(ctx, handler, answers, self.config.tasks.timeout)
            except TimeoutError:
                failure = Failure("TaskTimeout", f"background action {rec.action!r} ran longer than [tasks] timeout = {self.config.tasks.timeout:g} s")
            except Exception as exc:
                log.info("background action %r (task %s) raised %s", rec.action, rec.id, type(exc).__name__, extra={"event": "task.raised", "task": rec.id, "session": rec.session_id})
                failure = Failure.from_exception(exc)
            else:
                if isinstance(end, BackgroundResponseEnd):
                    value = response_value(end)
                elif isinstance(end, BackgroundResponseActionEnd):
                    callback = (end.action, end.kwargs)
                elif end is None:
                    failure = Failure(
                        "NoBackgroundResponse",
                        f"background action {rec.action!r} ended without calling background_response(); end it with "
                        "background_response(value), or background_response() when there is no value",
                    )
                else:
                    failure = Failure(
                        "ActionError",
                        f"background action {rec.action!r} ended with {end}(), which only ends a foreground action; "
                        "use background_response()",
                    )
        spawned = [ctx] if ctx is not None else []
        if callback is not None:
            await self._finish_with_callback(rec, worker, user, spawned, callback, None)
        elif failure is not None and ctx is not None and ctx.error_action is not None:
            await self._finish_with_callback(rec, worker, user, spawned, ctx.error_action, failure)
        else:
            await self._finish(rec, worker, value, failure, spawned)

    async def _finish(self, rec: TaskRecord, worker: str, value: Any, failure: Failure | None,
                      spawned: list[ActionContext], extra: Changes | None = None, has_value: bool | None = None) -> None:
        """Commit a task's outcome with what the contexts in ``spawned`` produced (tasks, mailboxes)."""
        result_text: str | None = None
        if has_value is None:
            has_value = failure is None
        if has_value:
            try:
                result_text = codec.encode_value({"value": value}, "background_response value")
            except AnswersError as exc:
                failure = Failure("AnswersError", f"the value of background action {rec.action!r} cannot be stored: {exc}")
                has_value = False
        state: Literal["succeeded", "failed"] = "failed" if failure is not None else "succeeded"
        finish = TaskFinish(
            rec.id, worker, state, result_text,
            failure.error_type if failure else None, failure.error_message if failure else None,
            failure.error_trace if failure else None,
            codec.encode_value(failure.variables) if failure else None,
        )
        messages = task_done(rec, value if has_value else None, None if failure is None else
                             (failure.error_type, failure.error_message, failure.error_trace))
        changes = Changes(
            messages=messages,
            save=extra.save if extra else None,
            new_tasks=[t for c in spawned for t in c.new_tasks],
            mailboxes=[m for c in spawned for m in c.new_mailboxes],
            events=task_events(rec, state, has_value, value, failure.error_type if failure else None),
            finish=finish,
            release_lease=extra.release_lease if extra else None,
        )
        await self._commit(changes)
        metrics.TASKS_FINISHED.labels(state).inc()
        if failure is not None:
            log.info("task %s (%s) failed: %s: %s", rec.id, rec.action, failure.error_type, failure.error_message, extra={"event": "task.failed", "task": rec.id, "session": rec.session_id})

    async def _finish_with_callback(self, rec: TaskRecord, worker: str, user: User, spawned: list[ActionContext],
                                    callback: tuple[str, dict[str, Any]], error: Failure | None) -> None:
        name, kwargs = callback
        arguments = dict(kwargs)
        if error is not None:
            arguments.update(error_type=error.error_type, error_message=error.error_message,
                             error_trace=error.error_trace, variables=list(error.variables))
        what = "error action" if error is not None else "response action"
        try:
            async with self._leases.locked(rec.session_id, f"callback {name}") as lease:
                session = lease.session
                if session is None:
                    await self._finish(rec, worker, None, Failure("SessionGone", f"session {rec.session_id} was deleted before the {what} {name!r} ran"), spawned,
                                       extra=Changes(release_lease=(rec.session_id, lease.holder)))
                    lease.released = True
                    return
                interview = self._registry.get(rec.interview)
                handler = interview.get_action(name)
                answers = codec.decode(session.answers)  # fresh, under the lease
                ctx = self._invoker.new_context("callback", session.id, interview, name, arguments, user, task_id=rec.id)
                ctx.accessed_at = session.accessed_at
                ctx.modified_at = session.modified_at
                ctx.deadline = lease.deadline
                ctx.task_records = await self._hydrate(answers, arguments)
                failure: Failure | None = None
                value: Any = None
                save: SessionSave | None = None
                try:
                    end = await self._invoker.invoke(ctx, handler, answers, lease.remaining())
                except TimeoutError:
                    failure = Failure("BudgetExceeded", f"the {what} {name!r} ran past its {lease.budget:g} s lock budget; nothing was saved")
                except Exception as exc:
                    failure = Failure.from_exception(exc, prefix=f"the {what} {name!r} raised: ")
                else:
                    if isinstance(end, BackgroundResponseEnd):
                        value = response_value(end)
                    elif isinstance(end, (BackgroundResponseActionEnd, CommandEnd)):
                        failure = Failure("ActionError", f"the {what} {name!r} ended with {end}(); end it with background_response()")
                    if failure is None and not skips_save(end):
                        try:
                            save = session_save(session, encode_answers(answers, f"the {what}", name), answers, user)
                        except AnswersError as exc:
                            failure = Failure("AnswersError", str(exc))
                if failure is not None:
                    log.warning("task %s: %s", rec.id, failure.error_message, extra={"event": "task.callback_failed", "task": rec.id, "session": rec.session_id})
                    if error is not None:
                        failure = Failure(error.error_type, f"{error.error_message}; then {failure.error_message}",
                                          error.error_trace, error.variables)
                    await self._finish(rec, worker, None, failure, spawned, extra=Changes(release_lease=(rec.session_id, lease.holder)))
                else:
                    await self._finish(rec, worker, value, error, [*spawned, ctx], has_value=True,
                                       extra=Changes(save=save, release_lease=(rec.session_id, lease.holder)))
                lease.released = True
        except (LeaseTimeout, NotFound) as exc:
            failure = Failure(type(exc).__name__, f"the {what} {name!r} could not run: {exc}")
            if error is not None:
                failure = Failure(error.error_type, f"{error.error_message}; then {failure.error_message}", error.error_trace, error.variables)
            await self._finish(rec, worker, None, failure, spawned)
