"""Running actions on a session's live answers: the locked contexts (foreground, check-in, cron).

The action runs under the session lease (a check-in first without it, see
:meth:`Sessions.run_checkin`), on the answers as committed, within the lease's time budget; what it
produced (the save, new tasks and mailboxes, events for the session's pages, the lease's release)
commits in one store transaction.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core.actions import (
    ActionResult,
    Invoker,
    cron_enabled,
    encode_answers,
    end_result,
    session_save,
    skips_save,
)
from mailgate.core.context import ANONYMOUS, ActionContext, ActionEnd, ContextKind, User
from mailgate.core.interviews import Action, Registry
from mailgate.core.leases import Lease, Leases
from mailgate.core.references import Hydrate
from mailgate.errors import (
    ActionError,
    BudgetExceeded,
    LeaseTimeout,
    MailgateError,
    NotFound,
    VersionConflict,
)
from mailgate.store.base import (
    Changes,
    CommitResult,
    NewEvent,
    SessionRecord,
    SessionSave,
    Store,
)

log = logging.getLogger(__name__)


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


INTERNAL = "_internal"  # mailgate's bookkeeping inside the answers: never set from outside


def check_variables(variables: Any, what: str) -> None:
    """ActionError unless ``variables`` is a dict of variable names that leaves ``_internal`` alone."""
    if not isinstance(variables, dict):
        raise ActionError(f"{what} takes a dict of variables, not {type(variables).__name__}")
    for name in variables:
        if not isinstance(name, str) or name == INTERNAL:
            raise ActionError(f"{what} cannot set {name!r}" + (" (mailgate's bookkeeping)" if name == INTERNAL else ""))


def no_session(session_id: str) -> NotFound:
    return NotFound(f"no session {session_id!r}; list sessions with: mailgate sessions list")


class Sessions:
    """Sessions and the actions that run on their live answers."""

    def __init__(self, config: Config, store: Store, registry: Registry, leases: Leases, invoker: Invoker,
                 commit: Callable[[Changes], Awaitable[CommitResult]], hydrate: Hydrate) -> None:
        self.config = config
        self._store = store
        self._registry = registry
        self._leases = leases
        self._invoker = invoker
        self._commit = commit
        self._hydrate = hydrate
        self.checkin_retries = 0  # optimistic check-ins that had to run again under the lease
        self._interview_of: dict[str, str] = {}

    # -- records -----------------------------------------------------------------------------------
    async def create(self, interview: str, answers: dict[str, Any] | None = None, owner: User = ANONYMOUS,
                     *, url_args: dict[str, Any] | None = None) -> SessionRecord:
        """A new session of a loaded interview with initial ``answers``; ``url_args`` (the parameters
        of the URL that started it, docassemble's special variable) become ``answers["url_args"]``."""
        self._registry.get(interview)
        answers = dict(answers or {})
        if not isinstance(answers.get(INTERNAL, {}), dict):  # copied from another session's answers, it is a dict
            raise ActionError(f"answers[{INTERNAL!r}] is mailgate's bookkeeping (task counters): give it as another "
                              f"session's answers hold it, a dict, or leave it out; not {type(answers[INTERNAL]).__name__}")
        if url_args is not None:
            answers["url_args"] = dict(url_args)
        return await self._store.create_session(uuid.uuid4().hex, interview, codec.encode(answers), owner.to_json(),
                                                allow_cron=cron_enabled(answers, interview))

    async def get(self, session_id: str) -> SessionRecord:
        rec = await self._store.get_session(session_id)
        if rec is None:
            raise no_session(session_id)
        return rec

    async def exists(self, session_id: str) -> bool:
        return await self._store.get_session(session_id) is not None

    async def list(self, *, interview: str | None = None, limit: int = 100) -> list[SessionRecord]:
        return await self._store.list_sessions(interview=interview, limit=limit)

    async def delete(self, session_id: str) -> bool:
        """Delete the session with everything it owns (mailboxes, e-mails, tasks, events); False if
        there is none. Under the session lease, like every writer: an action running on it ends
        first (waiting at most ``lock_timeout``, then LeaseTimeout naming the holder)."""
        return await self._delete_locked(session_id, "deletion")

    async def delete_if_inactive(self, session_id: str, before: float) -> bool:
        """Delete the session with everything it owns if its answers were not saved since ``before``.

        Under the session lease, like every writer: a session an action is running on (its user came
        back) is busy, so in use, and kept; so is one saved between the query and the lease.
        """
        try:
            return await self._delete_locked(session_id, "inactivity deletion", saved_before=before)
        except LeaseTimeout:
            return False  # busy for lock_timeout: in use; the next cron_daily looks again

    async def _delete_locked(self, session_id: str, what: str, *, saved_before: float | None = None) -> bool:
        async with self._leases.locked(session_id, what) as lease:
            rec = lease.session
            if rec is None or (saved_before is not None and rec.modified_at >= saved_before):
                return False
            await self._commit(Changes(delete_session=session_id, release_lease=(session_id, lease.holder)))
            lease.released = True
        self._interview_of.pop(session_id, None)
        return True

    async def interview_of(self, session_id: str) -> str:
        """The name of the session's interview (remembered: a session never changes interview)."""
        name = self._interview_of.get(session_id)
        if name is None:
            name = (await self.get(session_id)).interview
            if len(self._interview_of) > 100_000:
                self._interview_of.clear()
            self._interview_of[session_id] = name
        return name

    # -- cross-session functions (docassemble's get/set_session_variables) --------------------------
    async def get_variables(self, session_id: str, interview: str | None = None) -> dict[str, Any]:
        """The session's answers as committed (a read needs no lease), without mailgate's ``_internal``."""
        rec = await self._of_interview(session_id, interview)
        answers = codec.decode(rec.answers)
        answers.pop(INTERNAL, None)
        await self._hydrate(answers)
        return answers

    async def set_variables(self, session_id: str, variables: dict[str, Any], *, interview: str | None = None,
                            delete: Sequence[str] | None = None, user: User = ANONYMOUS,
                            deadline: float | None = None) -> int:
        """Set ``variables`` in the session's answers (and remove the names in ``delete``), saved under
        the session lease on the answers as committed, like any locked action; the new version.

        A save by ``user``: activity for inactivity deletion, and an access unless ``user`` is the cron user.
        ``deadline`` (monotonic): the calling action's lock budget ends then; the wait for this
        session's lease gives up a tenth of the budget before, with an error naming this session,
        and nothing is set once it has passed (the caller has failed and saved nothing by then).
        """
        check_variables(variables, "set_session_variables()")
        for name in delete or ():
            if not isinstance(name, str) or name == INTERNAL:
                raise ActionError(f"set_session_variables() cannot delete {name!r}")
        budget = self.config.sessions.lock_timeout
        wait = None if deadline is None else deadline - time.monotonic() - budget / 10
        try:
            async with self._leases.locked(session_id, "set_session_variables", wait=wait) as lease:
                if deadline is not None and time.monotonic() >= deadline:
                    raise BudgetExceeded(f"set_session_variables() on session {session_id} got its lease after the "
                                         f"calling action's {budget:g} s lock budget had run out; nothing was set")
                return await self._set_locked(lease, session_id, variables, interview, delete, user)
        except LeaseTimeout as exc:
            if wait is None or wait >= budget:
                raise
            raise LeaseTimeout(f"{exc}, what was left of the calling action's {budget:g} s lock budget "
                               "([sessions] lock_timeout); nothing was set") from None

    async def _set_locked(self, lease: Lease, session_id: str, variables: dict[str, Any], interview: str | None,
                          delete: Sequence[str] | None, user: User) -> int:
        rec = lease.session
        if rec is None:
            raise no_session(session_id)
        if interview is not None and rec.interview != interview:
            raise NotFound(f"session {session_id} is not a session of interview {interview!r}")
        answers = codec.decode(rec.answers)
        for name in delete or ():
            answers.pop(name, None)
        answers.update(variables)
        text = encode_answers(answers, "set_session_variables() on session", session_id)
        release = (session_id, lease.holder)
        committed = await self._commit(Changes(save=session_save(rec, text, answers, user), release_lease=release))
        lease.released = True
        return committed.version if committed.version is not None else rec.version + 1

    async def _of_interview(self, session_id: str, interview: str | None) -> SessionRecord:
        rec = await self.get(session_id)
        if interview is not None and rec.interview != interview:
            raise NotFound(f"session {session_id} is not a session of interview {interview!r}")
        return rec

    # -- locked contexts ---------------------------------------------------------------------------
    async def run_action(self, session_id: str, action: str, arguments: dict[str, Any] | None = None,
                         user: User = ANONYMOUS, *, kind: ContextKind = "foreground", browser: bool = False,
                         url_args: dict[str, str] | None = None) -> ActionResult:
        """Run ``action`` under the session lease on live answers and commit what it did.

        ``kind`` is foreground (saved unless ``response(null=True)``), checkin (saved only if the
        answers changed; ``background_response`` becomes UI commands) or cron (as foreground, and the
        cron user's access does not count as activity). ``browser``: a page asked for it, so the
        action must be declared ``browser=True`` (a check-in always comes from a page). ``url_args``:
        the parameters of the URL that ran it, merged into ``answers["url_args"]`` before it runs
        (docassemble updates ``url_args`` from every visit's URL).
        """
        if kind not in ("foreground", "checkin", "cron"):
            raise ValueError(f"run_action cannot run a {kind} action")
        args = dict(arguments or {})  # the action's own: it may change them
        if kind == "checkin":
            return await self.run_checkin(session_id, action, args, user)
        return await self._run_locked(session_id, action, args, user, kind, browser=browser, url_args=url_args)

    async def run_checkin(self, session_id: str, action: str, args: dict[str, Any], user: User) -> ActionResult:
        """A check-in: optimistically first, then under the lease if it must.

        ``args`` become the action's own (it may change them): pass a dict made for this call.
        """
        done = await self._checkin_unleased(session_id, action, args, user)
        if done is not None:
            return done
        self.checkin_retries += 1
        log.debug("check-in %r of session %s met another writer; running it again under the lease", action, session_id,
                  extra={"event": "checkin.retry", "session": session_id})
        return await self._run_locked(session_id, action, args, user, "checkin")

    async def _run_locked(self, session_id: str, action: str, args: dict[str, Any], user: User, kind: ContextKind,
                          *, browser: bool = False, url_args: dict[str, str] | None = None) -> ActionResult:
        async with self._leases.locked(session_id, f"{kind} {action}") as lease:
            if lease.session is None:
                raise no_session(session_id)
            release = (session_id, lease.holder)
            outcome = await self._perform(kind, lease.session, action, args, user, lease, release_lease=release,
                                          browser=browser, url_args=url_args)
            committed = await self._commit(outcome.changes or Changes(release_lease=release))
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
        await self._leases.lock_local(session_id, f"checkin {action}")
        try:
            rec = await self._store.get_session(session_id)
            if rec is None:
                raise no_session(session_id)
            budget = self.config.sessions.lock_timeout
            lease = Lease(session_id, "", time.monotonic() + budget, budget, session=rec)
            outcome = await self._perform("checkin", rec, action, args, user, lease, unleased=(session_id, rec.version))
            if outcome.changes is None:
                return outcome.result_after(None)
            try:
                committed = await self._commit(outcome.changes)
            except VersionConflict:
                return None
            return outcome.result_after(committed)
        finally:
            self._leases.unlock_local(session_id)

    async def _perform(self, kind: ContextKind, rec: SessionRecord, action: str, args: dict[str, Any], user: User,
                       lease: Lease, *, release_lease: tuple[str, str] | None = None,
                       unleased: tuple[str, int] | None = None, browser: bool = False,
                       url_args: dict[str, str] | None = None) -> _Outcome:
        """Run the action on ``rec``'s answers; what it produced, not yet committed (None if nothing,
        else with ``release_lease`` and ``unleased`` set as given)."""
        interview = self._registry.get(rec.interview)
        if browser or kind == "checkin":
            handler = interview.browser_action(action)
        else:
            handler = interview.get_action(action)
            if kind == "cron" and handler.browser:
                raise ActionError(f"action {action!r} of interview {rec.interview!r} is a browser action (browser=True); "
                                  "a scheduled type must name an action pages cannot run")
        answers = codec.decode(rec.answers)
        if url_args:
            before = answers.get("url_args")
            answers["url_args"] = {**(before if isinstance(before, dict) else {}), **url_args}
        ctx = self._invoker.new_context(kind, rec.id, interview, action, args, user)
        ctx.accessed_at = rec.accessed_at
        ctx.modified_at = rec.modified_at
        # Answers whose text has no tag hold no references: skip walking them. A check-in's arguments
        # are the page's field values, plain JSON.
        values = [answers] if codec.TAG in rec.answers else []
        if kind != "checkin":
            values.append(args)
        ctx.task_records = await self._hydrate(*values) if values else {}
        end = await self._invoke_locked(ctx, handler, answers, lease)
        result = end_result(ctx, end)
        save: SessionSave | None = None
        if not result.deleted and not skips_save(end):
            text = encode_answers(answers, "action", action)
            if kind != "checkin" or text != rec.answers:  # a check-in that changed nothing writes nothing
                save = session_save(rec, text, answers, user)
        # a foreground action's commands go to every open page of the session
        commands = result.commands if kind == "foreground" and not result.deleted else ()
        if (save is None and not result.deleted and not ctx.new_tasks and not ctx.new_mailboxes and not commands
                and not ctx.new_automations and not ctx.automation_messages):
            return _Outcome(result, None, rec.version)
        changes = Changes(
            save=save,
            delete_session=rec.id if result.deleted else None,
            new_tasks=tuple(ctx.new_tasks),
            mailboxes=tuple(ctx.new_mailboxes),
            events=tuple(NewEvent(rec.id, "command", json.dumps(c, default=str)) for c in commands),
            release_lease=release_lease,
            unleased=unleased,
            new_automations=tuple(ctx.new_automations),
            messages=tuple(ctx.automation_messages),
        )
        return _Outcome(result, changes, rec.version)

    async def _invoke_locked(self, ctx: ActionContext, handler: Action, answers: dict[str, Any], lease: Lease) -> ActionEnd | None:
        ctx.deadline = lease.deadline
        try:
            if handler.is_async:
                return await self._invoker.invoke(ctx, handler, answers, lease.remaining())
            return await self._invoker.submit_sync(ctx, handler, answers, lease.remaining())  # no coroutine in between
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
