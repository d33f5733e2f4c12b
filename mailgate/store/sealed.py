"""Encryption at rest: a Store that seals answers and mail before any backend writes them.

:class:`SealedStore` wraps a backend (SQLite or PostgreSQL alike) when ``[store] encryption_key`` is
set: every domain method that writes a column holding answers or mail seals it with the keyring
(:mod:`mailgate.store.sealing`), every method that reads one opens it, so the backends, their SQL and
``mailgate db copy`` (which moves sealed values as they are) do not change. Each sealed value is bound
to its column and its row (the associated data ``table.column`` + row id), so a value moved to another
row or column does not open.

Sealed (see :data:`SEALED`): session answers and owners; task arguments, users, notifications,
results, errors and variables; event payloads; mailbox keys, indexes and owners; e-mail message ids,
envelopes, parsed JSON and authentication results; the raw bytes of stored and queued messages and the
queue's envelopes; process settings (the keys of the web and mailbox secrets among them); the
automations' data, step outcomes, messages and journal (:mod:`mailgate.store.sealed_automations`,
mixed in, says which columns and why the others stay clear). Keyed hashes
(compared, never read): the raw content hash (``raw_messages``, ``emails``, ``inbound_queue``) and the
e-mail dedupe key. In clear, because the store queries or orders by them and they hold no answer or
mail text: ids, interview and action names, task states, attempts, workers, times, sizes, error types,
event kinds, local parts (random, generated), cron periods, leases; stash data is sealed already
by the core under a key only its secret carries.
"""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from mailgate.errors import ConfigError, LeaseLost
from mailgate.store.base import (
    Changes,
    Claim,
    CommitResult,
    Delivery,
    EmailRecord,
    EventRecord,
    InboundDelivery,
    InboundRecord,
    LeaseInfo,
    LostTask,
    MailboxRecord,
    NewEmail,
    NewEvent,
    NewInbound,
    NewMailbox,
    NewTask,
    SessionRecord,
    SessionSave,
    Store,
    TaskFinish,
    TaskRecord,
)
from mailgate.store.sealed_automations import AUTOMATION_SEALED, SealedAutomations
from mailgate.store.sealed_automations import replace_record as _with
from mailgate.store.sealing import (
    BYTES_PREFIX,
    NONCE,
    Keyring,
    is_keyed_hash,
    is_sealed_text,
    keyed_hash,
    text_key_id,
)

INDEX_KEY = "store.index_key"  # the settings row holding the (sealed) key of the keyed hashes
SHA_HEX = 64  # a content hash in hex, kept in front of a sealed row's envelope
CLAIMS_KEPT = 100_000  # queued messages remembered as claimed here (a processor claims a few at a time)
MEMO_SIZE = 20_000  # sessions' answers and owners kept opened (the SQLite backend caches 10,000 sessions)
EMAIL_MEMO_BYTES = 16 * 2**20  # e-mail records kept opened, by the size of their sealed and opened JSON
RAW_OVERHEAD = len(BYTES_PREFIX) + 4 + NONCE + 16  # what sealing adds to a raw message's size

# table -> (row id column, sealed text columns); raw bytes and keyed hashes are handled apart
SEALED: dict[str, tuple[str, tuple[str, ...]]] = {
    "sessions": ("id", ("answers", "owner")),
    "tasks": ("id", ("arguments", "user", "ui_notification", "result", "error_message", "error_trace", "variables")),
    "events": ("session_id", ("payload",)),
    "mailboxes": ("local_part", ("key", "idx", "owner")),
    "emails": ("id", ("message_id", "envelope", "parsed", "authentication")),
    "inbound_queue": ("id", ("envelope",)),
    "settings": ("name", ("value",)),
    **AUTOMATION_SEALED,
}


def aad(table: str, column: str, row: str) -> str:
    """The associated data of a sealed value: its place, so that it opens only there."""
    return f"{table}.{column}\x00{row}"


def raw_aad(content_hash: str) -> str:
    """Raw bytes are bound to their content hash, shared by ``inbound_queue`` and ``raw_messages``
    (a processed message's bytes move from the one to the other inside the database)."""
    return f"raw\x00{content_hash}"


class SealedStore(SealedAutomations, Store):
    """``inner`` with answers and mail sealed under ``keyring``. Attributes it does not define (a
    backend's own, such as ``path``) are the inner store's."""

    def __init__(self, inner: Store, keyring: Keyring) -> None:
        self.inner = inner
        self.ring = keyring
        self._index_key: bytes | None = None
        self._claimed: dict[str, str] = {}  # queued message id -> its content hash, while claimed here
        # (column, session id) -> (sealed, plain) of what was last read or written here: memory holds
        # the answers in clear anyway while a session is in use; the store never does
        self._memo: dict[tuple[str, str], tuple[str, str]] = {}
        # e-mail id -> (the row as read, opened, its size): an e-mail's row never changes (but for a rekey,
        # whose new sealed values miss here), yet answers that keep DAEmails load them again at every save
        self._email_memo: OrderedDict[str, tuple[EmailRecord, EmailRecord, int]] = OrderedDict()
        self._email_memo_bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- the codec ---------------------------------------------------------------------------------
    def _seal(self, table: str, column: str, row: str, value: str) -> str:
        return self.ring.seal_text(value, aad(table, column, row))

    def _seal_opt(self, table: str, column: str, row: str, value: str | None) -> str | None:
        return None if value is None else self.ring.seal_text(value, aad(table, column, row))

    def _open(self, table: str, column: str, row: str, value: str) -> str:
        return self.ring.open_text(value, aad(table, column, row), f"{table}.{column} of {row}")

    def _open_session(self, column: str, row: str, value: str) -> str:
        """A session's column, from the memo when it holds this very sealed value (sessions are read
        on every check-in, and most reads follow this process's own save of them)."""
        hit = self._memo.get((column, row))
        if hit is not None and hit[0] == value:
            return hit[1]
        plain = self._open("sessions", column, row, value)
        self._remember(column, row, value, plain)
        return plain

    def _seal_answers(self, save: SessionSave) -> str:
        """The answers sealed; when they are what this process last read or wrote, under the current
        key, the same sealed value again (a check-in that changes nothing costs no encryption)."""
        hit = self._memo.get(("answers", save.session_id))
        if hit is not None and hit[1] == save.answers and text_key_id(hit[0]) == self.ring.current_id:
            return hit[0]
        return self._seal("sessions", "answers", save.session_id, save.answers)

    def _forget(self, session_id: str) -> None:
        self._memo.pop(("answers", session_id), None)
        self._memo.pop(("owner", session_id), None)

    def _remember(self, column: str, row: str, sealed: str, plain: str) -> None:
        memo = self._memo
        memo.pop((column, row), None)
        memo[column, row] = (sealed, plain)
        if len(memo) > MEMO_SIZE:
            del memo[next(iter(memo))]  # the least recently stored (dicts keep insertion order)

    def _open_opt(self, table: str, column: str, row: str, value: str | None) -> str | None:
        return None if value is None else self._open(table, column, row, value)

    async def index_key(self) -> bytes:
        """The key of the keyed hashes: made once per store, kept sealed in ``settings``."""
        if self._index_key is None:
            stored = await self.inner.setting(INDEX_KEY, self._seal("settings", "value", INDEX_KEY, os.urandom(32).hex()))
            kid = text_key_id(stored)
            if kid is not None and kid not in self.ring.keys:
                configured = ", ".join(sorted(self.ring.keys))
                raise ConfigError(f"[store] encryption_key does not open this store: it is sealed under key {kid}, and the "
                                  f"keys configured are {configured}; set the key it was encrypted with (while rotating, "
                                  "keep that one in old_encryption_keys)")
            self._index_key = bytes.fromhex(self._open("settings", "value", INDEX_KEY, stored))
        return self._index_key

    async def _hash(self, value: str) -> str:
        return keyed_hash(await self.index_key(), value)

    def _session(self, r: SessionRecord) -> SessionRecord:
        return _with(r, answers=self._open_session("answers", r.id, r.answers),
                                   owner=self._open_session("owner", r.id, r.owner))

    def _task(self, r: TaskRecord) -> TaskRecord:
        o = self._open_opt
        return _with(
            r, arguments=self._open("tasks", "arguments", r.id, r.arguments), user=self._open("tasks", "user", r.id, r.user),
            ui_notification=o("tasks", "ui_notification", r.id, r.ui_notification), result=o("tasks", "result", r.id, r.result),
            error_message=o("tasks", "error_message", r.id, r.error_message),
            error_trace=o("tasks", "error_trace", r.id, r.error_trace), variables=o("tasks", "variables", r.id, r.variables))

    def _event(self, r: EventRecord) -> EventRecord:
        return _with(r, payload=self._open("events", "payload", r.session_id, r.payload))

    def _events(self, events: Sequence[EventRecord], written: Sequence[tuple[NewEvent, NewEvent]] = ()) -> list[EventRecord]:
        """Events opened; those among ``written`` ((clear, sealed) pairs this call just wrote) without
        decrypting them again."""
        if not written:
            return [self._event(e) for e in events]
        known = {sealed.payload: clear.payload for clear, sealed in written}
        return [_with(e, payload=known[e.payload]) if e.payload in known else self._event(e)
                for e in events]

    def _sealed_events(self, events: Sequence[NewEvent]) -> list[tuple[NewEvent, NewEvent]]:
        return [(e, self._new_event(e)) for e in events]

    def _mailbox(self, r: MailboxRecord) -> MailboxRecord:
        lp = r.local_part
        return _with(r, key=self._open("mailboxes", "key", lp, r.key),
                                   index=self._open("mailboxes", "idx", lp, r.index),
                                   owner=self._open("mailboxes", "owner", lp, r.owner))

    def _unpack(self, table: str, r: EmailRecord | InboundRecord) -> tuple[str, str, int]:
        """(content hash, envelope, size) of a row: a sealed row keeps a keyed hash in its ``sha256``
        column and the real hash in front of its sealed envelope; a clear row has both in clear."""
        envelope = self._open(table, "envelope", r.id, r.envelope)
        if not is_keyed_hash(r.sha256):
            return r.sha256, envelope, r.size
        return envelope[:SHA_HEX], envelope[SHA_HEX:], r.size - RAW_OVERHEAD

    def _pack(self, table: str, row: str, sha256: str, envelope: str) -> str:
        return self._seal(table, "envelope", row, sha256 + envelope)

    def _email(self, r: EmailRecord) -> EmailRecord:
        """The e-mail row ``r`` opened; from the memo when this process opened this very row before."""
        memo = self._email_memo
        hit = memo.get(r.id)
        if hit is not None and hit[0] == r:  # every sealed column as it was: nothing moved or re-sealed
            memo.move_to_end(r.id)
            return hit[1]
        sha, envelope, size = self._unpack("emails", r)
        opened = _with(
            r, message_id=self._open_opt("emails", "message_id", r.id, r.message_id), sha256=sha, size=size,
            envelope=envelope, parsed=self._open("emails", "parsed", r.id, r.parsed),
            authentication=self._open("emails", "authentication", r.id, r.authentication))
        cost = 2 * (len(r.parsed) + len(r.envelope) + len(r.authentication))
        if hit is not None:
            self._email_memo_bytes -= memo.pop(r.id)[2]
        if cost <= EMAIL_MEMO_BYTES // 16:  # a big e-mail is read rarely: not worth the room
            memo[r.id] = (r, opened, cost)
            self._email_memo_bytes += cost
            while self._email_memo_bytes > EMAIL_MEMO_BYTES:
                self._email_memo_bytes -= memo.popitem(last=False)[1][2]
        return opened

    def _inbound(self, r: InboundRecord) -> InboundRecord:
        raw = r.raw if r.raw is None else self.ring.open_bytes(bytes(r.raw), raw_aad(r.sha256), f"inbound_queue.raw of {r.id}")
        sha, envelope, size = self._unpack("inbound_queue", r)
        return _with(r, sha256=sha, envelope=envelope, raw=raw, size=size)

    def _new_task(self, t: NewTask) -> NewTask:
        return _with(t, arguments=self._seal("tasks", "arguments", t.id, t.arguments),
                                   user=self._seal("tasks", "user", t.id, t.user),
                                   ui_notification=self._seal_opt("tasks", "ui_notification", t.id, t.ui_notification))

    def _new_event(self, e: NewEvent) -> NewEvent:
        return _with(e, payload=self._seal("events", "payload", e.session_id, e.payload))

    def _finish(self, f: TaskFinish) -> TaskFinish:
        s, tid = self._seal_opt, f.task_id
        return _with(f, result=s("tasks", "result", tid, f.result),
                                   error_message=s("tasks", "error_message", tid, f.error_message),
                                   error_trace=s("tasks", "error_trace", tid, f.error_trace),
                                   variables=s("tasks", "variables", tid, f.variables))

    def _new_mailbox(self, m: NewMailbox) -> NewMailbox:
        lp = m.local_part
        return _with(m, key=self._seal("mailboxes", "key", lp, m.key),
                                   index=self._seal("mailboxes", "idx", lp, m.index),
                                   owner=self._seal("mailboxes", "owner", lp, m.owner))

    async def _new_email(self, e: NewEmail, sha256: str) -> NewEmail:
        return _with(
            e, dedupe=await self._hash(e.dedupe), message_id=self._seal_opt("emails", "message_id", e.id, e.message_id),
            envelope=self._pack("emails", e.id, sha256, e.envelope), parsed=self._seal("emails", "parsed", e.id, e.parsed),
            authentication=self._seal("emails", "authentication", e.id, e.authentication),
            task=None if e.task is None else self._new_task(e.task),
            event=None if e.event is None else self._new_event(e.event),  # the postmaster mailbox's have none
            messages=self._new_messages(e.messages))

    def _lost(self, lost: LostTask) -> LostTask:
        def sealed(task: TaskRecord) -> Changes:
            ch = lost(self._task(task))
            return Changes(events=[self._new_event(e) for e in ch.events], messages=self._new_messages(ch.messages))

        return sealed

    # -- lifecycle -----------------------------------------------------------------------------------
    def now(self) -> float:
        return self.inner.now()

    async def open(self) -> None:
        await self.inner.open()

    def watch(self, wake: Callable[[], None]) -> None:
        self.inner.watch(wake)

    def watch_tasks(self, wake: Callable[[], None]) -> None:
        self.inner.watch_tasks(wake)

    def watch_inbound(self, wake: Callable[[], None]) -> None:
        self.inner.watch_inbound(wake)

    def watch_automations(self, wake: Callable[[], None]) -> None:
        self.inner.watch_automations(wake)

    async def close(self) -> None:
        await self.inner.close()

    async def migrate(self, on_step: Callable[[int, int], None] | None = None) -> list[int]:
        return await self.inner.migrate(on_step)

    async def schema_version(self) -> int:
        return await self.inner.schema_version()

    def latest_migration(self) -> int:
        return self.inner.latest_migration()

    # -- sessions ------------------------------------------------------------------------------------
    async def create_session(self, session_id: str, interview: str, answers: str, owner: str,
                             allow_cron: bool = False) -> SessionRecord:
        sealed_answers = self._seal("sessions", "answers", session_id, answers)
        sealed_owner = self._seal("sessions", "owner", session_id, owner)
        rec = await self.inner.create_session(session_id, interview, sealed_answers, sealed_owner, allow_cron)
        self._remember("answers", session_id, sealed_answers, answers)
        self._remember("owner", session_id, sealed_owner, owner)
        return _with(rec, answers=answers, owner=owner)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rec = await self.inner.get_session(session_id)
        return None if rec is None else self._session(rec)

    async def get_sessions(self, session_ids: Sequence[str]) -> dict[str, SessionRecord]:
        return {k: self._session(v) for k, v in (await self.inner.get_sessions(session_ids)).items()}

    async def list_sessions(self, *, interview: str | None = None, limit: int = 100,
                            after: str | None = None) -> list[SessionRecord]:
        return [self._session(r) for r in await self.inner.list_sessions(interview=interview, limit=limit, after=after)]

    async def delete_session(self, session_id: str) -> bool:
        self._forget(session_id)
        return await self.inner.delete_session(session_id)

    async def commit(self, changes: Changes) -> CommitResult:
        save = changes.save
        sealed_save = None if save is None else _with(save, answers=self._seal_answers(save))
        events = self._sealed_events(changes.events)
        sealed = _with(
            changes,
            save=sealed_save,
            new_tasks=[self._new_task(t) for t in changes.new_tasks],
            events=[e for _, e in events],
            finish=None if changes.finish is None else self._finish(changes.finish),
            mailboxes=[self._new_mailbox(m) for m in changes.mailboxes],
            new_automations=[await self._start(s) for s in changes.new_automations],
            automations=[self._update(u) for u in changes.automations],
            messages=self._new_messages(changes.messages))
        result = await self.inner.commit(sealed)
        if changes.delete_session is not None:
            self._forget(changes.delete_session)
        if save is not None and sealed_save is not None:
            self._remember("answers", save.session_id, sealed_save.answers, save.answers)
        return _with(result, events=self._events(result.events, events))

    # -- leases --------------------------------------------------------------------------------------
    async def try_acquire_lease(self, session_id: str, holder: str, ttl: float, budget: float) -> LeaseInfo | None:
        return await self.inner.try_acquire_lease(session_id, holder, ttl, budget)

    async def acquire_lease_and_read(self, session_id: str, holder: str, ttl: float,
                                     budget: float) -> tuple[LeaseInfo | None, SessionRecord | None]:
        lease, rec = await self.inner.acquire_lease_and_read(session_id, holder, ttl, budget)
        return lease, None if rec is None else self._session(rec)

    async def renew_lease(self, session_id: str, holder: str, ttl: float) -> bool:
        return await self.inner.renew_lease(session_id, holder, ttl)

    async def release_lease(self, session_id: str, holder: str) -> None:
        await self.inner.release_lease(session_id, holder)

    # -- tasks ---------------------------------------------------------------------------------------
    async def claim_tasks(self, worker: str, limit: int, lease: float, lost: LostTask) -> Claim:
        claim = await self.inner.claim_tasks(worker, limit, lease, self._lost(lost))
        return Claim(tuple(self._task(t) for t in claim.tasks), tuple(self._events(claim.events)))

    async def heartbeat(self, worker: str, task_ids: Sequence[str], lease: float) -> None:
        await self.inner.heartbeat(worker, task_ids, lease)

    async def release_tasks(self, worker: str, task_ids: Sequence[str]) -> None:
        await self.inner.release_tasks(worker, task_ids)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        rec = await self.inner.get_task(task_id)
        return None if rec is None else self._task(rec)

    async def get_tasks(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        return {k: self._task(v) for k, v in (await self.inner.get_tasks(task_ids)).items()}

    async def list_tasks(self, *, session_id: str | None = None, state: str | None = None,
                         limit: int = 100) -> list[TaskRecord]:
        return [self._task(t) for t in await self.inner.list_tasks(session_id=session_id, state=state, limit=limit)]

    async def retry_task(self, task_id: str) -> TaskRecord:
        return self._task(await self.inner.retry_task(task_id))

    async def count_tasks(self) -> dict[str, int]:
        return await self.inner.count_tasks()

    async def task_queue(self) -> tuple[int, int, float | None]:
        return await self.inner.task_queue()

    # -- scheduled tasks and stashes (nothing sealed here) ---------------------------------------------
    async def claim_period(self, type_: str, period: str, holder: str) -> bool:
        return await self.inner.claim_period(type_, period, holder)

    async def last_periods(self) -> dict[str, tuple[str, float]]:
        return await self.inner.last_periods()

    async def cron_session_ids(self, interviews: Sequence[str], after: str | None, limit: int) -> list[str]:
        return await self.inner.cron_session_ids(interviews, after, limit)

    async def inactive_session_ids(self, before: float, interviews: Sequence[str] | None, exclude: Sequence[str],
                                   limit: int) -> list[str]:
        return await self.inner.inactive_session_ids(before, interviews, exclude, limit)

    async def put_stash(self, stash: Any) -> None:
        await self.inner.put_stash(stash)  # sealed already, under a key that only the stash's secret carries

    async def take_stash(self, key: str, now: float, *, delete: bool = False, expires_at: float | None = None) -> Any:
        return await self.inner.take_stash(key, now, delete=delete, expires_at=expires_at)

    async def purge_stashes(self, now: float) -> int:
        return await self.inner.purge_stashes(now)

    # -- mail ----------------------------------------------------------------------------------------
    async def peek_setting(self, name: str) -> str | None:
        stored = await self.inner.peek_setting(name)
        return None if stored is None else self._open("settings", "value", name, stored)

    async def setting(self, name: str, default: str) -> str:
        stored = await self.inner.setting(name, self._seal("settings", "value", name, default))
        return self._open("settings", "value", name, stored)

    async def find_mailbox(self, local_part: str) -> MailboxRecord | None:
        rec = await self.inner.find_mailbox(local_part)
        return None if rec is None else self._mailbox(rec)

    async def list_mailboxes(self, *, session_id: str | None = None, limit: int = 100) -> list[MailboxRecord]:
        return [self._mailbox(m) for m in await self.inner.list_mailboxes(session_id=session_id, limit=limit)]

    async def deliver(self, delivery: Delivery) -> tuple[list[str], list[EventRecord]]:
        h = await self._hash(delivery.sha256)
        emails = [await self._new_email(e, delivery.sha256) for e in delivery.emails]
        ids, events = await self.inner.deliver(Delivery(h, self.ring.seal_bytes(delivery.raw, raw_aad(h)), emails))
        return ids, self._events(events, _event_pairs(delivery.emails, emails))

    async def enqueue_inbound(self, entry: NewInbound) -> float | None:
        h = await self._hash(entry.sha256)
        return await self.inner.enqueue_inbound(NewInbound(
            entry.id, h, self.ring.seal_bytes(entry.raw, raw_aad(h)),
            self._pack("inbound_queue", entry.id, entry.sha256, entry.envelope),
            entry.mailboxes))  # local parts and session ids: in clear, as in their own tables

    async def claim_inbound(self, worker: str, limit: int, lease: float,
                            held: Collection[str] = ()) -> list[InboundRecord]:
        claimed = [self._inbound(r) for r in await self.inner.claim_inbound(worker, limit, lease, held)]
        for r in claimed:
            self._claimed.pop(r.id, None)
            self._claimed[r.id] = r.sha256
        while len(self._claimed) > CLAIMS_KEPT:  # the oldest: claims lost to other processes, never delivered here
            del self._claimed[next(iter(self._claimed))]
        return claimed

    async def deliver_inbound(self, delivery: InboundDelivery) -> tuple[list[str], list[EventRecord]]:
        sha = self._claimed.get(delivery.entry_id)
        if sha is None:  # never claimed in this process: the inner store would refuse it too
            raise LeaseLost(f"queued message {delivery.entry_id} is not claimed by {delivery.worker}")
        emails = [await self._new_email(e, sha) for e in delivery.emails]
        ids, events = await self.inner.deliver_inbound(_with(delivery, emails=emails))
        self._claimed.pop(delivery.entry_id, None)
        return ids, self._events(events, _event_pairs(delivery.emails, emails))

    async def release_inbound(self, worker: str, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            self._claimed.pop(entry_id, None)
        await self.inner.release_inbound(worker, entry_ids)

    async def renew_inbound(self, worker: str, entry_ids: Sequence[str], lease: float) -> list[str]:
        return await self.inner.renew_inbound(worker, entry_ids, lease)  # ids and holders only: nothing sealed

    async def inbound_holders(self) -> list[str]:
        return await self.inner.inbound_holders()

    async def release_dead_inbound(self, workers: Sequence[str]) -> int:
        return await self.inner.release_dead_inbound(workers)  # their claims were never in this process's memo

    async def list_inbound(self, limit: int = 100) -> list[InboundRecord]:
        return [self._inbound(r) for r in await self.inner.list_inbound(limit)]

    async def count_inbound(self) -> int:
        return await self.inner.count_inbound()

    async def get_emails(self, email_ids: Sequence[str]) -> dict[str, EmailRecord]:
        return {k: self._email(v) for k, v in (await self.inner.get_emails(email_ids)).items()}

    async def list_emails(self, *, session_id: str | None = None, local_part: str | None = None,
                          limit: int = 100) -> list[EmailRecord]:
        return [self._email(e) for e in await self.inner.list_emails(session_id=session_id, local_part=local_part, limit=limit)]

    async def get_raw(self, sha256: str) -> bytes | None:
        h = await self._hash(sha256)
        raw = await self.inner.get_raw(h)
        if raw is None:  # stored before encryption was switched on (and not re-sealed yet)
            h, raw = sha256, await self.inner.get_raw(sha256)
        return None if raw is None else self.ring.open_bytes(raw, raw_aad(h), f"raw_messages.raw of {sha256}")

    # -- events --------------------------------------------------------------------------------------
    async def list_events(self, session_id: str, after_id: int = 0, limit: int = 100, *,
                          newest: bool = False) -> list[EventRecord]:
        return self._events(await self.inner.list_events(session_id, after_id, limit, newest=newest))

    async def events_after(self, after_id: int, limit: int = 1000) -> list[EventRecord]:
        return self._events(await self.inner.events_after(after_id, limit))

    async def events_with_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        return self._events(await self.inner.events_with_ids(ids))

    async def last_event_id(self) -> int:
        return await self.inner.last_event_id()

    # -- operations ----------------------------------------------------------------------------------
    async def cancel_task(self, task_id: str, lost: LostTask) -> tuple[TaskRecord, list[EventRecord]]:
        task, events = await self.inner.cancel_task(task_id, self._lost(lost))
        return self._task(task), self._events(events)

    async def purge_tasks(self, state: str, before: float | None, limit: int) -> int:
        return await self.inner.purge_tasks(state, before, limit)

    async def delete_email(self, email_id: str) -> bool:
        hit = self._email_memo.pop(email_id, None)
        if hit is not None:
            self._email_memo_bytes -= hit[2]
        return await self.inner.delete_email(email_id)

    async def overview(self, since: float) -> Any:
        return await self.inner.overview(since)

    async def backup(self, path: str, progress: Any = None) -> int:
        return await self.inner.backup(path, progress)  # the copy holds the sealed values: it needs the same keys

    async def restore(self, path: str, progress: Any = None) -> int:
        return await self.inner.restore(path, progress)


def _event_pairs(clear: Sequence[NewEmail], sealed: Sequence[NewEmail]) -> list[tuple[NewEvent, NewEvent]]:
    """(clear, sealed) events of e-mails just written; postmaster e-mails have none."""
    return [(c.event, s.event) for c, s in zip(clear, sealed, strict=True) if c.event is not None and s.event is not None]


def _pass_through(name: str) -> Any:
    if not inspect.iscoroutinefunction(getattr(Store, name)):
        def plain(self: SealedStore, *args: Any, **kwargs: Any) -> Any:
            return getattr(self.inner, name)(*args, **kwargs)

        plain.__name__ = name
        return plain

    async def method(self: SealedStore, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


# A Store method added later and not listed above is passed through unchanged (in clear) rather than
# making every encrypted store unusable; tests/unit/test_sealing.py fails until it is decided here.
PASSED_UNREVIEWED = tuple(sorted(SealedStore.__abstractmethods__))
for _name in PASSED_UNREVIEWED:
    setattr(SealedStore, _name, _pass_through(_name))
SealedStore.__abstractmethods__ = frozenset()


async def check_keys(store: Store) -> None:
    """Stop with one clear line (ConfigError) when the configured keys do not fit the (migrated) store:
    a key that opens none of it, or an encrypted store and no key, before anything reads a sealed value."""
    if isinstance(store, SealedStore):
        await store.index_key()
    elif await store.schema_version() > 0 and is_sealed_text(await store.peek_setting(INDEX_KEY)):
        raise ConfigError("this store is encrypted at rest, and no key is configured: set [store] encryption_key "
                          "(or encryption_key_file) to the key it was encrypted with")
