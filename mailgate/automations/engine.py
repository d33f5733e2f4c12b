"""The automations engine: pure, synchronous, no I/O.

Given a class and a :class:`Snapshot` of one automation (its data, its step rows, its queued
messages, the session's answers) and ``now``, :func:`advance` delivers the messages in order (after
each one the automation advances at once), runs every due step until each path waits, and returns
an :class:`Outcome`: the new data and state, the step rows created and updated, the messages consumed
with their results, the messages sent, the background tasks requested by ``threaded=True`` and the
next ``wake_at``. :func:`submit_form` does the same for a form submission. Claims, the session lease,
the step budget, journals and the fenced commit belong to the runner, which calls these functions
with what it read and commits what they return.

Semantics (AUTOMATIONS.md §4.1): per waiting step, SkipIf/SkipAfter first, then the waits
(AfterWaitingUntil/For, measured from the step's creation), then AsSoonAs; every callable is
evaluated again at each run, so a moved date moves the timer. A step that waits gets ``wake_at``:
its earliest timer, or for a false AsSoonAs ``now + recheck``. The engine writes two kinds of
underscore keys into ``data``: ``_<repeat node>_start`` (a Repeat's stored start point) and
``_<form node>_validated`` (who submitted the form, when), besides the form's values under
``data[<form node>]``.

Step callables may be ``async def`` (steps, conditions, waits, Then/Else calls, receivers): the
engine hands the awaitable they return to ``awaiter`` and uses its value. The runner's awaiter runs
it on the daemon's event loop (where mailgate's ``*_async`` functions work) and cancels it at the step
budget; without one, it runs in a private event loop of the engine's thread.

Step states: ``waiting`` (entered, not run yet), ``interaction`` (a form open for input),
``running`` (a ``threaded=True`` Execute handed to the worker pool; the path has moved on and the
runner finishes the row when the task ends), ``done``, ``skipped``, ``failed``, ``joined``.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import inspect
import traceback
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mailgate.automations import flow as f
from mailgate.automations import schedule
from mailgate.automations.context import Outbox, OutgoingMessage, StepContext, StepRow
from mailgate.automations.errors import (
    AutomationError,
    FormAlreadyDone,
    FormForbidden,
    FormInvalid,
    FormNotFound,
    OrphanedAutomation,
    SnapshotError,
)
from mailgate.automations.graph import DEFAULT_RECHECK, Flow, Spec
from mailgate.core import answers as codec
from mailgate.core.context import User
from mailgate.errors import AnswersError

OPEN_STATES = ("waiting", "interaction", "running")
PATH_STATES = ("waiting", "interaction")  # steps that hold a path (a threaded step's path moved on)

Resolver = Callable[[User, "StepRow"], bool]
Awaiter = Callable[[Awaitable[Any]], Any]  # runs what an async step callable returned; its value


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    message: str  # the receiver name without ``receive_``
    token: str | None = None
    data: Any = None
    sender: str | None = None


@dataclass(frozen=True)
class MessageOutcome:
    id: str
    state: str  # delivered | dropped
    result: Any = None
    error: str | None = None  # why it was dropped (finished, no receiver, unmet data, receiver error)


@dataclass(frozen=True)
class TaskRequest:
    """``threaded=True``: run node ``node``'s callable as a background task and finish step ``step_id``."""

    step_id: str
    node: str


@dataclass(frozen=True)
class Snapshot:
    """What the runner read. ``steps`` holds every open step plus the Split steps named by the
    ``split_id`` of open steps (and their own ``split_id``, up the nesting); finished steps may be
    included (form submits use them to tell "already done" from "unknown"). ``fresh`` means the
    automation has no steps yet: its queued messages are delivered, then its first node is entered.
    ``data`` is copied (the outcome carries the new data); ``answers`` is handed to step code as it is
    (``task.answers``, live): the runner saves it with the commit if steps changed it."""

    automation_id: str
    data: Mapping[str, Any]
    steps: Sequence[StepRow] = ()
    messages: Sequence[QueuedMessage] = ()
    answers: dict[str, Any] | None = None
    session_id: str | None = None
    state: str = "running"
    fresh: bool = False


@dataclass(frozen=True)
class EngineConfig:
    recheck_interval: float = 60.0  # [automations] recheck_interval
    timezone: str = "UTC"  # [scheduler] timezone: Repeat.At and naive datetimes
    max_steps: int = 1000  # steps entered in one run before a loop without a wait is declared broken


@dataclass
class Outcome:
    data: dict[str, Any]
    state: str  # running | finished | failed
    created: list[StepRow] = field(default_factory=list)  # new rows, open or already finished
    updated: list[StepRow] = field(default_factory=list)  # changed rows of the snapshot
    messages: list[MessageOutcome] = field(default_factory=list)
    sent: list[OutgoingMessage] = field(default_factory=list)
    tasks: list[TaskRequest] = field(default_factory=list)
    wake_at: float | None = None

    @property
    def finished_steps(self) -> list[StepRow]:
        return [s for s in (*self.updated, *self.created) if s.state not in OPEN_STATES]

    @property
    def opened_steps(self) -> list[StepRow]:
        return [s for s in self.created if s.state in OPEN_STATES]


def advance(cls: type[f.Automation], snap: Snapshot, *, now: float, config: EngineConfig | None = None,
            clock: Callable[[], float] | None = None, new_id: Callable[[], str] | None = None,
            hooks: Mapping[str, Callable[..., Any]] | None = None, awaiter: Awaiter | None = None) -> Outcome:
    """Deliver ``snap``'s messages in order and run everything due at ``now``; see the module docstring."""
    run = _Run(cls, snap, now, config, clock, new_id, hooks, awaiter)
    return run.go(lambda: None)


def submit_form(cls: type[f.Automation], snap: Snapshot, step_id: str, user: User, values: Mapping[str, Any], *,
                now: float, config: EngineConfig | None = None, resolver: Resolver | None = None,
                clock: Callable[[], float] | None = None, new_id: Callable[[], str] | None = None,
                hooks: Mapping[str, Callable[..., Any]] | None = None, awaiter: Awaiter | None = None) -> Outcome:
    """Submit ``values`` to the form step ``step_id`` as ``user`` and advance the automation.

    Raises FormNotFound (no such open form), FormForbidden (not an assignee), FormInvalid (``clean``
    raised ``flow.ValidationError``; ``errors`` by field) or FormAlreadyDone (submitted before).
    """
    run = _Run(cls, snap, now, config, clock, new_id, hooks, awaiter)
    step = run.steps.get(step_id)
    spec = run.flow.specs.get(step.node) if step is not None else None
    if step is None or spec is None or spec.kind != "form":
        raise FormNotFound(f"automation {snap.automation_id} has no form step {step_id!r}")
    if step.state not in OPEN_STATES or run.state != "running":
        raise FormAlreadyDone(f"form {step.node!r} (step {step_id}) was already submitted or closed ({step.state})")
    if step.state != "interaction":
        raise FormNotFound(f"form {step.node!r} (step {step_id}) is not open for input yet (it is waiting)")
    if not may_submit(user, step, resolver):
        raise FormForbidden(f"user {user.id!r} is not assigned form {step.node!r} (step {step_id})")
    form = spec.node.form  # type: ignore[attr-defined]
    try:
        cleaned = (form() if isinstance(form, type) else form).clean(dict(values))
    except f.ValidationError as exc:
        raise FormInvalid(f"form {step.node!r}: {exc}", exc.errors) from None
    if not isinstance(cleaned, Mapping):
        raise AutomationError(f"form {step.node!r}: clean() returned {type(cleaned).__name__}, a dict is expected")

    def accept() -> None:
        run.data[step.node] = dict(cleaned)
        run.data[f"_{step.node}_validated"] = {"user_id": user.id, "time": dt.datetime.fromtimestamp(now, dt.UTC)}
        step.submitted_by = user.to_json()
        run.finish(step, "done", "OK")
        run.follow(step, spec.next)

    return run.go(accept)


@dataclass
class BroadcastOutcome:
    outcomes: dict[str, Outcome]  # by automation id, for every instance the broadcast reached
    results: list[Any]  # the delivered receivers' results, in order (the seed's list)
    received_by: str | None = None  # the instance whose receiver returned "received" (it stopped there)


def broadcast(cls: type[f.Automation], snapshots: Sequence[Snapshot], message: QueuedMessage, *, now: float,
              config: EngineConfig | None = None, clock: Callable[[], float] | None = None,
              new_id: Callable[[], str] | None = None,
              hooks: Mapping[str, Callable[..., Any]] | None = None, awaiter: Awaiter | None = None) -> BroadcastOutcome:
    """Deliver one broadcast to the running instances of ``snapshots`` in the order given (the runner
    passes those running at send time, by id), each after its own queued messages, and stop after the
    first receiver that returns ``"received"``. Instances after it are not touched."""
    found = BroadcastOutcome({}, [])
    for snap in snapshots:
        if snap.state != "running":
            continue
        out = advance(cls, replace(snap, messages=(*snap.messages, message)), now=now, config=config, clock=clock,
                      new_id=new_id, hooks=hooks, awaiter=awaiter)
        found.outcomes[snap.automation_id] = out
        mine = next(m for m in out.messages if m.id == message.id)
        if mine.state == "delivered":
            found.results.append(mine.result)
            if mine.result == "received":
                found.received_by = snap.automation_id
                break
    return found


def may_submit(user: User, step: StepRow, resolver: Resolver | None = None) -> bool:
    """Whether ``user`` may read and submit the form ``step``: privilege ``admin`` always may; otherwise
    ``resolver`` decides if given ([automations] assignee_resolver), else the user must be the assigned
    user (if any) and hold every assigned privilege. Anonymous users never may."""
    if "admin" in user.privileges:
        return True
    if resolver is not None:
        return bool(resolver(user, step))
    if user.id is None:
        return False
    if step.assignee_user is not None and user.id != step.assignee_user:
        return False
    return all(p in user.privileges for p in step.assignee_privileges or ())


def call_threaded(cls: type[f.Automation], automation_id: str, data: dict[str, Any], step: StepRow, *, now: float,
                  session_id: str | None = None, answers: dict[str, Any] | None = None,
                  hooks: Mapping[str, Callable[..., Any]] | None = None) -> Any:
    """Run the callable of the ``threaded=True`` Execute node of ``step`` (for the runner's worker). An
    ``async def`` callable's awaitable is returned as it is: the caller awaits it."""
    spec = cls._flow.specs.get(step.node)
    if spec is None or spec.kind != "execute":
        raise AutomationError(f"{cls.__name__} has no Execute node {step.node!r}")
    instance = cls._bind(automation_id, data, session_id=session_id, answers=answers)
    return _execute(spec, instance, StepContext(instance, step, now, hooks=hooks))


def threaded_done(step: StepRow, *, finished_at: float, result: Any = None, error: BaseException | None = None,
                  trace: str | None = None) -> StepRow:
    """The row of a ``threaded=True`` step once its task ended: ``done`` with its (storable) result, or
    ``failed`` with the error. The automation is not affected: it moved on when the task started."""
    if step.state != "running":
        raise AutomationError(f"step {step.id} ({step.node}) is {step.state}, not a running threaded step")
    if error is None:
        return replace(step, state="done", message="OK", result=storable(result), finished_at=finished_at)
    return replace(step, state="failed", message=repr(error), error_type=type(error).__name__,
                   error_message=str(error), error_trace=trace, finished_at=finished_at)


def run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """The default awaiter: run ``awaitable`` in a private event loop of this thread (no daemon loop to
    run it on: the engine used on its own, as in tests). Refused on a thread that runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(awaitable))
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    raise AutomationError("an async step callable needs the automations runner (or an awaiter) when the engine "
                          "is called on an event loop")


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def awaitable_call(awaitable: Awaitable[Any]) -> Coroutine[Any, Any, Any]:
    """``awaitable`` as a coroutine (what ``run_coroutine_threadsafe`` and ``asyncio.run`` take)."""
    return awaitable if inspect.iscoroutine(awaitable) else _awaited(awaitable)


def _execute(spec: Spec, instance: f.Automation, task: StepContext) -> Any:
    node = spec.node
    assert isinstance(node, f.Execute)
    if type(node).method is not f.Execute.method:
        return node.method(task, *node.args, **node.kwargs)
    if spec.func is not None:
        return spec.func(instance, task, *node.args, **node.kwargs)
    return None  # Execute() is a no-op (the seed's node-removal recipe)


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} gave {value!r}; a timedelta (or seconds) is expected")


def storable(value: Any) -> Any:
    """A step's or receiver's result if the tagged codec can store it, else None (as the seed)."""
    try:
        codec.encode_value(value)
    except (AnswersError, TypeError, ValueError):
        return None
    return value


def _copy(value: Any) -> Any:
    """A deep copy that shares the Task and DAEmail handles inside (they hold the runtime's readers)."""
    return copy.deepcopy(value, {id(ref): ref for ref in codec.references(value)})


def _min(*values: float | None) -> float | None:
    found = [v for v in values if v is not None]
    return min(found) if found else None


class _Run:
    def __init__(self, cls: type[f.Automation], snap: Snapshot, now: float, config: EngineConfig | None,
                 clock: Callable[[], float] | None, new_id: Callable[[], str] | None,
                 hooks: Mapping[str, Callable[..., Any]] | None, awaiter: Awaiter | None = None) -> None:
        flow = cls._flow
        if not isinstance(flow, Flow):
            raise AutomationError(f"{cls!r} is not a subclass of flow.Automation")
        self.cls, self.flow, self.snap, self.now = cls, flow, snap, now
        self.config = config or EngineConfig()
        self.zone = zoneinfo.ZoneInfo(self.config.timezone)
        self.clock = clock or (lambda: now)
        self.new_id = new_id or (lambda: uuid.uuid4().hex)
        self.hooks = hooks
        self.awaiter = awaiter or run_awaitable
        self.data: dict[str, Any] = _copy(dict(snap.data))
        self.state = snap.state
        self.original = {s.id: s for s in snap.steps}
        self.steps: dict[str, StepRow] = {s.id: replace(s) for s in snap.steps}
        self.created: list[str] = []
        self.outbox = Outbox()
        self.tasks: list[TaskRequest] = []
        self.message_outcomes: list[MessageOutcome] = []
        self.entered = 0
        self.instance = cls._bind(snap.automation_id, self.data, session_id=snap.session_id, answers=snap.answers,
                                  state=snap.state)
        orphans = sorted({s.node for s in self.steps.values() if s.state in PATH_STATES and s.node not in flow.specs})
        if orphans and self.state == "running":
            raise OrphanedAutomation(f"automation {snap.automation_id} waits at node(s) {', '.join(orphans)} that "
                                     f"{cls.__name__} no longer has; restore them or move it to another node", orphans)

    # ------------------------------------------------------------------------------ the run

    def go(self, first: Callable[[], None]) -> Outcome:
        token = f.CURRENT_RUN.set(self.outbox)
        try:
            first()
            fresh = self.snap.fresh and not any(s.state in PATH_STATES for s in self.steps.values())
            for message in self.snap.messages:
                self.deliver(message)
                if not fresh:
                    self.advance()
            if fresh and self.state == "running" and self.flow.first is not None:
                self.enter(self.flow.first, None, None)
            self.advance()
        finally:
            f.CURRENT_RUN.reset(token)
        return self.outcome()

    def outcome(self) -> Outcome:
        created = [self.steps[i] for i in self.created]
        updated = [s for i, s in self.steps.items() if i in self.original and s != self.original[i]]
        wake = None
        if self.state == "running":
            wake = _min(*(s.wake_at for s in self.steps.values() if s.state in PATH_STATES))
        self.instance._state = self.state
        return Outcome(self.data, self.state, created, updated, self.message_outcomes, list(self.outbox.sent),
                       self.tasks, wake)

    def path_steps(self) -> list[StepRow]:
        return [s for s in self.steps.values() if s.state in PATH_STATES]

    def advance(self) -> None:
        while self.state == "running":
            progressed = False
            for step in self.path_steps():
                if self.state != "running":
                    break
                if step.state in PATH_STATES and self.try_step(step):
                    progressed = True
            if not progressed:
                return

    # --------------------------------------------------------------------------- messages

    def deliver(self, msg: QueuedMessage) -> None:
        def drop(why: str) -> None:
            self.message_outcomes.append(MessageOutcome(msg.id, "dropped", None, why))

        if self.state != "running":
            return drop(f"the automation is {self.state}")
        receiver = getattr(self.instance, f"receive_{msg.message}", None)
        if not callable(receiver):
            return drop(f"{self.cls.__name__} has no receiver receive_{msg.message}")
        if not self.cls.satisfies_data_requirements(msg.message, msg.data):
            return drop(f"the data does not meet receive_{msg.message}'s @require_data_parameters")
        before, sent = _copy(self.data), len(self.outbox.sent)
        self.outbox.step_id = None
        try:
            result = self.settle(receiver(msg.token, msg.data))
            codec.encode(self.data)
        except Exception as exc:  # noqa: BLE001 - an author's receiver: its error is recorded, its changes undone
            self.data.clear()
            self.data.update(before)
            del self.outbox.sent[sent:]
            return drop(f"receive_{msg.message} raised {type(exc).__name__}: {exc}")
        self.message_outcomes.append(MessageOutcome(msg.id, "delivered", storable(result)))

    # ------------------------------------------------------------------------------ steps

    def enter(self, node: str, previous: str | None, split: str | None) -> StepRow:
        step = StepRow(id=self.new_id(), node=node, state="waiting", created_at=self.now, previous_id=previous,
                       split_id=split)
        self.steps[step.id] = step
        self.created.append(step.id)
        self.entered += 1
        if self.entered > self.config.max_steps:
            self.fail(step, "StepLimit", f"more than {self.config.max_steps} steps in one run without a wait "
                                         "(a loop with no AfterWaitingFor/AsSoonAs/Repeat?)", "")
        return step

    def follow(self, step: StepRow, target: str | None, split: str | None | bool = True) -> None:
        """Continue ``step``'s path at ``target`` (None: it fell off the last node and ends there)."""
        split_id = step.split_id if split is True else split
        if target is not None:
            self.enter(target, step.id, split_id)  # type: ignore[arg-type]
        elif not self.path_steps():
            self.state = "finished"

    def finish(self, step: StepRow, state: str, message: str, result: Any = None) -> None:
        step.state, step.message, step.result = state, message, result
        step.wake_at = None
        step.finished_at = self.clock()
        if step.started_at is None:
            step.started_at = step.finished_at

    def fail(self, step: StepRow, kind: str, message: str, trace: str) -> None:
        self.finish(step, "failed", f"{kind}({message!r})")
        step.error_type, step.error_message, step.error_trace = kind, message, trace or None
        self.state = "failed"

    def error(self, step: StepRow, spec: Spec, exc: BaseException, trace: str) -> bool:
        """A step's code raised: continue at ``OnError`` if the node has one, else the automation fails."""
        self.fail(step, type(exc).__name__, str(exc), trace)
        step.message = repr(exc)
        if spec.on_error is not None:
            self.state = "running"
            self.follow(step, spec.on_error)
        return True

    def value(self, call: Any, task: StepContext) -> Any:
        return self.settle(call(self.instance, task))

    def settle(self, result: Any) -> Any:
        """An author callable's result; an ``async def`` one's awaited (by the awaiter)."""
        return self.awaiter(result) if inspect.isawaitable(result) else result

    def epoch(self, value: Any, what: str) -> float:
        if isinstance(value, dt.datetime):
            return (value if value.tzinfo is not None else value.replace(tzinfo=self.zone)).timestamp()
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=self.zone).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"{what} gave {value!r}; a datetime (or epoch seconds) is expected")

    def wake(self, step: StepRow, when: float | None) -> bool:
        step.wake_at = when
        return False

    def try_step(self, step: StepRow) -> bool:
        """Evaluate one open step; True if its path moved on (or the automation ended)."""
        spec = self.flow.specs[step.node]
        task = StepContext(self.instance, step, self.now, hooks=self.hooks)
        self.outbox.step_id = step.id
        self.outbox.node = step.node
        try:
            skip_at = None
            if spec.skip_if is not None and self.value(spec.skip_if, task):
                return self.skip(step, spec)
            if spec.skip_after is not None:
                skip_at = step.created_at + _seconds(self.value(spec.skip_after, task), f"{step.node}.SkipAfter")
                if self.now >= skip_at:
                    return self.skip(step, spec)
            if step.state == "interaction":
                return self.wake(step, skip_at)
            due = None
            if spec.wait_until is not None:
                due = self.epoch(self.value(spec.wait_until, task), f"{step.node}.AfterWaitingUntil")
            if spec.wait_for is not None:
                until = step.created_at + _seconds(self.value(spec.wait_for, task), f"{step.node}.AfterWaitingFor")
                due = until if due is None else max(due, until)
            if due is not None and self.now < due:
                return self.wake(step, _min(due, skip_at))
            if spec.as_soon_as is not None and not self.value(spec.as_soon_as, task):
                recheck = self.config.recheck_interval if spec.recheck == DEFAULT_RECHECK else spec.recheck
                return self.wake(step, _min(skip_at, self.now + float(recheck) if recheck else None))
            return self.run_node(step, spec, task, skip_at)
        except SnapshotError:
            raise
        except Exception as exc:  # noqa: BLE001 - an author's callable: recorded on the step
            return self.error(step, spec, exc, traceback.format_exc())

    def skip(self, step: StepRow, spec: Spec) -> bool:
        self.finish(step, "skipped", "skipped")
        self.follow(step, spec.next)
        return True

    def run_node(self, step: StepRow, spec: Spec, task: StepContext, skip_at: float | None) -> bool:
        kind = spec.kind
        if kind == "execute":
            step.attempts += 1
            step.started_at = self.clock()
            if spec.node.threaded:  # type: ignore[attr-defined]
                step.state, step.message, step.wake_at = "running", "threaded", None
                self.tasks.append(TaskRequest(step.id, step.node))
                self.follow(step, spec.next)
                return True
            result = self.settle(_execute(spec, self.instance, task))
            codec.encode(self.data)  # a step may only leave storable data behind
            self.finish(step, "done", "OK", storable(result))
            self.follow(step, spec.next)
            return True
        if kind == "if":
            assert spec.func is not None
            chosen = bool(self.value(spec.func, task))
            target, call = (spec.then_node, spec.then_call) if chosen else (spec.else_node, spec.else_call)
            result = self.value(call, task) if call is not None else None
            self.finish(step, "done", str(chosen), storable(result))
            self.follow(step, target or spec.next)
            return True
        if kind == "split":
            self.finish(step, "done", "OK")
            for path in spec.paths:
                self.enter(path, step.id, step.id)
            return True
        if kind == "join":
            return self.join(step, spec)
        if kind == "end":
            others = [s for s in self.path_steps() if s is not step]
            if others:
                nodes = ", ".join(sorted({s.node for s in others}))
                self.fail(step, "OpenPaths", f"End reached while {len(others)} other path(s) are open (at {nodes})", "")
                return True
            self.finish(step, "done", "OK")
            self.state = "finished"
            return True
        if kind == "repeat":
            return self.repeat(step, spec, skip_at)
        if kind == "form":
            node = spec.node
            assert isinstance(node, f.Form)
            step.state, step.started_at = "interaction", self.clock()
            step.assignee_user = node.user
            step.assignee_privileges = node.privileges() or None
            return self.wake(step, skip_at)
        if kind == "send":
            node = spec.node
            assert isinstance(node, f.SendMessage)
            target = self.value(spec.func, task) if spec.func is not None else node.target
            self.outbox.send_to(target, node.message, node.token, copy.deepcopy(node.data))
            self.finish(step, "done", "OK")
            self.follow(step, spec.next)
            return True
        raise AutomationError(f"node {step.node!r}: unknown kind {kind!r}")  # pragma: no cover - Node subclasses

    def join(self, step: StepRow, spec: Spec) -> bool:
        if step.split_id is None:  # reached outside any Split: nothing to wait for
            self.finish(step, "done", "Joined")
            self.follow(step, spec.next)
            return True
        split = self.steps.get(step.split_id)
        if split is None or split.node not in self.flow.specs:
            raise SnapshotError(f"automation {self.snap.automation_id}: the snapshot lacks Split step "
                                  f"{step.split_id} that step {step.id} ({step.node}) belongs to")
        expected = len(self.flow.specs[split.node].paths)
        arrived = [s for s in self.path_steps() if s.node == step.node and s.split_id == step.split_id]
        if len(arrived) < expected:
            step.message = "Open Join"
            return self.wake(step, None)
        for other in arrived:
            self.finish(other, "joined", "Joined")
        self.follow(step, spec.next, split.split_id)
        return True

    def repeat(self, step: StepRow, spec: Spec, skip_at: float | None) -> bool:
        node = spec.node
        assert isinstance(node, f.Repeat)
        key = f"_{step.node}_start"
        start = self.data.get(key)
        if not isinstance(start, (int, float)) or isinstance(start, bool):
            start = self.data[key] = step.created_at
        if node.at is not None:
            due = schedule.next_daily(start, node.at[0], node.at[1], step.created_at, self.zone, node.every_days or 1)
        else:
            assert node.every is not None
            due = schedule.next_interval(start, node.every, step.created_at)
        if self.now < due:
            return self.wake(step, _min(due, skip_at))
        self.finish(step, "done", "OK")
        assert spec.repeat_start is not None
        self.follow(step, spec.repeat_start)
        return True
