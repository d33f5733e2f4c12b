"""The operations on automations that the edges call (AUTOMATIONS.md §4.4): the CLI's
``mailgate automations ...``, the HTTP API's ``/api/automation...`` routes, the browser's task submits.

Edges reach these through :attr:`Runtime.automations <mailgate.core.runtime.Runtime>`, never the
store. Everything here reads and writes through the store's automation methods; running steps is the
runner's business: a start, a message, a submit, a retry or a ``goto`` leaves the automation due now,
and the runner (worker role, or ``mailgate automations step``) advances it.

A form submit is checked here on every read and submit (assignee, then already done, then the form's
``clean``) and commits, fenced by the automation's version, the values under ``data[node]``, the
form step ``done`` and the path's next step, due now: the request advances the automation past the
form without running step code in the web process.

Each operation that changes a session-bound automation commits an ``automation`` event to the
session's pages: ``{id, class, state, open, interactions: [{step, node}]}`` (``open``: the open nodes' names).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import importlib
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailgate.automations import engine
from mailgate.automations import flow as f
from mailgate.automations.errors import (
    AutomationError,
    FormAlreadyDone,
    FormForbidden,
    FormInvalid,
    FormNotFound,
    UnknownAutomationClass,
)
from mailgate.automations.registry import AutomationRegistry, load_automations
from mailgate.automations.unique import unique_key
from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core import automation_broadcasts as broadcasts
from mailgate.core.automation_rows import sender_json, step_row
from mailgate.core.automation_views import (
    OPEN,
    automation_dict,
    automation_event,
    history_tree,
    iso_time,
    message_dict,
    plain,
    step_dict,
)
from mailgate.core.context import ANONYMOUS, User
from mailgate.errors import AutomationFenced, InteractionClosed, MailgateError, NotFound
from mailgate.store.base import (
    AutomationRecord,
    AutomationStart,
    AutomationUpdate,
    Changes,
    CommitResult,
    MessageRecord,
    NewAutomation,
    NewEvent,
    NewMessage,
    NewStep,
    StepRecord,
    StepUpdate,
    Store,
)

STATES = ("running", "finished", "failed", "killed")
WAIT_POLL = 0.05  # ``send --wait``: the longest pause between two reads of the message's state
MAX_WAIT = 60.0
SUBMIT_RETRIES = 3  # a submit that lost the version race to the runner is checked again on fresh rows

Commit = Callable[[Changes], Any]


@dataclass(frozen=True)
class SubmitResult:
    automation: AutomationRecord
    step: StepRecord
    values: dict[str, Any]


class AutomationAdmin:
    """What operators and the web app do to automations (see the module docstring)."""

    def __init__(self, config: Config, store: Store, commit: Commit, *, classes: AutomationRegistry | None = None) -> None:
        self._config = config
        self._store = store
        self._commit = commit
        self._classes = classes
        self._secret: bytes | None = None
        self._resolver: engine.Resolver | None | bool = False  # False: not loaded yet

    # -- classes -------------------------------------------------------------------------------------
    @property
    def classes(self) -> AutomationRegistry:
        """The loaded automation classes (the ``[interviews]`` modules and paths, read once)."""
        if self._classes is None:
            self._classes = load_automations(self._config.interviews.modules, self._config.interviews.paths)
        return self._classes

    def describe(self) -> list[dict[str, Any]]:
        return self.classes.describe()

    def resolve(self, name: str) -> type[f.Automation]:
        return self.classes.resolve(name)

    def class_name(self, name: str) -> str:
        return self.classes.name_of(self.resolve(name))

    async def key_of(self, automation_id: str) -> str:
        """The automation's key for URLs: 128 bits of HMAC-SHA256 of its id under the store's
        ``automation_secret`` (the author runtime's ``Class.start`` computes the same)."""
        if self._secret is None:
            self._secret = bytes.fromhex(await self._store.setting("automation_secret", secrets.token_hex(32)))
        digest = hmac.new(self._secret, automation_id.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @property
    def resolver(self) -> engine.Resolver | None:
        """``[automations] assignee_resolver`` ("module:function", called with (user, step row)),
        which replaces the assignee rule for every read and submit of a form; None: the rule."""
        if self._resolver is False:
            spec = self._config.automations.assignee_resolver
            found: engine.Resolver | None = None
            if spec:
                module, _, name = spec.partition(":")
                try:
                    found = getattr(importlib.import_module(module), name)
                except Exception as exc:  # noqa: BLE001 - any import error is the operator's to fix
                    raise AutomationError(f"[automations] assignee_resolver {spec!r} cannot be loaded: "
                                          f"{type(exc).__name__}: {exc}") from None
                if not callable(found):
                    raise AutomationError(f"[automations] assignee_resolver {spec!r} is not a function")
            self._resolver = found
        return self._resolver  # type: ignore[return-value]

    def may_submit(self, user: User, step: StepRecord) -> bool:
        return engine.may_submit(user, step_row(step), self.resolver)

    # -- reading -------------------------------------------------------------------------------------
    async def get(self, automation_id: str) -> AutomationRecord:
        rec = await self._store.get_automation(automation_id)
        if rec is None:
            raise NotFound(f"no automation {automation_id!r}; list them with: mailgate automations list")
        return rec

    async def get_by_key(self, key: str) -> AutomationRecord | None:
        return await self._store.get_automation_by_key(key)

    async def list_automations(self, *, cls: str | None = None, state: str | None = None, session_id: str | None = None,
                   after_seq: int = 0, limit: int = 100) -> list[AutomationRecord]:
        if state is not None and state not in STATES:
            raise MailgateError(f"state {state!r} is not one of {', '.join(STATES)}")
        if cls is not None:
            try:
                cls = self.class_name(cls)
            except UnknownAutomationClass:
                pass  # a class no longer loaded: its rows are still listed by their stored name
        return await self._store.list_automations(cls=cls, state=state, session_id=session_id, after_seq=after_seq,
                                                  limit=limit)

    def orphaned(self, rec: AutomationRecord, steps: Sequence[StepRecord]) -> str | None:
        """Why a running automation cannot run here (its class or an open step's node is gone), or None.
        The fix: restore the class or node, or ``goto ID NODE``."""
        if rec.state != "running":
            return None
        try:
            cls = self.resolve(rec.cls)
        except UnknownAutomationClass:
            return f"class {rec.cls} is not loaded"
        gone = sorted({s.node for s in steps if s.state in ("waiting", "interaction") and s.node not in cls.node_names()})
        return f"{cls.__name__} has no node {', '.join(gone)}" if gone else None

    async def list_dicts(self, **filters: Any) -> list[dict[str, Any]]:
        """:meth:`list_automations` as the CLI and the API show it, with ``orphaned`` (the reason, or None)."""
        out = []
        for rec in await self.list_automations(**filters):
            reason = self.orphaned(rec, [])  # the class first: its steps are read only if it is loaded
            if reason is None and rec.state == "running":
                reason = self.orphaned(rec, await self._store.automation_history(rec.id))
            out.append({**automation_dict(rec), "orphaned": reason})
        return out

    async def show(self, automation_id: str) -> dict[str, Any]:
        """The automation with its data, its history (rows and tree) and its messages."""
        rec = await self.get(automation_id)
        steps = await self._store.automation_history(automation_id)
        out = automation_dict(rec)
        out["steps"] = [step_dict(s) for s in steps]
        out["tree"] = history_tree(steps, rec.wake_at if rec.state == "running" else None)
        out["open"] = sorted({s.node for s in steps if s.state in OPEN})
        out["orphaned"] = self.orphaned(rec, steps)
        out["messages"] = [message_dict(m) for m in await self._store.automation_messages(automation_id)]
        return out

    async def traceback(self, automation_id: str, step_id: str) -> str:
        await self.get(automation_id)
        for step in await self._store.automation_history(automation_id):
            if step.id == step_id:
                if not step.error_trace:
                    raise NotFound(f"step {step_id} ({step.node}, {step.state}) has no traceback")
                return step.error_trace
        raise NotFound(f"automation {automation_id} has no step {step_id!r}; see: mailgate automations show {automation_id}")

    async def errors(self, limit: int = 100) -> list[dict[str, Any]]:
        """Failed automations, each with its failed steps (type, message)."""
        out = []
        for rec in await self._store.list_automations(state="failed", limit=limit):
            failed = [s for s in await self._store.automation_history(rec.id) if s.state == "failed"]
            out.append({"id": rec.id, "class": rec.cls, "session": rec.session_id, "finished": iso_time(rec.finished_at),
                        "steps": [{"id": s.id, "node": s.node, "error_type": s.error_type,
                                   "error_message": s.error_message} for s in failed]})
        return out

    # -- starting and messages -----------------------------------------------------------------------
    async def start(self, cls_name: str, *, session_id: str | None = None, data: Mapping[str, Any] | None = None,
                    user: User = ANONYMOUS) -> tuple[AutomationRecord, bool]:
        """Start an automation of the named class, due now for the runner; ``(record, created)``:
        when the class is ``unique`` and a running one holds the key, that one and False."""
        cls = self.resolve(cls_name)
        if data is not None and not isinstance(data, Mapping):
            raise AutomationError(f"an automation's data is a JSON object, not {type(data).__name__}")
        values = dict(data or {})
        name = self.classes.name_of(cls)
        new_id = uuid.uuid4().hex
        new = NewAutomation(id=new_id, cls=name, session_id=session_id,
                            data=codec.encode(values), key=await self.key_of(new_id), owner=user.to_json(),
                            unique_key=unique_key(cls, values, session_id), wake_at=self._store.now())
        events = [self._event(session_id, new_id, name, "running", [])] if session_id else []
        result: CommitResult = await self._commit(Changes(new_automations=[AutomationStart(new)], events=events))
        automation_id, created = result.automations[0]
        return await self.get(automation_id), created

    async def send(self, automation_id: str, message: str, *, token: str | None = None, data: Any = None,
                   user: User = ANONYMOUS, wait: float | None = None) -> MessageRecord:
        """Queue ``message`` for the automation (its ``receive_<message>``); with ``wait``, wait up to
        that many seconds for the runner to deliver (or drop) it and return it as it is then."""
        rec = await self.get(automation_id)
        self._check_receiver(rec.cls, message, data)
        queued = await self._store.enqueue_message(NewMessage(
            id=uuid.uuid4().hex, message=message, automation_id=automation_id, token=token,
            data=codec.encode_value(data if data is not None else {}, "message data"), sender=sender_json(None, user=user.to_json())))
        if not wait or queued.state != "queued":
            return queued
        return await self._wait_message(automation_id, queued, min(float(wait), MAX_WAIT))

    async def page_message(self, session_id: str, key: str, message: str, *, token: str | None = None,
                           data: Any = None, user: User = ANONYMOUS) -> MessageRecord:
        """The seed's page-view hook from a browser of ``session_id``: a message to the automation with
        ``key``, accepted only when it is bound to that session and its class has
        ``publish_receivers = True`` (anything else is the same NotFound: a page learns nothing)."""
        rec = await self._store.get_automation_by_key(key) if key else None
        refused = NotFound(f"no automation of this session takes messages from pages with key {key!r}")
        if rec is None or rec.session_id != session_id:
            raise refused
        try:
            cls = self.resolve(rec.cls)
        except UnknownAutomationClass:
            raise refused from None
        if not cls.publish_receivers:
            raise refused
        # the page's data (its query parameters and path) with the user its token names, never the page's say
        data = {**(data if isinstance(data, Mapping) else {}), "user": json.loads(user.to_json())}
        return await self.send(rec.id, message, token=token, data=data, user=user)

    async def broadcast(self, cls_name: str, message: str, *, token: str | None = None, data: Any = None,
                        user: User = ANONYMOUS) -> MessageRecord:
        """Queue one broadcast to the running instances of the class (stopped at ``"received"``)."""
        name = self.class_name(cls_name)
        self._check_receiver(name, message, data)
        return await self._store.enqueue_message(NewMessage(
            id=uuid.uuid4().hex, message=message, broadcast_class=name, token=token,
            data=codec.encode_value(data if data is not None else {}, "message data"), sender=sender_json(None, user=user.to_json())))

    def _check_receiver(self, cls_name: str, message: str, data: Any) -> None:
        try:
            cls = self.classes.resolve(cls_name)
        except UnknownAutomationClass:
            return  # not loaded here: the runner decides (and drops it if nothing receives it)
        if message not in cls.receivers():
            raise AutomationError(f"{cls.__name__} has no receiver receive_{message}; it receives: "
                                  f"{', '.join(cls.receivers()) or 'nothing'}")
        if not cls.satisfies_data_requirements(message, data):
            raise AutomationError(f"the data does not meet receive_{message}'s @require_data_parameters; nothing was sent")

    async def broadcast_results(self, broadcast_id: str, wait: float) -> tuple[str, list[Any] | None]:
        """Wait up to ``wait`` seconds for a broadcast to end: its state (``queued`` while under way,
        ``dropped`` with no results if it reached no running instance) and the results of the receivers
        it reached, in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(float(wait), MAX_WAIT)
        state, found, hops = await broadcasts.results(self._store, broadcast_id)
        pause = WAIT_POLL / 10
        while state == "queued" and loop.time() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, WAIT_POLL)
            state, found, hops = await broadcasts.results(self._store, broadcast_id, hops)
        return state, found

    async def _wait_message(self, automation_id: str, queued: MessageRecord, wait: float) -> MessageRecord:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        current, pause = queued, WAIT_POLL / 10  # a runner usually delivers within milliseconds: look soon, then less often
        while current.state == "queued" and loop.time() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, WAIT_POLL)
            for msg in await self._store.automation_messages(automation_id):
                if msg.id == queued.id:
                    current = msg
        return current

    # -- user tasks (forms) --------------------------------------------------------------------------
    async def tasks_for(self, user: User, limit: int = 100) -> list[dict[str, Any]]:
        """The open forms ``user`` may submit (the engine's assignee rule decides finally)."""
        out = []
        # with a resolver the store cannot prefilter by the rule: it offers every open form
        privileges = ["admin"] if self.resolver is not None else list(user.privileges)
        for rec, step in await self._store.open_interactions(user.id, privileges, limit):
            if self.may_submit(user, step):
                out.append(self._task_dict(rec, step))
        return out

    def _task_dict(self, rec: AutomationRecord, step: StepRecord) -> dict[str, Any]:
        out = {"step": step.id, "node": step.node, "automation": rec.id, "class": rec.cls, "session": rec.session_id,
               "state": step.state, "created": iso_time(step.created_at), "assignee_user": step.assignee_user,
               "assignee_privileges": json.loads(step.assignee_privileges) if step.assignee_privileges else None,
               "description": "", "fields": None}
        try:
            node = self.resolve(rec.cls).get_node(step.node)
        except MailgateError:
            return out
        out["description"] = getattr(node, "description", "") or ""
        form = getattr(node, "form", None)
        fields = getattr(form, "fields", None)
        out["fields"] = fields if isinstance(fields, (dict, list)) else None
        return out

    async def _form(self, step_id: str, user: User) -> tuple[AutomationRecord, StepRecord, Any]:
        step = await self._store.get_automation_step(step_id)
        rec = await self._store.get_automation(step.automation_id) if step is not None else None
        if step is None or rec is None:
            raise FormNotFound(f"no task {step_id!r}; list yours with: mailgate automations tasks --user ID")
        try:
            node = self.resolve(rec.cls).get_node(step.node)
        except MailgateError as exc:
            raise FormNotFound(f"task {step_id}: {exc}") from None
        if not isinstance(node, f.Form):
            raise FormNotFound(f"step {step_id} ({step.node}) is not a form")
        if not self.may_submit(user, step):
            raise FormForbidden(f"user {user.id!r} is not assigned task {step_id} ({step.node})")
        if step.state != "interaction" or rec.state != "running":
            if step.state == "waiting" and rec.state == "running":
                raise FormNotFound(f"task {step_id} ({step.node}) is not open for input yet")
            raise FormAlreadyDone(f"task {step_id} ({step.node}) was already submitted or closed ({step.state}, "
                                  f"automation {rec.state})")
        return rec, step, node

    async def task(self, step_id: str, user: User) -> dict[str, Any]:
        """One open form for ``user``: FormForbidden (403), FormAlreadyDone (409), FormNotFound (404)."""
        rec, step, _ = await self._form(step_id, user)
        return self._task_dict(rec, step)

    async def submit(self, step_id: str, user: User, values: Mapping[str, Any]) -> SubmitResult:
        """Submit ``values`` to the form ``step_id`` as ``user``: checked, then committed with the
        path's next step (see the module docstring). FormForbidden, FormInvalid (``errors`` by
        field), FormAlreadyDone, FormNotFound."""
        if not isinstance(values, Mapping):
            raise FormInvalid("the values of a form are a JSON object", {"__all__": "a JSON object expected"})
        for attempt in range(SUBMIT_RETRIES):
            rec, step, node = await self._form(step_id, user)
            form = node.form
            try:
                cleaned = (form() if isinstance(form, type) else form).clean(dict(values))
            except f.ValidationError as exc:
                raise FormInvalid(f"form {step.node!r}: {exc}", exc.errors) from None
            if not isinstance(cleaned, Mapping):
                raise AutomationError(f"form {step.node!r}: clean() returned {type(cleaned).__name__}, a dict is expected")
            try:
                return await self._commit_submit(rec, step, user, dict(cleaned))
            except (AutomationFenced, InteractionClosed):
                if attempt == SUBMIT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _commit_submit(self, rec: AutomationRecord, step: StepRecord, user: User,
                             cleaned: dict[str, Any]) -> SubmitResult:
        now = self._store.now()
        cls = self.resolve(rec.cls)
        spec = cls._flow.specs[step.node]
        data = codec.decode(rec.data)
        data[step.node] = cleaned
        data[f"_{step.node}_validated"] = {"user_id": user.id, "time": dt.datetime.fromtimestamp(now, dt.UTC)}
        history = await self._store.automation_history(rec.id)
        others = [s for s in history if s.id != step.id and s.state in ("waiting", "interaction")]
        opened: list[NewStep] = []
        state = rec.state
        if spec.next is not None:
            opened.append(NewStep(id=uuid.uuid4().hex, node=spec.next, previous_id=step.id, split_id=step.split_id,
                                  wake_at=now))
        elif not others:
            state = "finished"
        update = AutomationUpdate(
            automation_id=rec.id, expected_version=rec.version, holder=None, state=state, data=codec.encode(data),
            wake_at=now if state == "running" else None,
            steps_finished=[StepUpdate(step.id, "done", message="OK", submitted_by=user.to_json())],
            steps_opened=opened)
        open_nodes = [s.node for s in others] + [s.node for s in opened]
        events = [self._event(rec.session_id, rec.id, rec.cls, state, open_nodes, others)] if rec.session_id else []
        await self._commit(Changes(automations=[update], events=events))
        after = await self.get(rec.id)
        done = await self._store.get_automation_step(step.id)
        assert done is not None
        return SubmitResult(after, done, json.loads(json.dumps(cleaned, default=plain)))

    # -- operations ----------------------------------------------------------------------------------
    async def retry(self, automation_id: str) -> AutomationRecord:
        rec = await self._store.retry_automation(automation_id)
        await self._announce(rec)
        return rec

    async def kill(self, automation_id: str) -> AutomationRecord:
        """Delete the automation and its history (the seed's ``kill()``); the record as it was."""
        rec = await self.get(automation_id)
        if not await self._store.kill_automation(automation_id):
            raise NotFound(f"no automation {automation_id!r}")
        if rec.session_id:
            await self._commit(Changes(events=[self._event(rec.session_id, rec.id, rec.cls, "killed", [])]))
        return rec

    async def goto(self, automation_id: str, node: str) -> AutomationRecord:
        rec = await self.get(automation_id)
        try:
            self.resolve(rec.cls).get_node(node)
        except UnknownAutomationClass:
            raise AutomationError(f"class {rec.cls!r} of automation {automation_id} is not loaded; cannot check node "
                                  f"{node!r}") from None
        rec = await self._store.goto_automation(automation_id, node, uuid.uuid4().hex)
        await self._announce(rec)
        return rec

    async def delete_history(self, days: float | None = None) -> tuple[int, int]:
        """Delete automations ended more than ``days`` ago ([automations] history_days, 30, if None)
        with their history; (automations, steps)."""
        if days is None:
            days = float(getattr(getattr(self._config, "automations", None), "history_days", 30))
        if days < 0:
            raise MailgateError(f"DAYS must be 0 or more, not {days:g}")
        return await self._store.delete_automation_history(self._store.now() - days * 86400.0)

    async def counts(self) -> dict[str, int]:
        return await self._store.count_automations()

    # -- events --------------------------------------------------------------------------------------
    async def _announce(self, rec: AutomationRecord) -> None:
        if rec.session_id is None:
            return
        steps = await self._store.automation_history(rec.id)
        await self._commit(Changes(events=[self._event(rec.session_id, rec.id, rec.cls, rec.state,
                                                       [s.node for s in steps if s.state in OPEN], steps)]))

    def _event(self, session_id: str | None, automation_id: str, cls: str, state: str, open_nodes: list[str],
               steps: Sequence[StepRecord] = ()) -> NewEvent:
        assert session_id is not None
        interactions = [{"step": s.id, "node": s.node} for s in steps if s.state == "interaction"]
        return NewEvent(session_id, "automation", json.dumps(automation_event(automation_id, cls, state, open_nodes,
                                                                              interactions)))

