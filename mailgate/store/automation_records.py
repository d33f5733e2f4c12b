"""The automations' records (AUTOMATIONS.md §4.3): the rows the store keeps and the changes a run
commits. The store never looks inside their JSON (the core's tagged codec). Re-exported by
:mod:`mailgate.store.base`, whose ``Store`` methods and ``Changes`` use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

AutomationState = Literal["running", "finished", "failed", "killed"]
StepState = Literal["waiting", "interaction", "running", "done", "skipped", "failed", "joined"]
MessageState = Literal["queued", "delivered", "dropped"]
OPEN_STEP_STATES = ("waiting", "interaction", "running")
ENDED_AUTOMATION_STATES = ("finished", "failed", "killed")


@dataclass(frozen=True)
class AutomationRecord:
    id: str
    seq: int
    cls: str  # the class's name as the registry resolves it
    session_id: str | None
    state: AutomationState
    data: str  # JSON (the core's tagged codec)
    version: int  # +1 per commit: what fenced commits compare
    unique_key: str | None
    key: str  # HMAC for URLs (computed by the core)
    owner: str  # JSON of the user who started it
    wake_at: float | None  # earliest due open step, or the time a message was queued
    claim_holder: str | None
    claim_until: float | None
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True)
class StepRecord:
    """One node entered on one path (a row of the automation's history)."""

    id: str
    seq: int
    automation_id: str
    previous_id: str | None
    split_id: str | None  # the Split step that opened this path
    node: str
    state: StepState
    message: str | None
    result: str | None  # JSON
    error_type: str | None
    error_message: str | None
    error_trace: str | None
    wake_at: float | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    assignee_user: str | None
    assignee_privileges: str | None  # JSON list
    submitted_by: str | None  # JSON of the user

    @property
    def open(self) -> bool:
        return self.state in OPEN_STEP_STATES


@dataclass(frozen=True)
class MessageRecord:
    id: str
    seq: int  # commit order: the delivery order per automation
    automation_id: str | None  # None: a broadcast
    broadcast_class: str | None
    message: str  # the receiver's name without ``receive_``
    token: str | None
    data: str  # JSON
    sender: str  # JSON
    state: MessageState
    result: str | None  # JSON
    created_at: float
    delivered_at: float | None


@dataclass(frozen=True)
class JournalRecord:
    """A recorded effect of a step (e.g. ``send_email``): a re-run returns it instead of redoing it."""

    step_id: str
    call_index: int
    kind: str
    result: str  # JSON
    created_at: float


@dataclass(frozen=True)
class NewAutomation:
    id: str
    cls: str
    session_id: str | None
    data: str
    key: str
    owner: str
    unique_key: str | None = None  # one *running* automation per (cls, unique_key)
    wake_at: float | None = None  # None with open steps or messages given: now


@dataclass(frozen=True)
class NewStep:
    """A step entered: open (waiting, interaction, running) or already ended in the same commit."""

    id: str
    node: str
    state: StepState = "waiting"
    previous_id: str | None = None
    split_id: str | None = None
    wake_at: float | None = None
    message: str | None = None
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_trace: str | None = None
    attempts: int = 0
    started: bool = False  # started_at = the commit's time (also implied by an ended state)
    assignee_user: str | None = None
    assignee_privileges: str | None = None  # JSON list


@dataclass(frozen=True)
class StepUpdate:
    """A change to an existing step: a new state with its outcome. ``finished_at`` is set when the
    state is an ended one (done, skipped, failed, joined), ``started_at`` on its first start."""

    step_id: str
    state: StepState
    message: str | None = None
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_trace: str | None = None
    wake_at: float | None = None
    attempts: int | None = None  # None keeps the stored count
    submitted_by: str | None = None


@dataclass(frozen=True)
class NewMessage:
    """A message to one automation (``automation_id``) or a broadcast to the running automations of
    ``broadcast_class``. A message to an automation that is not running is stored ``dropped``.

    ``closes_step`` (a ``threaded=True`` step's ``task_done``): the step's outcome, written in the same
    transaction to that step of ``automation_id`` if it is still ``running``, whatever the state of the
    automation: one that finished before its threaded task still gets the task's result in its history."""

    id: str
    message: str
    automation_id: str | None = None
    broadcast_class: str | None = None
    token: str | None = None
    data: str = "{}"
    sender: str = "{}"
    closes_step: StepUpdate | None = None


@dataclass(frozen=True)
class MessageDone:
    """A message consumed under a claim: delivered with the receiver's result, or dropped."""

    message_id: str
    state: Literal["delivered", "dropped"] = "delivered"
    result: str | None = None


@dataclass(frozen=True)
class JournalEntry:
    step_id: str
    call_index: int
    kind: str
    result: str


@dataclass(frozen=True)
class AutomationUpdate:
    """What one run of an automation produced, fenced: applied only while the automation is at
    ``expected_version`` and (``holder`` given) still claimed by ``holder``; else the whole
    ``Changes`` is refused with :class:`~mailgate.errors.AutomationFenced`.

    ``data`` None keeps the stored data. The claim is released unless ``keep_claim`` (a commit in
    the middle of a run, e.g. a journal row right after ``send_email``): then ``wake_at`` None keeps
    the stored due time, so that if the runner dies the automation is claimed again once its lease
    lapses. A journal row already recorded for its (step, call index) is kept: the first result wins.
    """

    automation_id: str
    expected_version: int
    holder: str | None
    state: AutomationState = "running"
    data: str | None = None
    wake_at: float | None = None
    steps_finished: Sequence[StepUpdate] = ()
    steps_opened: Sequence[NewStep] = ()
    messages_done: Sequence[MessageDone] = ()
    journal: Sequence[JournalEntry] = ()
    keep_claim: bool = False


@dataclass(frozen=True)
class Recheck:
    """A run that changed nothing but the automation's next due time (a false ``AsSoonAs`` evaluated
    again): ``wake_at`` is written and the claim released, fenced by ``expected_version`` and the
    claim, without a new version (AUTOMATIONS.md §4.1: it writes nothing but its next recheck time)."""

    automation_id: str
    expected_version: int
    wake_at: float | None


@dataclass(frozen=True)
class AutomationStart:
    """An automation to create in a commit (an action's ``Class(**data)``, ``create_on_message``),
    with its first steps and queued messages, under the same unique rule as ``create_automation``:
    when a running one holds the unique key, the messages go to that one instead."""

    automation: NewAutomation
    steps: Sequence[NewStep] = ()
    messages: Sequence[NewMessage] = ()


@dataclass(frozen=True)
class ClaimedAutomation:
    """An automation claimed for a run, with its open steps and queued messages, each in order."""

    automation: AutomationRecord
    steps: Sequence[StepRecord]
    messages: Sequence[MessageRecord]
