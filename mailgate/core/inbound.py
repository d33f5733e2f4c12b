"""Mail to a session, the core half: recipient checks, the inbound queue, and delivery.

The SMTP edge asks :class:`Inbound` whether a recipient exists (an address of
:mod:`mailgate.core.mailboxes`) and hands it the message (:meth:`Inbound.receive`): the raw bytes and
the envelope are queued durably, and the edge answers 250. The processor
(:mod:`mailgate.core.ingest`) then parses and authenticates each queued message with
:meth:`Inbound.prepare` and stores it with :meth:`Inbound.emails_for`. With ``auth_policy =
"reject"`` the reply depends on DMARC, so :meth:`Inbound.deliver` does all of it before the reply,
as one step. Everything here is independent of aiosmtpd and of reply codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from mailgate import metrics
from mailgate.automations.registry import AutomationRegistry
from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.core.commits import Commits
from mailgate.core.daemail import DAEmail
from mailgate.core.handover import Handover
from mailgate.core.interviews import Registry
from mailgate.core.mailboxes import (
    POSTMASTER,
    POSTMASTER_MAILBOX,
    Addresses,
    Mailboxes,
    is_bare_postmaster,
    is_postmaster,
    split_address,
)
from mailgate.errors import NotFound
from mailgate.mail.auth import (
    AuthResults,
    DkimResult,
    DnsTempError,
    Resolver,
    authenticate,
    dkim_key_names,
    fetch_dkim_keys,
    verify_dkim,
)
from mailgate.mail.auth import warm_up as load_public_suffixes
from mailgate.mail.parse import BodyPart, ParsedMessage, ParseLimits, parse_with_body_parts
from mailgate.mail.resolver import QueryBudget
from mailgate.mail.workers import WorkerOutOfMemory, WorkerPool, WorkerTimeout
from mailgate.store.base import (
    Delivery,
    MailboxRecord,
    NewEmail,
    NewEvent,
    NewInbound,
    NewMessage,
    NewTask,
    SessionRecord,
    Store,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

class Verdict(enum.Enum):
    OK = "ok"
    FOREIGN_DOMAIN = "foreign domain"
    UNKNOWN = "unknown mailbox"
    EXPIRED = "expired mailbox"
    BAD_ADDRESS = "bad address"


@dataclass(frozen=True)
class DeliveryResult:
    stored: list[str]  # ids of e-mails stored now
    duplicates: int  # recipients for whom this message was already stored
    rejected: str | None = None  # why the whole message was refused (DMARC policy)
    auth: AuthResults | None = None
    queued: str | None = None  # the inbound queue entry: processed after the reply
    message_id: str | None = None  # of a stored message, for the log


_HASH_IN_THREAD = 1 << 20  # messages this big are hashed off the loop


class Inbound:
    def __init__(self, config: Config, store: Store, registry: Registry, mailboxes: Mailboxes, commits: Commits,
                 executor: Executor, resolver: Resolver, authserv_id: str) -> None:
        self._store = store
        self._registry = registry
        self.automation_classes = AutomationRegistry()  # the daemon sets the loaded ones: mail becomes messages
        self._mailboxes = mailboxes
        self._commits = commits
        self._executor = executor
        self.config = config
        self.resolver = resolver
        self.authserv_id = authserv_id
        self.limits = ParseLimits(config.smtp.max_parts, config.smtp.max_depth, config.smtp.max_header_bytes,
                                  config.smtp.max_dkim_signatures)
        self.received = 0
        self.queued = 0
        self.rejected: dict[str, int] = {}
        self._queue_listeners: list[Callable[[], None]] = []
        self.handover = Handover()  # big messages queued here, until this process's processor claims them
        self._pool = WorkerPool(config.smtp.parse_processes, warm_up=warm_worker, memory_limit=config.smtp.parse_memory_limit,
                                max_rss=config.smtp.parse_worker_max_rss, nice=config.smtp.parse_nice,
                                ) if config.smtp.parse_processes > 0 else None
        load_public_suffixes()  # here, not on the first message's time

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def addresses(self) -> Addresses:
        return self._mailboxes.addresses

    async def check_recipient(self, address: str) -> tuple[Verdict, MailboxRecord | None]:
        parts = split_address(address)
        if parts is None:
            if is_bare_postmaster(address):
                return Verdict.OK, POSTMASTER_MAILBOX
            return Verdict.BAD_ADDRESS, None
        local, domain = parts
        if not self.addresses.is_ours(domain):
            return Verdict.FOREIGN_DOMAIN, None
        if local == POSTMASTER:
            return Verdict.OK, POSTMASTER_MAILBOX
        mailbox = await self._store.find_mailbox(local)
        if mailbox is None:
            return Verdict.UNKNOWN, None
        if mailbox.expires_at is not None and mailbox.expires_at < self._store.now():
            return Verdict.EXPIRED, mailbox
        return Verdict.OK, mailbox

    async def _dkim_keys(self, names: list[str], timeout: float | None = None, resolver: Resolver | None = None
                         ) -> dict[str, object]:
        if not names:
            return {}
        timeout = self.config.smtp.dns_timeout if timeout is None else max(timeout, 0.0)
        try:
            return await asyncio.wait_for(fetch_dkim_keys(names, resolver or self.resolver), timeout)
        except TimeoutError:
            return {name: DnsTempError(f"{name}: no answer in time") for name in names}

    async def _in_worker(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in a worker process within ``parse_timeout``; `WorkerTimeout` past it.

        Without worker processes (``parse_processes = 0``) the call runs in the thread pool. The same
        limit applies to the wait, but a thread cannot be stopped: it runs on to the end in the
        background (holding a thread of the pool and sharing the GIL) and its result is dropped.
        """
        timeout = self.config.smtp.parse_timeout
        if self._pool is not None:
            return await self._pool.run(fn, *args, timeout=timeout)
        # the parsers want bytes: a handed-over buffer (handover.py) is copied, in this case only
        args = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
        call = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            log.warning("a parse in this process ran past its time limit; it finishes in the background, unused",
                        extra={"event": "mail.parse_thread_timeout"})
            raise WorkerTimeout(f"parsing in this process ran past the {timeout:g} s limit on one message; "
                                "the thread finishes it in the background and its result is dropped") from None

    def _unparsed_defect(self, exc: Exception) -> str:
        if isinstance(exc, WorkerOutOfMemory):
            return (f"not parsed: parsing and DKIM needed more than {self.config.smtp.parse_memory_limit >> 20} MiB "
                    "([smtp] parse_memory_limit)")
        return f"not parsed: parsing and DKIM took longer than {self.config.smtp.parse_timeout:g} s ([smtp] parse_timeout)"

    def count_rejection(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        metrics.EMAILS_REJECTED.labels(reason).inc()

    def add_queue_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever this process queues a message (the local processor's wake-up)."""
        self._queue_listeners.append(callback)

    def remove_queue_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._queue_listeners:
            self._queue_listeners.remove(callback)

    async def receive(self, *, mail_from: str, mailboxes: Sequence[MailboxRecord], raw: bytes | bytearray,
                      client_ip: str, helo: str, tls: bool = False) -> DeliveryResult:
        """Take a message the SMTP edge is about to answer.

        With ``auth_policy = "record"`` (the default) nothing decides the reply any more: the raw bytes
        and the envelope are queued durably (``DeliveryResult.queued``) and processed after the reply.
        With ``"reject"``, DMARC decides it: the message is parsed, authenticated and stored before it,
        by :meth:`deliver` (the 250 then means it is stored as e-mails already). ``raw`` may be the
        SMTP edge's own buffer (a bytearray, so that a big message is not copied): it is queued as is.
        """
        if self.config.smtp.auth_policy == "reject":
            return await self.deliver(mail_from=mail_from, mailboxes=mailboxes, raw=bytes(raw), client_ip=client_ip,
                                      helo=helo)
        if not mailboxes:
            return DeliveryResult([], 0)
        sha = (await asyncio.to_thread(_sha256, raw)) if len(raw) >= _HASH_IN_THREAD else _sha256(raw)
        groups = [list(mailboxes)]
        if self.postmaster_forward and len(groups[0]) > 1 and any(is_postmaster(m) for m in mailboxes):
            # a forward may be retried for a while: the sessions' copies do not wait for it (both
            # entries are committed before the reply, in one group commit)
            groups = [[m for m in mailboxes if not is_postmaster(m)], [POSTMASTER_MAILBOX]]
        queued = await asyncio.gather(*(self._enqueue(g, sha, raw, mail_from=mail_from, client_ip=client_ip, helo=helo,
                                                      tls=tls) for g in groups))
        ids = [entry_id for entry_id in queued if entry_id is not None]
        if not ids:  # every mailbox was deleted since RCPT
            return DeliveryResult([], 0)
        return DeliveryResult([], 0, queued=",".join(ids))

    async def _enqueue(self, mailboxes: Sequence[MailboxRecord], sha: str, raw: bytes | bytearray, *, mail_from: str,
                       client_ip: str, helo: str, tls: bool) -> str | None:
        """Queue the message for ``mailboxes``: its entry id, or None when none of them is left."""
        entry_id = uuid.uuid4().hex
        envelope = json.dumps({
            "mail_from": mail_from, "client_ip": client_ip, "helo": helo, "tls": tls,
            "rcpt": [[m.local_part, m.session_id, m.key, m.index, m.owner, m.created_at, m.expires_at]
                     for m in {m.local_part: m for m in mailboxes}.values()],
        }, separators=(",", ":"))
        # Mailboxes deleted (or expired) since RCPT are refused now, while the sender can still be told
        # (550): the store checks them in the enqueue's own transaction, no call of its own. If some
        # but not all are gone, the processor drops those (with a log line), as after the reply. An entry
        # with postmaster is not checked (its mailbox has no row and is never deleted).
        boxes = [] if any(is_postmaster(m) for m in mailboxes) else [(m.local_part, m.session_id) for m in mailboxes]
        # kept before the entry exists: a claim that can see it (the store's own doorbell may start one
        # before this call returns) asks for it from here
        self.handover.keep(entry_id, raw)
        queued = None
        try:
            queued = await self._store.enqueue_inbound(NewInbound(entry_id, sha, raw, envelope, boxes))
        finally:
            if queued is None:  # refused or failed: nothing to hand over
                self.handover.release(entry_id)
        if queued is None:
            return None
        self.queued += 1
        for listener in list(self._queue_listeners):
            listener()
        return entry_id

    @property
    def postmaster_forward(self) -> str | None:
        """The address postmaster mail is forwarded to (``[mail] postmaster``), or None: kept here."""
        target = self.config.mail.postmaster.strip()
        return None if target == "mailbox" else target

    def resent(self, raw: bytes, auth: AuthResults, mail_from: str) -> tuple[str, bytes]:
        """The envelope sender and the bytes of postmaster mail forwarded to `postmaster_forward`: the
        message unchanged after the fields that say it was forwarded (RFC 5322 3.6.6 Resent-*) and
        the authentication results of this host (RFC 8601). The sender is this host's postmaster, or
        null for a message with a null sender (a bounce is forwarded as one: no bounce of a bounce)."""
        ours = self.addresses.address(POSTMASTER)
        fields = [
            "Authentication-Results: " + ";\r\n\t".join(auth.header.split("; ")),
            f"Resent-From: {ours}",
            f"Resent-To: {self.postmaster_forward}",
            f"Resent-Date: {email.utils.formatdate(usegmt=True)}",
            f"Resent-Message-ID: {email.utils.make_msgid(domain=self.addresses.domain)}",
        ]
        return (ours if mail_from.strip("<> ") else ""), ("\r\n".join(fields) + "\r\n").encode() + raw

    async def prepare(self, raw: bytes | bytearray, *, mail_from: str, client_ip: str, helo: str,
                      unparsed_because: str | None = None) -> tuple[StoredParse, AuthResults]:
        """Parse ``raw``, verify its DKIM signatures (in a worker process) and check SPF and DMARC.

        Past ``parse_timeout`` the message is taken unparsed, with a defect saying why; so it is with
        ``unparsed_because`` (the reason, said in the defect), which skips parsing and DKIM.
        """
        # DKIM keys are fetched first, so that one call to a worker process both parses the
        # message and verifies its signatures: the raw bytes cross the process boundary once.
        # dns_timeout bounds the key lookups and SPF + DMARC together (parsing is not DNS time).
        loop = asyncio.get_running_loop()
        started = loop.time()
        dkim: tuple[DkimResult, ...]
        dns = QueryBudget(self.resolver, self.config.smtp.max_dns_queries)  # one budget for the message's lookups
        if unparsed_because is not None:
            parsed, dkim = unparsed(raw, unparsed_because), (DkimResult("", "", "temperror"),)
            dns_left = self.config.smtp.dns_timeout
        else:
            keys = await self._dkim_keys(dkim_key_names(raw, self.limits.max_dkim_signatures), resolver=dns)
            dns_left = self.config.smtp.dns_timeout - (loop.time() - started)
            try:
                prepared = await self._in_worker(prepare_message, raw, self.limits, keys)
                parsed, dkim = prepared.parsed, prepared.dkim
                if prepared.missing_keys:  # dkimpy found signatures the header scan did not: rare, costs a second call
                    started = loop.time()
                    keys.update(await self._dkim_keys(prepared.missing_keys, dns_left, dns))
                    dns_left -= loop.time() - started
                    dkim, _ = await self._in_worker(verify_dkim, raw, keys, self.limits.max_dkim_signatures)
            except (WorkerTimeout, WorkerOutOfMemory) as exc:  # stored all the same: raw bytes, and a defect that says why
                log.warning("stored a message unparsed: %s", exc, extra={"event": "mail.parse_timeout"})
                parsed = unparsed(raw, self._unparsed_defect(exc))
                dkim = (DkimResult("", "", "temperror"),)
        from_domain = parsed.from_address.rpartition("@")[2] if parsed.from_address and "@" in parsed.from_address else None
        auth = await authenticate(raw, client_ip=client_ip, mail_from=mail_from, helo=helo, from_domain=from_domain,
                                  resolver=dns, authserv_id=self.authserv_id, timeout=max(dns_left, 0.0),
                                  dkim_results=dkim)
        metrics.count_auth(tuple(d.result for d in auth.dkim), auth.spf.result, auth.dmarc.result)
        return parsed, auth

    def emails_for(self, mailboxes: Sequence[MailboxRecord], sessions: dict[str, SessionRecord], parsed: StoredParse,
                   auth: AuthResults, *, mail_from: str, client_ip: str, helo: str, tls: bool | None = None,
                   entry: str | None = None) -> list[NewEmail]:
        """One e-mail per recipient mailbox (the same address twice gets one), with its
        ``incoming_email`` task and ``email`` event. A mailbox whose session is gone since RCPT is
        skipped, with a log line."""
        unique = {m.local_part: m for m in mailboxes}
        parsed_json = parsed.json
        auth_json = json.dumps(auth.to_dict(), separators=(",", ":"))
        sha = parsed.content_hash
        emails = []
        for mailbox in unique.values():
            session = sessions.get(mailbox.session_id)
            if is_postmaster(mailbox):
                emails.append(self._postmaster_email(parsed, parsed_json, auth_json, mail_from=mail_from,
                                                     client_ip=client_ip, helo=helo, tls=tls))
                continue
            if session is None:
                log.info("mail to mailbox %s dropped: its session %s was deleted after the message was accepted%s",
                         mailbox.local_part, mailbox.session_id, f" (queued as {entry})" if entry else "",
                         extra={"event": "mail.recipient_gone"})
                continue
            email_id = uuid.uuid4().hex
            address = self.addresses.address(mailbox.local_part)
            owner = json.loads(mailbox.owner)
            fields: dict[str, Any] = {
                "mail_from": mail_from, "rcpt_to": address, "client_ip": client_ip, "helo": helo,
                "short": mailbox.local_part, "key": mailbox.key, "index": mailbox.index,
                "address": address, "address_owner": owner.get("email") or owner.get("id"),
            }
            if tls is not None:
                fields["tls"] = tls
            envelope = json.dumps(fields, separators=(",", ":"))
            task = None
            interview = self._registry.get(session.interview) if self._registry.has(session.interview) else None
            if interview is not None and interview.has_action("incoming_email"):
                task = NewTask(uuid.uuid4().hex, session.id, session.interview, "incoming_email",
                               codec.encode_value({"email": DAEmail(email_id)}), mailbox.owner, None,
                               self.config.tasks.max_attempts)
            event = NewEvent(session.id, "email", json.dumps({
                "email": email_id, "address": address, "subject": parsed.subject, "from": parsed.from_address,
            }))
            emails.append(NewEmail(email_id, mailbox.local_part, session.id, parsed.message_id,
                                   f"{parsed.message_id or ''}\0{sha}", envelope, parsed_json, auth_json, task, event))
        return emails

    def _postmaster_email(self, parsed: StoredParse, parsed_json: str, auth_json: str, *, mail_from: str,
                          client_ip: str, helo: str, tls: bool | None) -> NewEmail:
        """The operator mailbox's copy: no session, so no ``incoming_email`` task and no ``email`` event."""
        address = self.addresses.address(POSTMASTER)
        fields: dict[str, Any] = {"mail_from": mail_from, "rcpt_to": address, "client_ip": client_ip, "helo": helo,
                                  "short": POSTMASTER, "key": "", "index": "", "address": address, "address_owner": None}
        if tls is not None:
            fields["tls"] = tls
        return NewEmail(uuid.uuid4().hex, POSTMASTER, "", parsed.message_id, f"{parsed.message_id or ''}\0{parsed.content_hash}",
                        json.dumps(fields, separators=(",", ":")), parsed_json, auth_json, None, None)

    async def with_automation_messages(self, emails: list[NewEmail]) -> list[NewEmail]:
        """Each e-mail with message ``email`` to every running automation of its session whose class
        defines ``receive_email`` (token: the mailbox key; data: the DAEmail and the address), queued
        in the delivery's own commit (AUTOMATIONS.md §4.1 "Mail and tasks become messages")."""
        if not any(callable(getattr(cls, "receive_email", None)) for cls in self.automation_classes):
            return emails  # no loaded class receives mail: no read per delivery
        receivers: dict[str, list[str]] = {}
        out = []
        for e in emails:
            if not e.session_id:  # the postmaster mailbox's: no session, no automations
                out.append(e)
                continue
            if e.session_id not in receivers:
                found = []
                for rec in await self._store.list_automations(session_id=e.session_id, state="running", limit=1000):
                    try:
                        cls = self.automation_classes.resolve(rec.cls)
                    except NotFound:
                        continue  # orphaned: its class is gone; the runner reports it
                    if callable(getattr(cls, "receive_email", None)):
                        found.append(rec.id)
                receivers[e.session_id] = found
            if not receivers[e.session_id]:
                out.append(e)
                continue
            fields = json.loads(e.envelope)
            data = codec.encode_value({"email": DAEmail(e.id), "address": fields.get("address")})
            sender = json.dumps({"mail_from": fields.get("mail_from")}, separators=(",", ":"))
            out.append(dataclasses.replace(e, messages=tuple(
                NewMessage(uuid.uuid4().hex, "email", automation_id=aid, token=fields.get("key") or None, data=data,
                           sender=sender) for aid in receivers[e.session_id])))
        return out

    async def sessions_of(self, mailboxes: Sequence[MailboxRecord]) -> dict[str, SessionRecord]:
        ids = list({m.session_id for m in mailboxes if not is_postmaster(m)})
        return await self._store.get_sessions(ids) if ids else {}

    async def deliver(self, *, mail_from: str, mailboxes: Sequence[MailboxRecord], raw: bytes, client_ip: str,
                      helo: str) -> DeliveryResult:
        """Parse, authenticate and durably store ``raw`` for each recipient mailbox; queue its tasks.

        The inline path (``auth_policy = "reject"``): the reply waits for all of it. ``mailboxes``
        are those accepted at RCPT time; one whose session is gone since is skipped.
        """
        parsed, auth = await self.prepare(raw, mail_from=mail_from, client_ip=client_ip, helo=helo)
        if (self.config.smtp.auth_policy == "reject" and auth.dmarc.result == "fail" and auth.dmarc.policy == "reject"):
            self.count_rejection("dmarc")
            return DeliveryResult([], 0, rejected=f"DMARC policy of {auth.dmarc.domain} rejects this message", auth=auth)
        if self.postmaster_forward and any(is_postmaster(m) for m in mailboxes):
            # forwarded by the queue's processor, with its retries; the 250 means it is queued
            entry = await self._enqueue([POSTMASTER_MAILBOX], _sha256(raw), raw, mail_from=mail_from,
                                        client_ip=client_ip, helo=helo, tls=False)
            mailboxes = [m for m in mailboxes if not is_postmaster(m)]
            if not mailboxes:
                return DeliveryResult([], 0, auth=auth, queued=entry, message_id=parsed.message_id)
        emails = self.emails_for(mailboxes, await self.sessions_of(mailboxes), parsed, auth, mail_from=mail_from,
                                 client_ip=client_ip, helo=helo)
        emails = await self.with_automation_messages(emails)
        with metrics.SMTP_COMMIT.time():
            stored, events = await self._store.deliver(Delivery(parsed.content_hash, raw, emails))
        self._commits.after_commit(events, any(e.task for e in emails if e.id in stored))
        self.received += len(stored)
        metrics.EMAILS_RECEIVED.inc(len(stored))
        return DeliveryResult(stored, len(emails) - len(stored), auth=auth, message_id=parsed.message_id)

    def delivered(self, stored: int) -> None:
        """Count e-mails the processor stored (for ``/metrics``)."""
        self.received += stored


def _sha256(raw: bytes | bytearray) -> str:
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class StoredParse:
    """What delivery needs of a parsed message: small, so it crosses a process boundary cheaply."""

    json: str
    message_id: str | None
    subject: str | None
    from_address: str | None
    content_hash: str


# A body text longer than this is not stored as text but located in the raw message, which is stored
# anyway (``body_text_at`` / ``body_html_at`` in the stored JSON; see `mailgate.core.emails`): a big
# body then costs no copy in the worker's answer, the daemon or the store, only when it is read.
INLINE_BODY = 256 * 1024


def parse_for_store(raw: bytes, limits: ParseLimits) -> StoredParse:
    """Parse ``raw`` (in a worker process when configured) into what is stored."""
    # only the attachments' sizes are stored
    parsed, text_at, html_at = parse_with_body_parts(raw, limits, inline_body=INLINE_BODY, attachment_data=False)
    return StoredParse(_parsed_json(parsed, text_at, html_at), parsed.message_id, parsed.subject, parsed.from_address,
                       parsed.content_hash)


def warm_worker() -> None:
    """Run once in each new worker process: loads the parser and DKIM code a message needs."""
    prepare_message(b"From: warm@up.invalid\r\nSubject: warm-up\r\n\r\nwarm-up\r\n", ParseLimits(10, 5, 4096), {})


def unparsed(raw: bytes | bytearray, defect: str) -> StoredParse:
    """What is stored of a message that was not parsed: its hash, and ``defect`` saying why."""
    parsed = ParsedMessage(message_id=None, subject=None, from_address=None, to_address=(), cc_address=(), reply_to=None,
                           datetime_message=None, body_text=None, body_html=None, attachments=(), headers=(),
                           defects=(defect,), content_hash=hashlib.sha256(raw).hexdigest())
    return StoredParse(_parsed_json(parsed), None, None, None, parsed.content_hash)


@dataclass(frozen=True)
class PreparedMessage:
    """A message parsed and its DKIM signatures verified, in one worker call."""

    parsed: StoredParse
    dkim: tuple[DkimResult, ...]
    missing_keys: list[str]  # keys `verify_dkim` needed but was not given; `dkim` is empty then


def prepare_message(raw: bytes, limits: ParseLimits, keys: dict[str, object]) -> PreparedMessage:
    """`parse_for_store` and `verify_dkim` of ``raw`` (in a worker process when configured)."""
    try:
        dkim, missing = verify_dkim(raw, keys, limits.max_dkim_signatures)
    except MemoryError:  # the worker's memory limit: the caller stores the message unparsed
        raise
    except Exception:  # the message is stored all the same, with DKIM unknown
        log.exception("DKIM verification failed", extra={"event": "mail.dkim_failed"})
        dkim, missing = (DkimResult("", "", "temperror"),), []
    return PreparedMessage(parse_for_store(raw, limits), dkim, missing)


def _parsed_json(parsed: ParsedMessage, text_at: BodyPart | None = None, html_at: BodyPart | None = None) -> str:
    data: dict[str, Any] = {
        "subject": parsed.subject,
        "from_address": parsed.from_address,
        "to_address": list(parsed.to_address),
        "cc_address": list(parsed.cc_address),
        "reply_to": parsed.reply_to,
        "datetime_message": parsed.datetime_message.isoformat() if parsed.datetime_message else None,
        "body_text": parsed.body_text,
        "body_html": parsed.body_html,
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size,
             "content_id": a.content_id, "disposition": a.disposition}
            for a in parsed.attachments
        ],
        "headers": [list(h) for h in parsed.headers],
        "defects": list(parsed.defects),
    }
    if text_at is not None:
        data["body_text_at"] = text_at.to_json()
    if html_at is not None:
        data["body_html_at"] = html_at.to_json()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
