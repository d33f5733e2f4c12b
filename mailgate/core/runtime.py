"""The core's facade: the one object the edges hold, made of parts that each receive what they use.

- :class:`~mailgate.core.sessions.Sessions`: sessions and the locked contexts (foreground,
  check-in, cron) that run actions on their live answers;
- :class:`~mailgate.core.actions.Invoker`: calling handlers (sync ones in the thread pool);
- :class:`~mailgate.core.commits.Commits`: one store transaction per action, then telling this
  process (event feed, worker pool, task waiters);
- :class:`~mailgate.core.tasks.TaskBook`, :class:`~mailgate.core.emails.Emails`,
  :class:`~mailgate.core.mailboxes.Mailboxes`: tasks, e-mails and addresses as handles and edges
  read them;
- :class:`~mailgate.core.background.TaskRunner`: running a claimed background task to its end;
- :class:`~mailgate.core.leases.Leases`: session leases.

The daemon builds one Runtime per process; the edges call only its methods and parts, never the
store. Interview code reaches it through its action context (``ctx.runtime``).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from mailgate.automations.registry import AutomationRegistry
from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core.actions import ActionResult, Invoker
from mailgate.core.automation_admin import AutomationAdmin
from mailgate.core.automation_author import AuthorBinding
from mailgate.core.automation_author import install as install_author
from mailgate.core.automation_author import uninstall as uninstall_author
from mailgate.core.automation_runner import AutomationRunner
from mailgate.core.background import TaskRunner, lost_task
from mailgate.core.claims import process_identity
from mailgate.core.commands import UI_NOTIFICATIONS
from mailgate.core.commits import Commits
from mailgate.core.context import ANONYMOUS, ActionContext, ActionEnd, ContextKind, User
from mailgate.core.daemail import DAEmail
from mailgate.core.emails import Emails
from mailgate.core.events import EventFeed
from mailgate.core.interviews import Action, Interview, Registry
from mailgate.core.leases import Leases
from mailgate.core.mailboxes import Addresses, Mailbox, Mailboxes, MailboxView
from mailgate.core.references import References
from mailgate.core.sessions import Sessions
from mailgate.core.stash import Stashes
from mailgate.core.tasks import Task, TaskBook
from mailgate.core.threads import DaemonThreadPool
from mailgate.core.tokens import Signer
from mailgate.errors import ActionError
from mailgate.outbound.transport import Outbound
from mailgate.store.base import (
    Changes,
    CommitResult,
    EventRecord,
    NewTask,
    SessionRecord,
    Store,
    StoreOverview,
    StoreProgress,
    TaskRecord,
)

__all__ = ["ActionResult", "Mailbox", "Runtime"]


class Runtime:
    """Runs actions against one store with one interview registry; what the edges call."""

    def __init__(self, config: Config, store: Store, registry: Registry, *, feed: EventFeed | None = None,
                 automations: AutomationRegistry | None = None) -> None:
        self.config = config
        self.store = store  # for the core's own parts (inbound delivery, cron, the worker pool); never the edges
        self.registry = registry
        self.feed = feed or EventFeed(store, config.web.event_poll_interval)
        self.process_id = process_identity()  # host:pid:start:nonce (claims of a dead process are taken over)
        self.outbound = Outbound(config.outbound)
        self.leases = Leases(config.sessions, store, self.process_id)
        self.tasks = TaskBook(store, config.tasks, config.sessions.lock_timeout + 5)
        self.emails = Emails(store)
        self.mailboxes = Mailboxes(config.mail, store, self.emails, store.now)
        self.invoker = Invoker(config.tasks.workers + 4, services=self)
        self.commits = Commits(store, self.feed, self.tasks)
        self.references = References(store, self.tasks, self.emails)
        hydrate = self.references.hydrate
        self.sessions = Sessions(config, store, registry, self.leases, self.invoker, self.commits.commit, hydrate)
        # A check-in (``args`` become the action's own: pass a dict made for this call). Every open
        # page sends one every few seconds: the facade hands out the part's own method, no wrapper.
        self.run_checkin = self.sessions.run_checkin
        self.stashes = Stashes(store)  # stash_data() / retrieve_stashed_data()
        self.task_runner = TaskRunner(config, store, registry, self.invoker, hydrate, self.leases, self.commits.commit)
        self.automation_classes = automations if automations is not None else AutomationRegistry()
        self.task_runner.automation_classes = self.automation_classes
        # runs automations in processes with the worker role; the CLI's ``automations step`` too
        self.automation_runner = AutomationRunner(config, store, self.automation_classes, registry, self.invoker,
                                                  self.commits.commit, hydrate, self.outbound, self.process_id)
        self.signer: Signer
        # automations as the edges operate them (AUTOMATIONS.md §4.4); keys are HMACs under the store's automation_secret
        self.automations = AutomationAdmin(config, store, self.commit, classes=self.automation_classes)
        self.automation_author: AuthorBinding | None = None  # set by open()

    async def open(self) -> None:
        """Read what the runtime needs from the store (the address and token secrets)."""
        self.tasks.loop = self.invoker.loop
        await self.mailboxes.open()
        secret = bytes.fromhex(await self.store.setting("automation_secret", secrets.token_hex(32)))
        self.automation_author = AuthorBinding(self.store, self.automation_classes, self.automation_runner, secret,
                                               self.invoker.loop, self.config.sessions.lock_timeout + 5)
        install_author(self.automation_author)
        if self.config.web.secret_key:
            self.signer = Signer(self.config.web.secret_key.encode())
        else:
            self.signer = Signer(bytes.fromhex(await self.store.setting("web_secret", secrets.token_hex(32))))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.invoker.loop

    @property
    def executor(self) -> DaemonThreadPool:
        """The thread pool of sync handlers (and of in-process parsing)."""
        return self.invoker.executor

    @property
    def addresses(self) -> Addresses:
        return self.mailboxes.addresses

    @property
    def checkin_retries(self) -> int:
        """Optimistic check-ins that had to run again under the lease."""
        return self.sessions.checkin_retries

    def close(self) -> None:
        self.invoker.close()
        self.automation_runner.executor.shutdown(wait=False, cancel_futures=True)
        if self.automation_author is not None:
            uninstall_author(self.automation_author)

    # -- sessions ----------------------------------------------------------------------------------
    async def create_session(self, interview: str, answers: dict[str, Any] | None = None, owner: User = ANONYMOUS) -> SessionRecord:
        """A new session of a loaded interview with initial ``answers``."""
        return await self.sessions.create(interview, answers, owner)

    async def create_session_with(self, interview: str, answers: dict[str, Any] | None = None, owner: User = ANONYMOUS,
                                  *, url_args: dict[str, Any] | None = None) -> SessionRecord:
        """``create_session`` with the URL's parameters as ``answers["url_args"]`` (docassemble's ``url_args``)."""
        return await self.sessions.create(interview, answers, owner, url_args=url_args)

    async def get_session_variables(self, session_id: str, interview: str | None = None) -> dict[str, Any]:
        """The session's answers as committed, without ``_internal`` (``interview``: it must be one of it)."""
        return await self.sessions.get_variables(session_id, interview)

    async def set_session_variables(self, session_id: str, variables: dict[str, Any], *, interview: str | None = None,
                                    delete: Sequence[str] | None = None, user: User = ANONYMOUS,
                                    deadline: float | None = None) -> int:
        """Set (and delete) variables of a session under its lease, saved at once; the new version.
        ``deadline``: the calling action's lock budget ends then (monotonic), see Sessions.set_variables."""
        return await self.sessions.set_variables(session_id, variables, interview=interview, delete=delete, user=user,
                                                 deadline=deadline)

    async def get_session(self, session_id: str) -> SessionRecord:
        return await self.sessions.get(session_id)

    async def get_answers(self, session_id: str) -> dict[str, Any]:
        """A session's answers, with Task and DAEmail handles bound to this runtime (read-only use)."""
        rec = await self.sessions.get(session_id)
        answers = codec.decode(rec.answers)
        await self.hydrate(answers)
        return answers

    async def list_sessions(self, *, interview: str | None = None, limit: int = 100) -> list[SessionRecord]:
        return await self.sessions.list(interview=interview, limit=limit)

    async def session_exists(self, session_id: str) -> bool:
        return await self.sessions.exists(session_id)

    async def delete_session(self, session_id: str) -> bool:
        return await self.sessions.delete(session_id)

    async def run_action(self, session_id: str, action: str, arguments: dict[str, Any] | None = None,
                         user: User = ANONYMOUS, *, kind: ContextKind = "foreground", browser: bool = False,
                         url_args: dict[str, str] | None = None) -> ActionResult:
        """Run ``action`` under the session lease on live answers and commit what it did (see
        :meth:`Sessions.run_action <mailgate.core.sessions.Sessions.run_action>`); ``browser``: a page
        asked for it, and only actions declared ``browser=True`` run; ``url_args``: the parameters
        of the URL that ran it, merged into the session's ``url_args``."""
        return await self.sessions.run_action(session_id, action, arguments, user, kind=kind, browser=browser,
                                              url_args=url_args)

    # -- tasks -------------------------------------------------------------------------------------
    def add_task_listener(self, callback: Callable[[], None]) -> None:
        self.commits.add_task_listener(callback)

    def remove_task_listener(self, callback: Callable[[], None]) -> None:
        self.commits.remove_task_listener(callback)

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
        return Task(task.id, self.tasks)

    async def start_background_action(
        self, session_id: str, action: str, ui_notification: str | None = None,
        arguments: dict[str, Any] | None = None, user: User = ANONYMOUS,
    ) -> Task:
        """Queue a background action from outside any action (API, CLI); durable on return."""
        interview = self.registry.get(await self.sessions.interview_of(session_id))
        ctx = self.new_context("foreground", session_id, interview, action, arguments or {}, user)
        task = self.new_task(ctx, action, ui_notification, arguments or {})
        await self.commit(Changes(new_tasks=ctx.new_tasks))
        return task

    async def get_task_record(self, task_id: str) -> TaskRecord:
        return await self.tasks.get(task_id)

    async def wait_task(self, task_id: str, timeout: float) -> TaskRecord:
        """The task's row once it is done, or as it is when ``timeout`` runs out."""
        return await self.tasks.wait(task_id, timeout)

    async def execute_task(self, rec: TaskRecord, worker: str, session: SessionRecord | None = None) -> None:
        """Run one claimed task to its end and commit its outcome (see :class:`TaskRunner`)."""
        await self.task_runner.execute(rec, worker, session)

    # -- mailboxes and e-mails ---------------------------------------------------------------------
    def interview_email(self, ctx: ActionContext, key: str | None, index: Any) -> str:
        """The session's address for (key, index); the mailbox is created (or its expiry renewed) with the action."""
        return self.mailboxes.interview_email(ctx, key, index)

    async def ensure_mailbox(self, session_id: str, key: str | None = None, index: Any = None,
                             user: User = ANONYMOUS) -> str:
        """``interview_email()`` from outside an action (the HTTP API): the address, created if needed."""
        rec = await self.get_session(session_id)
        ctx = self.new_context("foreground", rec.id, self.registry.get(rec.interview), "interview_email", {}, user)
        address = self.interview_email(ctx, key, index)
        await self.commit(Changes(mailboxes=ctx.new_mailboxes))
        return address

    async def get_mailboxes(self, session_id: str, key: str | None = None, index: Any = None) -> list[Mailbox]:
        """The session's mailboxes (optionally one key/index) with their e-mails, oldest first."""
        return await self.mailboxes.get_mailboxes(session_id, key, index, self.loop)

    async def list_mailboxes(self, *, session_id: str | None = None, limit: int = 100) -> list[MailboxView]:
        """Mailboxes (of one session, or all) with their addresses and sessions."""
        return await self.mailboxes.list(session_id=session_id, limit=limit)

    # -- tokens ------------------------------------------------------------------------------------
    def url_for_action(self, ctx: ActionContext, action: str, arguments: dict[str, Any]) -> str:
        """A signed, expiring URL that runs ``action`` on ``ctx``'s session as ``ctx``'s user."""
        ctx.interview.get_action(action)
        token = self.signer.sign(
            "run", self.config.web.url_action_ttl, s=ctx.session_id, a=action,
            g=codec.encode_value(arguments, f"interview_url_action({action!r}) argument"), u=ctx.user.to_json(),
        )
        return f"{self.config.web.public_url.rstrip('/')}/run/{token}"

    def url_for_email_part(self, email_id: str, part: str, ttl: float | None = None) -> str:
        """A signed, expiring URL that serves one part of a received e-mail: ``txt`` (the text body),
        ``html`` (the HTML body) or an attachment's number; ``url_for()`` of a DAEmail's files."""
        token = self.signer.sign("file", self.config.web.url_action_ttl if ttl is None else ttl, e=email_id, p=part)
        return f"{self.config.web.public_url.rstrip('/')}/file/{token}"

    def browser_token(self, session_id: str, user: User = ANONYMOUS, ttl: float | None = None) -> str:
        """A signed, expiring token with which a page of ``session_id`` opens its WebSocket as ``user``."""
        return self.signer.sign("browser", self.config.web.token_ttl if ttl is None else ttl, s=session_id, u=user.to_json())

    # -- the store as the edges see it -------------------------------------------------------------
    async def schema_status(self) -> tuple[int, int]:
        """(the store's schema version, the latest this code knows)."""
        return await self.store.schema_version(), self.store.latest_migration()

    async def last_periods(self) -> dict[str, tuple[str, float]]:
        """Scheduled type -> (its last period, when it ran)."""
        return await self.store.last_periods()

    async def session_events(self, session_id: str, after_id: int = 0, limit: int = 100, *,
                             newest: bool = False) -> list[EventRecord]:
        """A session's events after ``after_id``, oldest first (a page catching up): the first
        ``limit``, or with ``newest`` the last ``limit``."""
        return await self.store.list_events(session_id, after_id=after_id, limit=limit, newest=newest)

    def store_clock(self) -> float:
        return self.store.now()

    # -- operations (the admin CLI) ------------------------------------------------------------------
    async def cancel_task(self, task_id: str) -> TaskRecord:
        """Fail a queued or running task as ``Cancelled`` and tell its session's pages (see
        :meth:`TaskBook.cancel <mailgate.core.tasks.TaskBook.cancel>`)."""
        rec, events = await self.tasks.cancel(task_id, lost_task)
        self.commits.after_commit(events, False)
        return rec

    async def replay_email(self, email_id: str) -> Task:
        """Queue ``incoming_email`` again on a stored e-mail, as its delivery did (Action Mailbox's
        reroute): a new task of the e-mail's session, run by the worker pool as the mailbox's owner."""
        rec = await self.emails.get(email_id)
        if not rec.session_id:
            raise ActionError(f"e-mail {email_id} is in the operator (postmaster) mailbox: it has no session, "
                              "so there is no incoming_email to replay")
        session = await self.sessions.get(rec.session_id)
        interview = self.registry.get(session.interview)
        if not interview.has_action("incoming_email"):
            raise ActionError(f"interview {session.interview!r} defines no incoming_email action; nothing to replay")
        mailbox = await self.store.find_mailbox(rec.local_part)
        task = NewTask(uuid.uuid4().hex, session.id, session.interview, "incoming_email",
                       codec.encode_value({"email": DAEmail(email_id)}),
                       mailbox.owner if mailbox is not None else ANONYMOUS.to_json(), None, self.config.tasks.max_attempts)
        await self.commit(Changes(new_tasks=[task]))
        return Task(task.id, self.tasks)

    async def overview(self, since: float) -> StoreOverview:
        """Counts, ages and size of the store (``mailgate status``), e-mails counted from ``since``."""
        return await self.store.overview(since)

    async def backup(self, path: str, on_progress: StoreProgress | None = None) -> int:
        """A consistent online copy of the store in the new file ``path``; its size."""
        return await self.store.backup(path, on_progress)

    async def restore(self, path: str, on_progress: StoreProgress | None = None) -> int:
        """Replace the store with the backup at ``path``; the schema version it is at now."""
        return await self.store.restore(path, on_progress)

    # -- plumbing of the core's parts --------------------------------------------------------------
    def new_context(self, kind: ContextKind, session_id: str, interview: Interview, action: str,
                    arguments: dict[str, Any], user: User, task_id: str | None = None) -> ActionContext:
        return self.invoker.new_context(kind, session_id, interview, action, arguments, user, task_id)

    async def invoke(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], timeout: float) -> ActionEnd | None:
        return await self.invoker.invoke(ctx, handler, answers, timeout)

    async def commit(self, changes: Changes) -> CommitResult:
        return await self.commits.commit(changes)

    def after_commit(self, events: Sequence[EventRecord], new_tasks: bool) -> None:
        self.commits.after_commit(events, new_tasks)

    async def hydrate(self, *values: Any) -> dict[str, TaskRecord]:
        """Fill the Task and DAEmail references inside ``values`` from the store (two reads at most)."""
        return await self.references.hydrate(*values)
