"""The Store interface: domain methods that every backend implements, and the records they return.

Backends keep all their SQL in their own module. Times are POSIX seconds (UTC) as floats. Answers,
arguments, users and results travel as JSON text encoded by :mod:`mailgate.core.answers`; the store never
looks inside them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mailgate.store.automation_records import (  # noqa: F401 - re-exported: every record is importable from base
    ENDED_AUTOMATION_STATES,
    OPEN_STEP_STATES,
    AutomationRecord,
    AutomationStart,
    AutomationState,
    AutomationUpdate,
    ClaimedAutomation,
    JournalEntry,
    JournalRecord,
    MessageDone,
    MessageRecord,
    MessageState,
    NewAutomation,
    NewMessage,
    NewStep,
    Recheck,
    StepRecord,
    StepState,
    StepUpdate,
)

TaskState = Literal["queued", "running", "succeeded", "failed"]
DONE_STATES = ("succeeded", "failed")


@dataclass(frozen=True)
class StashRecord:
    """Data stashed by ``stash_data()``: sealed by the core (the store never sees it in clear)."""

    key: str
    data: str  # the sealed data (the core's encoding)
    created_at: float
    expires_at: float
    ttl: float  # seconds it was stashed for: what ``refresh=True`` renews


@dataclass(frozen=True)
class SessionRecord:
    id: str
    interview: str
    answers: str
    version: int
    owner: str  # JSON of the owning user
    created_at: float
    modified_at: float
    accessed_at: float  # last access by anyone but the cron user


@dataclass(frozen=True)
class TaskRecord:
    id: str
    session_id: str
    interview: str
    action: str
    arguments: str  # JSON
    user: str  # JSON of the user who started it
    ui_notification: str | None
    state: TaskState
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: str | None  # JSON {"value": ...} when the task has a value
    error_type: str | None
    error_message: str | None
    error_trace: str | None
    variables: str | None  # JSON list
    automation_id: str | None = None  # started by a step of this automation

    @property
    def done(self) -> bool:
        return self.state in DONE_STATES


@dataclass(frozen=True)
class EventRecord:
    id: int  # increases within a session (and globally)
    session_id: str
    kind: str  # "command", "task", "email", ...
    payload: str  # JSON
    created_at: float


@dataclass(frozen=True)
class MailboxRecord:
    local_part: str
    session_id: str
    key: str  # "" when interview_email() was called without a key
    index: str
    owner: str  # JSON of the user who asked for the address
    created_at: float
    expires_at: float | None
    emails: int = 0  # filled by list_mailboxes
    last_received: float | None = None


@dataclass(frozen=True)
class EmailRecord:
    id: str
    local_part: str
    session_id: str
    message_id: str | None
    sha256: str
    size: int
    envelope: str  # JSON: mail_from, rcpt_to, client_ip, helo
    parsed: str  # JSON of the parsed message (attachment bytes excluded)
    authentication: str  # JSON of the authentication results
    received_at: float


@dataclass(frozen=True)
class NewMailbox:
    local_part: str
    session_id: str
    key: str
    index: str
    owner: str
    expires_at: float | None


@dataclass(frozen=True)
class NewEmail:
    """One stored copy of a message for one recipient mailbox, with what it triggers."""

    id: str
    local_part: str
    session_id: str
    message_id: str | None
    dedupe: str  # message id + content hash: the same message to the same mailbox is stored once
    envelope: str
    parsed: str
    authentication: str
    task: NewTask | None  # the incoming_email task, when the interview defines it
    event: NewEvent | None  # None for the operator (postmaster) mailbox, which has no session
    # ``email`` messages to the session's running automations: queued with the e-mail (250 => queued),
    # and only when the e-mail is new (a duplicate queues nothing again)
    messages: Sequence[NewMessage] = ()


@dataclass(frozen=True)
class Delivery:
    sha256: str
    raw: bytes
    emails: Sequence[NewEmail]


@dataclass(frozen=True)
class NewInbound:
    """A message as the SMTP edge accepted it, before it is parsed: what the inbound queue keeps."""

    id: str
    sha256: str  # of ``raw``
    raw: bytes | bytearray  # the SMTP edge's own buffer for a big message (never copied)
    envelope: str  # JSON: client_ip, helo, mail_from, tls, rcpt (the accepted mailboxes)
    # (local part, session id) of the mailboxes accepted at RCPT: checked again in the enqueue's own
    # transaction, so that the check costs no call of its own (empty: not checked)
    mailboxes: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class InboundRecord:
    """A queued message. ``raw`` is filled by ``claim_inbound`` (the processor needs it), not by
    ``list_inbound``."""

    id: str
    seq: int  # arrival order
    sha256: str
    size: int
    envelope: str
    received_at: float  # when it was queued (the 250): the e-mails' received time
    attempts: int  # claims so far
    worker: str | None  # the processor that holds it, while its lease runs
    lease_until: float | None
    raw: bytes | bytearray | None = None  # a bytearray: the SMTP edge's buffer, handed over in memory


@dataclass(frozen=True)
class InboundDelivery:
    """What one queued message became: its e-mails (none when every recipient is gone), committed
    only while ``worker`` still holds the entry, which the same transaction removes from the queue."""

    entry_id: str
    worker: str
    emails: Sequence[NewEmail]


@dataclass(frozen=True)
class LeaseInfo:
    session_id: str
    holder: str
    acquired_at: float
    expires_at: float
    budget_until: float


@dataclass(frozen=True)
class NewTask:
    id: str
    session_id: str
    interview: str
    action: str
    arguments: str
    user: str
    ui_notification: str | None
    max_attempts: int
    automation_id: str | None = None  # started by a step of this automation (its end sends ``task_done``)


@dataclass(frozen=True)
class NewEvent:
    session_id: str
    kind: str
    payload: str


@dataclass(frozen=True)
class SessionSave:
    """Write answers if the stored version is still ``expected_version``."""

    session_id: str
    answers: str
    expected_version: int
    touch: bool = True  # counts as an access (False for the cron user)
    allow_cron: bool = False  # answers["allow_cron"] is True: scheduled events run on the session


@dataclass(frozen=True)
class TaskFinish:
    task_id: str
    worker: str
    state: Literal["succeeded", "failed"]
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_trace: str | None = None
    variables: str | None = None


@dataclass(frozen=True)
class Changes:
    """Everything one action produced, committed in one transaction (all or nothing)."""

    save: SessionSave | None = None
    delete_session: str | None = None
    new_tasks: Sequence[NewTask] = ()
    events: Sequence[NewEvent] = ()
    finish: TaskFinish | None = None
    release_lease: tuple[str, str] | None = None  # (session_id, holder)
    mailboxes: Sequence[NewMailbox] = ()  # created, or their expiry renewed
    # (session_id, version): apply only if the session is still at that version and nobody holds a
    # live lease on it, else VersionConflict. For actions that ran without taking the lease.
    unleased: tuple[str, int] | None = None
    # Automation runs (fenced, see AutomationUpdate) and messages sent to automations (their
    # targets' wake_at becomes now, so that a runner sees them at once).
    automations: Sequence[AutomationUpdate] = ()
    messages: Sequence[NewMessage] = ()
    # Created first, so that the rest of the commit may refer to them.
    new_automations: Sequence[AutomationStart] = ()
    # Queued broadcasts that found no instance running when sent: stored ``dropped`` (no one consumed them)
    broadcasts_unreached: Sequence[str] = ()


@dataclass(frozen=True)
class CommitResult:
    version: int | None = None
    events: Sequence[EventRecord] = field(default_factory=tuple)
    # (automation id, created) for each of ``Changes.new_automations``: the id is the running one's
    # when the unique rule returned an existing automation
    automations: Sequence[tuple[str, bool]] = field(default_factory=tuple)


@dataclass(frozen=True)
class Claim:
    """What ``claim_tasks`` did: the tasks now claimed, and the events of the tasks it failed instead."""

    tasks: Sequence[TaskRecord] = ()
    events: Sequence[EventRecord] = ()


@dataclass(frozen=True)
class StoreOverview:
    """What ``mailgate status`` shows of the store: counts, ages and size, read in one go."""

    tasks: dict[str, tuple[int, float | None]]  # state -> (count, created_at of the oldest)
    sessions: int
    mailboxes: int
    emails: int
    emails_since: int  # received at or after the ``since`` asked for
    size_bytes: int  # the database on disk (SQLite: file and WAL; PostgreSQL: pg_database_size)


# Called from a worker thread by long store operations: (done, total) in the operation's own units
StoreProgress = Callable[[int, int], None]

# What the store commits with a task it failed itself (its worker kept dying, or an operator cancelled
# it): the events that tell the session's browsers and, for a task an automation started, its
# ``task_done`` message (built by the core; only ``events`` and ``messages`` are read)
LostTask = Callable[[TaskRecord], Changes]


class Store(abc.ABC):
    """Durable state of mailgate. One instance per process; safe for concurrent use in one loop.

    Every failure of the backend itself (its driver, its disk, its locks) is raised as a
    :class:`~mailgate.errors.StoreError` (StoreUnavailable, StoreFull, StoreConflict); domain
    outcomes (NotFound, VersionConflict, LeaseLost, ...) keep their own types.
    """

    # -- time ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def now(self) -> float:
        """The store's clock, POSIX seconds: the time every stored timestamp and expiry is in.

        Code that compares its own "now" with stored times (lease expiries, mailbox expiry, access
        times) must ask here, never ``time.time()``: tests control this clock, and a backend may
        take it from its server.
        """

    # -- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the loop) whenever another process may have committed events: a doorbell.

        Backends that cannot ring do nothing (the default): the event feed's polling finds those
        commits. A backend that rings also calls ``wake`` after any pause in its ringing (a lost
        connection), so that the feed catches up.
        """
        del wake  # nothing rings here: the feed's polling finds other processes' commits

    def watch_tasks(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the loop) whenever another process may have queued tasks: the worker
        pool's doorbell, as :meth:`watch` is the feed's. Backends that cannot ring do nothing (the
        default): the pool's polling (``[tasks] poll_interval``) finds those tasks."""
        del wake  # nothing rings here: the pool's polling finds other processes' tasks

    def watch_inbound(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the loop) whenever another process may have queued inbound mail: the
        queue processor's doorbell. Backends that cannot ring do nothing (the default): the
        processor's polling finds those messages."""
        del wake  # nothing rings here: the processor's polling finds other processes' messages

    def watch_automations(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the loop) whenever an automation may have become due sooner than
        :meth:`next_wake` said: a message queued, an automation created, submitted, retried or
        moved. Backends that cannot ring another process do nothing for other processes (the
        runner's ``timer_poll`` finds their work); every backend rings for its own process."""
        del wake  # nothing rings here: the runner's polling finds other processes' work

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self, on_step: Callable[[int, int], None] | None = None) -> list[int]:
        """Apply pending numbered migrations; return the numbers applied. ``on_step(done, pending)``
        after each one (it may be called from another thread)."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    def latest_migration(self) -> int: ...

    # -- sessions --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_session(self, session_id: str, interview: str, answers: str, owner: str,
                             allow_cron: bool = False) -> SessionRecord: ...

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def get_sessions(self, session_ids: Sequence[str]) -> dict[str, SessionRecord]: ...

    @abc.abstractmethod
    async def list_sessions(self, *, interview: str | None = None, limit: int = 100, after: str | None = None) -> list[SessionRecord]: ...

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> bool:
        """Delete the session with its tasks, events and lease. False if it did not exist."""

    # -- the one write path for actions --------------------------------------------------------------
    @abc.abstractmethod
    async def commit(self, changes: Changes) -> CommitResult:
        """Apply ``changes`` atomically. Raises VersionConflict or LeaseLost and applies nothing."""

    # -- session leases ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def try_acquire_lease(self, session_id: str, holder: str, ttl: float, budget: float) -> LeaseInfo | None:
        """Take the lease if free or expired; None on success, else the current holder's lease."""

    @abc.abstractmethod
    async def acquire_lease_and_read(self, session_id: str, holder: str, ttl: float,
                                     budget: float) -> tuple[LeaseInfo | None, SessionRecord | None]:
        """``try_acquire_lease``, and on success the session as read under the new lease (None if gone)."""

    @abc.abstractmethod
    async def renew_lease(self, session_id: str, holder: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    async def release_lease(self, session_id: str, holder: str) -> None: ...

    # -- tasks -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_tasks(self, worker: str, limit: int, lease: float, lost: LostTask) -> Claim:
        """Claim up to ``limit`` runnable tasks: queued ones, and running ones whose lease expired.

        An expired task that has used all its attempts is failed instead (its worker kept dying,
        error type ``WorkerLost``); the events ``lost(failed task)`` returns are inserted in the same
        transaction and returned in ``Claim.events`` (the core builds them, so that every task event
        has one shape).
        """

    @abc.abstractmethod
    async def heartbeat(self, worker: str, task_ids: Sequence[str], lease: float) -> None: ...

    @abc.abstractmethod
    async def release_tasks(self, worker: str, task_ids: Sequence[str]) -> None:
        """Give claimed tasks back to the queue (graceful shutdown), without counting the attempt."""

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    @abc.abstractmethod
    async def get_tasks(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]: ...

    @abc.abstractmethod
    async def list_tasks(self, *, session_id: str | None = None, state: str | None = None, limit: int = 100) -> list[TaskRecord]: ...

    @abc.abstractmethod
    async def retry_task(self, task_id: str) -> TaskRecord:
        """Queue a failed task again with fresh attempts. Raises NotFound / MailgateError."""

    @abc.abstractmethod
    async def count_tasks(self) -> dict[str, int]:
        """Tasks by state, all of them: a full read of the table, for the CLI, not for a scrape."""

    @abc.abstractmethod
    async def task_queue(self) -> tuple[int, int, float | None]:
        """Queued and running tasks and the creation time of the oldest queued one (None: none queued),
        read through the index of runnable tasks only: what ``/metrics`` asks on every scrape."""

    # -- scheduled tasks -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_period(self, type_: str, period: str, holder: str) -> bool:
        """Claim one fire of a scheduled type; False if some daemon already ran that period."""

    @abc.abstractmethod
    async def last_periods(self) -> dict[str, tuple[str, float]]:
        """Type -> (latest period, when it was claimed)."""

    @abc.abstractmethod
    async def cron_session_ids(self, interviews: Sequence[str], after: str | None, limit: int) -> list[str]:
        """Ids of cron-enabled sessions of these interviews, in id order after ``after`` (paging)."""

    @abc.abstractmethod
    async def inactive_session_ids(self, before: float, interviews: Sequence[str] | None, exclude: Sequence[str],
                                   limit: int) -> list[str]:
        """Sessions whose answers were not saved since ``before`` (of ``interviews``, or of any but ``exclude``).

        Activity is any save of the answers, the cron user's included, as docassemble measures it:
        a session that a scheduled task keeps saving is never inactive (``accessed_at``, which the
        cron user does not touch, is what ``last_access_days()`` reads)."""

    # -- stashed data (stash_data / retrieve_stashed_data) ---------------------------------------------
    @abc.abstractmethod
    async def put_stash(self, stash: StashRecord) -> None:
        """Store a new stash (its key is new: random)."""

    @abc.abstractmethod
    async def take_stash(self, key: str, now: float, *, delete: bool = False,
                         expires_at: float | None = None) -> StashRecord | None:
        """The stash ``key`` unless missing or expired at ``now``; in the same transaction ``delete``
        removes it, or ``expires_at`` moves its expiry (the record returned shows the new one)."""

    @abc.abstractmethod
    async def purge_stashes(self, now: float) -> int:
        """Remove the stashes expired at ``now``; how many."""

    # -- mail ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def setting(self, name: str, default: str) -> str:
        """A process-wide setting; ``default`` is stored (once, atomically) if it has none yet."""

    async def peek_setting(self, name: str) -> str | None:
        """A process-wide setting as stored, None if it has none (nothing is stored)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def find_mailbox(self, local_part: str) -> MailboxRecord | None: ...

    @abc.abstractmethod
    async def list_mailboxes(self, *, session_id: str | None = None, limit: int = 100) -> list[MailboxRecord]: ...

    @abc.abstractmethod
    async def deliver(self, delivery: Delivery) -> tuple[list[str], list[EventRecord]]:
        """Store the raw bytes once and each new e-mail with its task and event, atomically.

        Returns the ids of the e-mails that were new (duplicates are skipped) and the events.
        """

    # -- the inbound queue ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue_inbound(self, entry: NewInbound) -> float | None:
        """Queue a received message durably (messages arriving together share one commit); returns
        its received time (the store's clock). With ``entry.mailboxes``, the message is queued only
        if at least one of them still takes mail (its row exists for that session, the session too,
        and it has not expired), as seen by the enqueue's own transaction; otherwise nothing is
        queued and the result is None."""

    @abc.abstractmethod
    async def claim_inbound(self, worker: str, limit: int, lease: float,
                            held: Collection[str] = ()) -> list[InboundRecord]:
        """Claim up to ``limit`` queued messages, oldest first, with their raw bytes: unclaimed ones
        and those whose claim's lease expired (their processor died). Each claim counts an attempt.
        The bytes of the entries named in ``held`` are not read (the caller has them: it queued them a
        moment ago): their ``raw`` is None."""

    @abc.abstractmethod
    async def deliver_inbound(self, delivery: InboundDelivery) -> tuple[list[str], list[EventRecord]]:
        """Turn one queued message into its e-mails, tasks and events and remove it from the queue,
        atomically. Raises LeaseLost and changes nothing if ``delivery.worker`` no longer holds the
        entry (its lease expired and another claimed it, or it is done already): so each queued
        message is delivered once. Duplicates are skipped as in :meth:`deliver`; returns the ids of
        the new e-mails and their events."""

    @abc.abstractmethod
    async def release_inbound(self, worker: str, entry_ids: Sequence[str]) -> None:
        """Give claimed messages back to the queue without counting the attempt (shutdown, a store
        error while delivering)."""

    @abc.abstractmethod
    async def renew_inbound(self, worker: str, entry_ids: Sequence[str], lease: float) -> list[str]:
        """Extend ``worker``'s claims on ``entry_ids`` to ``lease`` seconds from now (the processor's
        heartbeat); returns the ids it still held."""

    @abc.abstractmethod
    async def inbound_holders(self) -> list[str]:
        """The processors that hold claims on queued messages (expired claims included)."""

    @abc.abstractmethod
    async def release_dead_inbound(self, workers: Sequence[str]) -> int:
        """Give back at once the claims of ``workers``, processors known to be dead, so that the
        queue need not wait for their lease; the attempts they made still count. How many."""

    @abc.abstractmethod
    async def list_inbound(self, limit: int = 100) -> list[InboundRecord]:
        """Queued (not yet processed) messages, oldest first, without their raw bytes."""

    @abc.abstractmethod
    async def count_inbound(self) -> int:
        """How many messages wait in the inbound queue (claimed ones included)."""

    @abc.abstractmethod
    async def get_emails(self, email_ids: Sequence[str]) -> dict[str, EmailRecord]: ...

    @abc.abstractmethod
    async def list_emails(self, *, session_id: str | None = None, local_part: str | None = None,
                          limit: int = 100) -> list[EmailRecord]:
        """Oldest first."""

    @abc.abstractmethod
    async def get_raw(self, sha256: str) -> bytes | None: ...

    # -- events ------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def list_events(self, session_id: str, after_id: int = 0, limit: int = 100, *,
                          newest: bool = False) -> list[EventRecord]:
        """A session's events with an id above ``after_id``, oldest first: the first ``limit`` of
        them, or with ``newest`` the last ``limit``."""

    @abc.abstractmethod
    async def events_after(self, after_id: int, limit: int = 1000) -> list[EventRecord]:
        """Events of every session with an id above ``after_id``, oldest first (cross-process fan-out)."""

    @abc.abstractmethod
    async def events_with_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        """The events among ``ids`` that exist (are visible) now, in id order: the event feed asks
        again for ids it saw skipped (see :mod:`mailgate.core.events`)."""

    @abc.abstractmethod
    async def last_event_id(self) -> int: ...

    # -- operations (the admin CLI) -----------------------------------------------------------------
    @abc.abstractmethod
    async def cancel_task(self, task_id: str, lost: LostTask) -> tuple[TaskRecord, list[EventRecord]]:
        """Fail a queued or running task with error type ``Cancelled``, with the events ``lost(task)``
        returns, in one transaction. A worker still running it is refused its finish (``LeaseLost``,
        since the task is no longer ``running``), so what it did is not committed.

        Raises NotFound, or MailgateError when the task is already done."""

    @abc.abstractmethod
    async def purge_tasks(self, state: str, before: float | None, limit: int) -> int:
        """Delete up to ``limit`` tasks in ``state`` (queued, succeeded or failed) that finished (or,
        queued, were created) before ``before``; the number deleted. Called until it returns 0."""

    @abc.abstractmethod
    async def delete_email(self, email_id: str) -> bool:
        """Delete one stored e-mail (its raw bytes too when no other e-mail shares them). False if absent."""

    @abc.abstractmethod
    async def overview(self, since: float) -> StoreOverview: ...

    @abc.abstractmethod
    async def backup(self, path: str, progress: StoreProgress | None = None) -> int:
        """Write a consistent copy of the live store to the new file ``path``; its size in bytes.
        Backends that cannot raise MailgateError naming the tool to use instead."""

    @abc.abstractmethod
    async def restore(self, path: str, progress: StoreProgress | None = None) -> int:
        """Replace the whole store with the backup at ``path`` (then migrate it); its schema version.
        Backends that cannot raise MailgateError naming the tool to use instead."""

    # -- automations ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_automation(self, new: NewAutomation, steps: Sequence[NewStep] = (),
                                messages: Sequence[NewMessage] = ()) -> tuple[AutomationRecord, bool]:
        """Create an automation with its first steps and queued messages in one transaction;
        ``(record, True)``. When ``new.unique_key`` is set and a *running* automation of the same
        class has it, nothing is created and ``(that one, False)`` is returned, atomically (the
        database's partial unique index decides); ``messages`` are then queued to that one. The
        messages' ``automation_id`` is ignored: they go to the automation returned. NotFound when
        ``new.session_id`` names no session."""

    @abc.abstractmethod
    async def claim_automations(self, holder: str, limit: int, lease: float) -> list[ClaimedAutomation]:
        """Claim up to ``limit`` running automations that are due (``wake_at <= now``) and not
        claimed by a live claim (an expired one is taken over), earliest due first, for ``lease``
        seconds; each with its open steps and queued messages in order. Other claimers skip them."""

    @abc.abstractmethod
    async def heartbeat_automations(self, holder: str, automation_ids: Sequence[str], lease: float) -> list[str]:
        """Extend ``holder``'s claims; the ids it still holds (the others were taken over or ended)."""

    @abc.abstractmethod
    async def release_automations(self, holder: str, automation_ids: Sequence[str], wake_at: float | None = None) -> None:
        """Give claims back without a commit (a busy session, shutdown); ``wake_at`` postpones the
        next claim (a back-off), None leaves the automation due as it was."""

    @abc.abstractmethod
    async def recheck_automations(self, holder: str, rechecks: Sequence[Recheck]) -> list[str]:
        """Write the next due time of each automation whose run changed nothing else, and give
        ``holder``'s claim back, in one statement where the backend allows; the version, data, steps
        and ``updated_at`` stay. An automation with a message queued meanwhile stays due now. One whose
        fence does not hold (another version, not ``holder``'s claim, no longer running) is skipped:
        the ids applied are returned."""

    @abc.abstractmethod
    async def next_wake(self) -> float | None:
        """The earliest ``wake_at`` among running automations (claimed ones included), read from
        its index only; None when none waits on anything."""

    @abc.abstractmethod
    async def get_automation(self, automation_id: str) -> AutomationRecord | None: ...

    @abc.abstractmethod
    async def get_automation_by_key(self, key: str) -> AutomationRecord | None: ...

    @abc.abstractmethod
    async def list_automations(self, *, cls: str | None = None, state: str | None = None,
                               session_id: str | None = None, after_seq: int = 0,
                               limit: int = 100) -> list[AutomationRecord]:
        """Automations in creation order, those with ``seq > after_seq`` (paging)."""

    @abc.abstractmethod
    async def automation_history(self, automation_id: str) -> list[StepRecord]:
        """Every step of the automation in the order they were entered."""

    @abc.abstractmethod
    async def get_automation_step(self, step_id: str) -> StepRecord | None:
        """One step row by its id (a form task named by its step), whatever its state."""

    @abc.abstractmethod
    async def get_automation_message(self, message_id: str) -> MessageRecord | None:
        """One message row by its id (a broadcast, or one of its hops), whatever its state."""

    @abc.abstractmethod
    async def automation_messages(self, automation_id: str) -> list[MessageRecord]:
        """The automation's messages in commit order, every state."""

    @abc.abstractmethod
    async def queued_broadcasts(self, limit: int = 100) -> list[MessageRecord]:
        """Broadcasts not consumed yet, oldest first (a runner delivers them and marks them done
        with a :class:`MessageDone` in a commit)."""

    @abc.abstractmethod
    async def enqueue_message(self, message: NewMessage) -> MessageRecord:
        """Queue a message (or a broadcast) in its own commit. A message to a running automation
        makes it due now in the same transaction; to one that is not running (or absent) it is
        stored ``dropped``."""

    @abc.abstractmethod
    async def open_interactions(self, user_id: str | None, privileges: Sequence[str],
                                limit: int = 100) -> list[tuple[AutomationRecord, StepRecord]]:
        """Steps waiting for a user (state ``interaction``) of running automations that this user
        may be offered: assigned to nobody or to ``user_id``, needing no privilege outside
        ``privileges`` (``admin`` sees all). The core decides finally (its assignee resolver)."""

    @abc.abstractmethod
    async def submit_interaction(self, automation_id: str, step_id: str, expected_version: int, *,
                                 submitted_by: str, data: str, result: str | None = None) -> AutomationRecord:
        """Close an interaction step (done, ``OK``, ``submitted_by``), store ``data`` and make the
        automation due now, fenced like a commit by ``expected_version`` (AutomationFenced).
        InteractionClosed when the step does not wait for a submit (any more); NotFound."""

    @abc.abstractmethod
    async def kill_automation(self, automation_id: str) -> bool:
        """Delete the automation with its steps, messages and journal. False if it did not exist.
        A runner holding it has its commit refused."""

    @abc.abstractmethod
    async def retry_automation(self, automation_id: str) -> AutomationRecord:
        """A failed automation runs again: its failed steps wait again (error kept until they run),
        it is running and due now. NotFound; MailgateError when it is not failed."""

    @abc.abstractmethod
    async def goto_automation(self, automation_id: str, node: str, step_id: str) -> AutomationRecord:
        """Close every open step (skipped, message ``goto <node>``) and open a step ``step_id`` at
        ``node``, due now; a failed automation runs again. NotFound; MailgateError for an ended
        (finished or killed) automation."""

    @abc.abstractmethod
    async def delete_automation_history(self, before: float) -> tuple[int, int]:
        """Delete the finished, failed and killed automations that ended before ``before``, with
        their steps, messages and journal; (automations, steps) deleted. Consumed broadcasts and
        messages dropped for automations that are gone, sent before ``before``, go too."""

    @abc.abstractmethod
    async def count_automations(self) -> dict[str, int]:
        """Automations by state (every state present, zero included), for metrics and the CLI."""

    @abc.abstractmethod
    async def automation_backlog(self) -> tuple[int, float | None]:
        """Running automations due now (``wake_at <= now``, claimed ones included) and the oldest due
        time among them (None: none due), read through the timer index only: the metrics' due backlog."""

    @abc.abstractmethod
    async def journal_entry(self, step_id: str, call_index: int) -> JournalRecord | None:
        """The recorded effect of a step's ``call_index``-th journaled call, if it committed."""
