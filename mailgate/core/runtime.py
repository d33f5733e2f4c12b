"""Running actions in their contexts (foreground, check-in, background, callback, cron).

The runtime is the core: it loads a session's answers, holds the session lease for the locked
contexts, calls the handler (sync handlers in a thread pool, so the loop never blocks), turns how the
handler ended into a result, and commits everything the action produced (answers, new tasks,
events, a task's outcome, the lease's release) in one store transaction. A claimed background
task runs through ``background.TaskRunner``, on this runtime's plumbing (``new_context``, ``hydrate``,
``invoke``, ``commit``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core.background import TaskRunner
from mailgate.core.commands import UI_NOTIFICATIONS, checkin_commands
from mailgate.core.context import (
    ANONYMOUS,
    CURRENT,
    ActionContext,
    ActionEnd,
    BackgroundResponseEnd,
    CommandEnd,
    ContextKind,
    ResponseEnd,
    User,
)
from mailgate.core.daemail import DAEmail
from mailgate.core.events import EventFeed
from mailgate.core.inbound import Addresses
from mailgate.core.interviews import Action, Interview, Registry
from mailgate.core.leases import Lease, Leases
from mailgate.core.tasks import Task
from mailgate.core.threads import DaemonThreadPool, Deadlines, LoopResults
from mailgate.core.tokens import Signer
from mailgate.errors import (
    ActionError,
    AnswersError,
    BudgetExceeded,
    MailgateError,
    NotFound,
    VersionConflict,
)
from mailgate.outbound.transport import Outbound
from mailgate.store.base import (
    Changes,
    CommitResult,
    EventRecord,
    MailboxRecord,
    NewEvent,
    NewMailbox,
    NewTask,
    SessionRecord,
    SessionSave,
    Store,
    TaskRecord,
)

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


@dataclass(frozen=True)
class Mailbox:
    """What ``get_emails()`` returns for each address: docassemble's ``address``, ``key``, ``index``, ``emails``."""

    address: str
    key: str | None
    index: str | None
    emails: list[DAEmail]
    record: MailboxRecord


def _call_sync(fn: Callable[[dict[str, Any]], Any], answers: dict[str, Any]) -> ActionEnd | None:
    """Run a sync handler in a worker thread; the ActionEnd that ended it comes back as a value
    (raising it again on the loop's side would only grow its traceback)."""
    try:
        fn(answers)
    except ActionEnd as end:
        end.__traceback__ = None
        return end
    return None


@dataclass(frozen=True)
class _Outcome:
    """What one locked action produced: its result and its changes, before they are committed."""

    result: ActionResult
    changes: Changes | None  # None: nothing to commit
    read_version: int

    def result_after(self, committed: CommitResult | None) -> ActionResult:
        r, ch = self.result, self.changes
        if ch is None:
            return ActionResult(r.kind, r.text, r.data, r.command, r.commands, deleted=r.deleted, version=self.read_version)
        saved = ch.save is not None
        return ActionResult(
            r.kind, r.text, r.data, r.command, r.commands, saved=saved, deleted=r.deleted,
            version=committed.version if saved and committed is not None and committed.version is not None else self.read_version,
            tasks=tuple(t.id for t in ch.new_tasks),
        )


class Runtime:
    """Runs actions against one store with one interview registry."""

    def __init__(self, config: Config, store: Store, registry: Registry, *, feed: EventFeed | None = None) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.feed = feed or EventFeed(store, config.web.event_poll_interval)
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.executor = DaemonThreadPool(config.tasks.workers + 4)
        self._deadlines = Deadlines()
        self.outbound = Outbound(config.outbound)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.leases = Leases(config.sessions, store, self.process_id)
        self.checkin_retries = 0  # optimistic check-ins that had to run again under the lease
        self._task_listeners: list[Callable[[], None]] = []
        self._finished: dict[str, asyncio.Event] = {}
        self._interview_of: dict[str, str] = {}
        self._loop_results: LoopResults | None = None
        self._task_runner = TaskRunner(self)
        self.addresses: Addresses
        self.signer: Signer

    async def open(self) -> None:
        """Read what the runtime needs from the store (the address secret)."""
        self._loop = asyncio.get_running_loop()
        secret = await self.store.setting("address_secret", secrets.token_hex(32))
        self.addresses = Addresses(self.config.mail, bytes.fromhex(secret))
        if self.config.web.secret_key:
            self.signer = Signer(self.config.web.secret_key.encode())
        else:
            self.signer = Signer(bytes.fromhex(await self.store.setting("web_secret", secrets.token_hex(32))))

    def _results(self) -> LoopResults:
        if self._loop_results is None:
            self._loop_results = LoopResults(self.loop)
        return self._loop_results

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- sessions ----------------------------------------------------------------------------------
    async def create_session(self, interview: str, answers: dict[str, Any] | None = None, owner: User = ANONYMOUS) -> SessionRecord:
        """A new session of a loaded interview with initial ``answers``."""
        self.registry.get(interview)
        answers = dict(answers or {})
        text = codec.encode(answers)
        return await self.store.create_session(uuid.uuid4().hex, interview, text, owner.to_json(),
                                               allow_cron=answers.get("allow_cron") is True)

    async def get_session(self, session_id: str) -> SessionRecord:
        rec = await self.store.get_session(session_id)
        if rec is None:
            raise NotFound(f"no session {session_id!r}; list sessions with: mailgate sessions list")
        return rec

    async def get_answers(self, session_id: str) -> dict[str, Any]:
        """A session's answers, with Task and DAEmail handles bound to this runtime (read-only use)."""
        rec = await self.get_session(session_id)
        answers = codec.decode(rec.answers)
        await self.hydrate(answers)
        return answers

    async def delete_session(self, session_id: str) -> bool:
        self._interview_of.pop(session_id, None)
        return await self.store.delete_session(session_id)

    # -- tasks -------------------------------------------------------------------------------------
    def add_task_listener(self, callback: Callable[[], None]) -> None:
        self._task_listeners.append(callback)

    def remove_task_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._task_listeners:
            self._task_listeners.remove(callback)

    def new_task(self, ctx: ActionContext, action: str, ui_notification: str | None, arguments: dict[str, Any]) -> Task:
        """Queue ``action`` as a background task of ``ctx``'s session; committed when ``ctx`` ends."""
        ctx.interview.get_action(action)
        if ui_notification is not None and ui_notification not in UI_NOTIFICATIONS:
            raise ActionError(f"ui_notification {ui_notification!r} is not one of {', '.join(UI_NOTIFICATIONS)} or None")
        task = NewTask(
            id=uuid.uuid4().hex,
            session_id=ctx.session_id,
            interview=ctx.interview.name,
            action=action,
            arguments=codec.encode_value(arguments, f"background_action({action!r}) argument"),
            user=ctx.user.to_json(),
            ui_notification=ui_notification,
            max_attempts=self.config.tasks.max_attempts,
        )
        ctx.new_tasks.append(task)
        return Task(task.id, runtime=self)

    async def start_background_action(
        self, session_id: str, action: str, ui_notification: str | None = None,
        arguments: dict[str, Any] | None = None, user: User = ANONYMOUS,
    ) -> Task:
        """Queue a background action from outside any action (API, CLI); durable on return."""
        name = self._interview_of.get(session_id)
        if name is None:
            name = (await self.get_session(session_id)).interview
            if len(self._interview_of) > 100_000:
                self._interview_of.clear()
            self._interview_of[session_id] = name  # a session never changes interview
        interview = self.registry.get(name)
        ctx = self.new_context("foreground", session_id, interview, action, arguments or {}, user)
        task = self.new_task(ctx, action, ui_notification, arguments or {})
        await self.commit(Changes(new_tasks=ctx.new_tasks))
        return task

    async def get_task_record(self, task_id: str) -> TaskRecord:
        rec = await self.store.get_task(task_id)
        if rec is None:
            raise NotFound(f"no task {task_id!r}; list tasks with: mailgate tasks list")
        return rec

    async def wait_task(self, task_id: str, timeout: float) -> TaskRecord:
        """The task's row once it is done, or as it is when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            done = self._finished.setdefault(task_id, asyncio.Event())
            rec = await self.get_task_record(task_id)
            remaining = deadline - time.monotonic()
            if rec.done or remaining <= 0:
                return rec
            # Finishes in this process set the event at once; other processes' are seen by polling.
            try:
                await asyncio.wait_for(done.wait(), min(remaining, self.config.tasks.poll_interval))
            except TimeoutError:
                pass

    # -- mailboxes ---------------------------------------------------------------------------------
    def interview_email(self, ctx: ActionContext, key: str | None, index: Any) -> str:
        """The session's address for (key, index); the mailbox is created (or its expiry renewed) with the action."""
        key_s, index_s = "" if key is None else str(key), "" if index is None else str(index)
        local = self.addresses.local_part(ctx.session_id, key_s, index_s)
        if not any(m.local_part == local for m in ctx.new_mailboxes):
            days = self.addresses.expiry_days
            expires = self.store_clock() + days * 86400 if days else None
            ctx.new_mailboxes.append(NewMailbox(local, ctx.session_id, key_s, index_s, ctx.user.to_json(), expires))
        return self.addresses.address(local)

    async def ensure_mailbox(self, session_id: str, key: str | None = None, index: Any = None,
                             user: User = ANONYMOUS) -> str:
        """``interview_email()`` from outside an action (the HTTP API): the address, created if needed."""
        rec = await self.get_session(session_id)
        ctx = self.new_context("foreground", rec.id, self.registry.get(rec.interview), "interview_email", {}, user)
        address = self.interview_email(ctx, key, index)
        await self.commit(Changes(mailboxes=ctx.new_mailboxes))
        return address

    def url_for_action(self, ctx: ActionContext, action: str, arguments: dict[str, Any]) -> str:
        """A signed, expiring URL that runs ``action`` on ``ctx``'s session as ``ctx``'s user."""
        ctx.interview.get_action(action)
        token = self.signer.sign(
            "run", self.config.web.url_action_ttl, s=ctx.session_id, a=action,
            g=codec.encode_value(arguments, f"interview_url_action({action!r}) argument"), u=ctx.user.to_json(),
        )
        return f"{self.config.web.public_url.rstrip('/')}/run/{token}"

    async def get_mailboxes(self, session_id: str, key: str | None = None, index: Any = None) -> list[Mailbox]:
        """The session's mailboxes (optionally one key/index) with their e-mails, oldest first."""
        boxes = await self.store.list_mailboxes(session_id=session_id, limit=10_000)
        out = []
        for box in boxes:
            if (key is not None and box.key != str(key)) or (index is not None and box.index != str(index)):
                continue
            records = await self.store.list_emails(local_part=box.local_part, limit=10_000)
            emails = [DAEmail(r.id, r, self) for r in records]
            out.append(Mailbox(self.addresses.address(box.local_part), box.key or None, box.index or None, emails, box))
        return out

    # -- locked contexts ---------------------------------------------------------------------------
    async def run_action(
        self, session_id: str, action: str, arguments: dict[str, Any] | None = None,
        user: User = ANONYMOUS, *, kind: ContextKind = "foreground",
    ) -> ActionResult:
        """Run ``action`` under the session lease on live answers and commit what it did.

        ``kind`` is foreground (saved unless ``response(null=True)``), checkin (saved only if the
        answers changed; ``background_response`` becomes UI commands) or cron (as foreground, and the
        cron user's access does not count as activity).

        A check-in first runs optimistically (see :meth:`_checkin_unleased`); if that finds the
        session leased or changed by another process when it commits, it runs again under the lease.
        """
        if kind not in ("foreground", "checkin", "cron"):
            raise ValueError(f"run_action cannot run a {kind} action")
        args = dict(arguments or {})  # the action's own: it may change them
        if kind == "checkin":
            return await self.run_checkin(session_id, action, args, user)
        return await self._run_locked(session_id, action, args, user, kind)

    async def run_checkin(self, session_id: str, action: str, args: dict[str, Any], user: User) -> ActionResult:
        """``run_action(kind="checkin")``: optimistically first, then under the lease if it must.

        ``args`` become the action's own (it may change them): pass a dict made for this call.
        """
        done = await self._checkin_unleased(session_id, action, args, user)
        if done is not None:
            return done
        self.checkin_retries += 1
        log.debug("check-in %r of session %s met another writer; running it again under the lease", action, session_id,
                  extra={"event": "checkin.retry"})
        return await self._run_locked(session_id, action, args, user, "checkin")

    async def _run_locked(self, session_id: str, action: str, args: dict[str, Any], user: User, kind: ContextKind) -> ActionResult:
        async with self.leases.locked(session_id, f"{kind} {action}") as lease:
            if lease.session is None:
                raise NotFound(f"no session {session_id!r}; list sessions with: mailgate sessions list")
            release = (session_id, lease.holder)
            outcome = await self._perform(kind, lease.session, action, args, user, lease, release_lease=release)
            committed = await self.commit(outcome.changes or Changes(release_lease=release))
            lease.released = True
        return outcome.result_after(committed)

    async def _checkin_unleased(self, session_id: str, action: str, args: dict[str, Any], user: User) -> ActionResult | None:
        """A check-in without the store lease: None if it must run again under the lease.

        Check-ins come every few seconds from every open page and mostly change nothing, so they
        skip the store lease's two writes. Under this process's lock (which orders them with every
        other action of this process) the session is read as committed (through the store's session
        cache) and the action runs within the same time budget. If it changed
        nothing, nothing is written. Otherwise its changes commit only if, at commit time, the
        session is still at the version that was read and no other process holds its lease
        (``Changes.unleased``); if not, nothing was written and the caller runs the check-in again
        under the lease, so the action may run twice: check-in actions must be safe to repeat, as
        they are already (they run again every ``checkin_interval``).
        """
        await self.leases.lock_local(session_id, f"checkin {action}")
        try:
            rec = await self.store.get_session(session_id)
            if rec is None:
                raise NotFound(f"no session {session_id!r}; list sessions with: mailgate sessions list")
            budget = self.config.sessions.lock_timeout
            lease = Lease(session_id, "", time.monotonic() + budget, budget, session=rec)
            outcome = await self._perform("checkin", rec, action, args, user, lease, unleased=(session_id, rec.version))
            if outcome.changes is None:
                return outcome.result_after(None)
            try:
                committed = await self.commit(outcome.changes)
            except VersionConflict:
                return None
            return outcome.result_after(committed)
        finally:
            self.leases.unlock_local(session_id)

    async def _perform(self, kind: ContextKind, rec: SessionRecord, action: str, args: dict[str, Any], user: User,
                       lease: Lease, *, release_lease: tuple[str, str] | None = None,
                       unleased: tuple[str, int] | None = None) -> _Outcome:
        """Run the action on ``rec``'s answers; what it produced, not yet committed (None if nothing,
        else with ``release_lease`` and ``unleased`` set as given)."""
        interview = self.registry.get(rec.interview)
        handler = interview.get_action(action)
        answers = codec.decode(rec.answers)
        ctx = self.new_context(kind, rec.id, interview, action, args, user)
        ctx.accessed_at = rec.accessed_at
        # Answers whose text has no tag hold no references: skip walking them. A check-in's arguments
        # are the page's field values, plain JSON.
        values = [answers] if codec.TAG in rec.answers else []
        if kind != "checkin":
            values.append(args)
        ctx.task_records = await self.hydrate(*values) if values else {}
        end = await self._invoke_locked(ctx, handler, answers, lease)
        result = self._result_of(ctx, end)
        save: SessionSave | None = None
        if not result.deleted and not (isinstance(end, ResponseEnd) and end.null):
            text = self._encode_after(ctx, answers)
            if kind != "checkin" or text != rec.answers:
                save = SessionSave(rec.id, text, rec.version, touch=user.id != "cron",
                                   allow_cron=answers.get("allow_cron") is True)
        # a foreground action's commands go to every open page of the session
        commands = result.commands if kind == "foreground" and not result.deleted else ()
        if save is None and not result.deleted and not ctx.new_tasks and not ctx.new_mailboxes and not commands:
            return _Outcome(result, None, rec.version)
        changes = Changes(
            save=save,
            delete_session=rec.id if result.deleted else None,
            new_tasks=tuple(ctx.new_tasks),
            mailboxes=tuple(ctx.new_mailboxes),
            events=tuple(NewEvent(rec.id, "command", json.dumps(c, default=str)) for c in commands),
            release_lease=release_lease,
            unleased=unleased,
        )
        return _Outcome(result, changes, rec.version)

    def _result_of(self, ctx: ActionContext, end: ActionEnd | None) -> ActionResult:
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
            return ActionResult("background_response", data=end.args_[0] if end.args_ else None,
                                commands=tuple(end.commands or ()))
        raise ActionError(
            f"action {ctx.action!r} called background_response_action(), which only ends a background action; "
            "start it with background_action() instead"
        )

    async def _invoke_locked(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], lease: Lease) -> ActionEnd | None:
        try:
            if handler.is_async:
                return await self.invoke(ctx, handler, answers, lease.remaining())
            return await self._submit_sync(ctx, handler, answers, lease.remaining())
        except TimeoutError:
            log.warning(
                "action %r of session %s ran past its %.1f s lock budget; nothing was saved",
                ctx.action, ctx.session_id, lease.budget, extra={"event": "action.budget_exceeded"},
            )
            raise BudgetExceeded(
                f"action {ctx.action!r} of session {ctx.session_id} ran past its {lease.budget:g} s lock budget "
                "([sessions] lock_timeout); nothing was saved. Move slow work into a background_action()"
            ) from None
        except MailgateError:
            raise
        except Exception as exc:
            log.warning("action %r of session %s raised", ctx.action, ctx.session_id, exc_info=True, extra={"event": "action.raised"})
            raise ActionError(f"action {ctx.action!r} of interview {ctx.interview.name!r} raised {type(exc).__name__}: {exc}") from exc

    def _encode_after(self, ctx: ActionContext, answers: dict[str, Any]) -> str:
        try:
            return codec.encode(answers)
        except AnswersError as exc:
            raise AnswersError(f"action {ctx.action!r} left answers that cannot be saved: {exc}; nothing was saved") from None

    # -- background tasks --------------------------------------------------------------------------
    async def execute_task(self, rec: TaskRecord, worker: str, session: SessionRecord | None = None) -> None:
        """Run one claimed task to its end and commit its outcome (see :class:`TaskRunner`)."""
        await self._task_runner.execute(rec, worker, session)

    # -- plumbing ----------------------------------------------------------------------------------
    def new_context(self, kind: ContextKind, session_id: str, interview: Interview, action: str,
                 arguments: dict[str, Any], user: User, task_id: str | None = None) -> ActionContext:
        return ActionContext(kind=kind, session_id=session_id, interview=interview, action=action, arguments=arguments,
                             user=user, runtime=self, loop=self.loop, task_id=task_id)

    async def invoke(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], timeout: float) -> ActionEnd | None:
        """Call the handler; return the ActionEnd that ended it, or None if it returned.

        Handler exceptions propagate; TimeoutError means it overran ``timeout`` (a sync handler's
        thread cannot be stopped: it finishes in the background and its changes are ignored).
        """
        if not handler.is_async:
            return await self._submit_sync(ctx, handler, answers, timeout)
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

    def _submit_sync(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], timeout: float) -> asyncio.Future[ActionEnd | None]:
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
        done: asyncio.Future[ActionEnd | None] = self.executor.call(self._results(), call, _call_sync, handler.fn, answers)
        self._deadlines.add(done, timeout)
        return done

    async def commit(self, changes: Changes) -> CommitResult:
        result = await self.store.commit(changes)
        if changes.finish is not None:
            done = self._finished.pop(changes.finish.task_id, None)
            if done is not None:
                done.set()
        self.after_commit(result.events, bool(changes.new_tasks))
        return result

    def after_commit(self, events: Sequence[EventRecord], new_tasks: bool) -> None:
        """Tell this process what a commit did: wake the event feed for its events (the feed reads
        them from the store), wake the workers for its tasks."""
        if events:
            self.feed.wake()
        if new_tasks:
            for listener in list(self._task_listeners):
                listener()

    async def hydrate(self, *values: Any) -> dict[str, TaskRecord]:
        """Fill the Task and DAEmail references inside ``values`` from the store (two reads at most)."""
        refs = [r for v in values for r in codec.references(v)]
        tasks = [r for r in refs if isinstance(r, Task)]
        emails = [r for r in refs if isinstance(r, DAEmail)]
        records = await self.store.get_tasks([t.id for t in tasks]) if tasks else {}
        for t in tasks:
            t._runtime = self
            t._record = records.get(t.id)
        if emails:
            found = await self.store.get_emails([e.id for e in emails])
            for e in emails:
                e._runtime = self
                if e.id in found:
                    e._fill(found[e.id])
        return records

    def store_clock(self) -> float:
        return self.leases.store_clock()
