"""The inbound queue's processor: queued messages become e-mails, tasks and events, exactly once.

The SMTP edge answers 250 once a message's raw bytes and envelope are queued in the store
(:meth:`Inbound.receive <mailgate.core.inbound.Inbound.receive>`). A processor runs in every process
with the smtp or worker role (unless ``[smtp] process_queue = false``): it claims queued messages
with a lease (``[smtp] queue_lease``), parses and authenticates several at once
(:meth:`Inbound.prepare <mailgate.core.inbound.Inbound.prepare>`: the parse worker processes, SPF and
DMARC), and stores each in one transaction that also removes it from the queue and that the store
refuses once the claim is no longer this processor's (:meth:`Store.deliver_inbound
<mailgate.store.base.Store.deliver_inbound>`): so each message is delivered once, also when a
processor dies halfway and another takes its messages over: a daemon starting on the same host at
once (the claim names host, pid and process start: :mod:`mailgate.core.claims`), another host after
the lease. The processor renews its claims every third of the lease while it works on them, so a
slow message keeps its claim and the lease can be short.

Order: messages are claimed oldest first, and a message is handed to the store only after the earlier
messages this processor holds for the same mailboxes were: the store commits its calls in the order
they are made (the SQLite writer's queue, the PostgreSQL grouper's), so each mailbox gets its mail in
arrival order, and messages to one busy mailbox still share group commits.

Wake-ups: this process's own queued messages wake the processor at once; those queued by other
processes ring the store's doorbell (PostgreSQL's NOTIFY), with polling every ``[tasks]
poll_interval`` as the fallback.

Never lost, never retried forever: a message whose parse fails or runs out of time is stored unparsed
with a defect saying why, and one claimed ``[smtp] queue_attempts`` times already (its processors
kept dying on it) is stored unparsed at the next claim without being parsed again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from mailgate import metrics
from mailgate.config import Config
from mailgate.core.claims import holder_is_dead
from mailgate.core.commits import Commits
from mailgate.core.inbound import Inbound
from mailgate.core.jobs import finish_within
from mailgate.core.mailboxes import POSTMASTER, is_postmaster
from mailgate.errors import LeaseLost, StoreError
from mailgate.mail.auth import AuthResults
from mailgate.outbound.transport import Outbound
from mailgate.store.base import InboundDelivery, InboundRecord, MailboxRecord, Store

log = logging.getLogger(__name__)
_R = TypeVar("_R")

CONCURRENCY = 64  # messages in hand at once: parsing and DNS of several overlap, commits group
FORWARD_RETRY_MAX = 300.0  # seconds between two tries of a postmaster forward, at most


class Ingest:
    """Claims queued messages and turns them into e-mails; one per process."""

    def __init__(self, config: Config, store: Store, inbound: Inbound, commits: Commits, worker_id: str,
                 outbound: Outbound | None = None) -> None:
        self.config = config
        self._outbound = outbound or Outbound(config.outbound)  # forwards postmaster mail ([mail] postmaster)
        self._store = store
        self._inbound = inbound
        self._commits = commits
        self.worker_id = worker_id
        self.lease = config.smtp.queue_lease
        self.running: dict[str, asyncio.Task[None]] = {}
        self._latest: dict[str, asyncio.Future[None]] = {}  # mailbox -> when the last message for it went to the store
        self._wake = asyncio.Event()
        self._stopping = False
        self._store_failing = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._backlog = False  # the last claim got all it asked for: more may wait in the queue
        self.processed = 0

    def wake(self) -> None:
        """A message may have been queued."""
        self._wake.set()

    async def run(self) -> None:
        """Claim loop; runs until :meth:`stop`. A store that refuses the claim (full, away) is logged
        once per outage and asked again every poll interval: the messages wait in the queue."""
        poll = self.config.tasks.poll_interval
        self._inbound.add_queue_listener(self.wake)
        self._store.watch_inbound(self.wake)
        failing = False
        await self.take_over_dead_claims()
        # the claims in hand are renewed until stop() has let them finish or given them back
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat(), name="inbound-heartbeat")
        try:
            while not self._stopping:
                self._wake.clear()  # before looking, so that a wake-up while claiming is not lost
                free = CONCURRENCY - len(self.running)
                if free > 0:
                    try:
                        held = self._inbound.handover.snapshot()
                        claimed = await self._store.claim_inbound(self.worker_id, free, self.lease, held.keys())
                    except StoreError as exc:
                        if not failing:
                            log.error("claiming queued mail failed: %s; trying again every %g s", exc, poll,
                                      extra={"event": "mail.claim_failed"})
                        failing = True
                        await asyncio.sleep(poll)  # the store's outage: a retry interval, not synchronisation
                        continue
                    if failing:
                        log.info("claiming queued mail works again", extra={"event": "mail.claim_recovered"})
                        failing = False
                    self._backlog = len(claimed) == free
                    for rec in claimed:
                        if rec.raw is None and rec.id in held:  # queued here: its bytes never left memory
                            rec = dataclasses.replace(rec, raw=held[rec.id])
                            self._inbound.handover.release(rec.id)
                        self._start(rec)
                    del held
                    if len(claimed) == free:
                        continue
                try:
                    await asyncio.wait_for(self._wake.wait(), poll)
                except TimeoutError:
                    pass
        finally:
            if not self._stopping:  # ended otherwise (cancelled): nothing is renewed any more
                self._heartbeat_task.cancel()
            self._inbound.remove_queue_listener(self.wake)

    async def take_over_dead_claims(self) -> int:
        """Give back at once the queued messages that processes of this host held when they died
        (``kill -9``, a crash, a power cut): they are processed now, not after ``queue_lease``. A
        holder is dead when its pid no longer runs or now names a process started later
        (:func:`~mailgate.core.claims.holder_is_dead`); other hosts' claims wait for their lease."""
        try:
            dead = [h for h in await self._store.inbound_holders() if h != self.worker_id and holder_is_dead(h)]
            taken = await self._store.release_dead_inbound(dead) if dead else 0
        except StoreError as exc:  # the claim loop reports the outage; the lease still frees them later
            log.error("could not take over the queued messages of dead processes: %s", exc,
                      extra={"event": "mail.takeover_failed"})
            return 0
        if taken:
            log.warning("took over %d queued messages claimed by %d dead process(es) of this host (%s); processing them now",
                        taken, len(dead), ", ".join(dead), extra={"event": "mail.claims_taken_over"})
        return taken

    async def _heartbeat(self) -> None:
        """Renew the claims in hand every third of ``queue_lease``: a message that takes long (slow
        DNS, a big parse) keeps its claim, so the lease can be short and no other processor takes
        it up while this one lives."""
        while True:
            await asyncio.sleep(self.lease / 3)  # the heartbeat's period, not synchronisation
            held = list(self.running)
            if not held:
                continue
            try:
                # a claim no longer held (delivered meanwhile, or lost) is not renewed; a lost one's
                # delivery is refused by the store and logged (mail.claim_lost)
                await self._store.renew_inbound(self.worker_id, held, self.lease)
            except StoreError as exc:
                log.error("renewing the claims on %d queued messages failed: %s", len(held), exc,
                          extra={"event": "mail.heartbeat_failed"})

    def _start(self, rec: InboundRecord) -> None:
        envelope = json.loads(rec.envelope)
        mailboxes = [MailboxRecord(*m) for m in envelope["rcpt"]]
        before = {self._latest[m.local_part] for m in mailboxes if m.local_part in self._latest}
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for m in mailboxes:
            self._latest[m.local_part] = handed
        job = asyncio.get_running_loop().create_task(self._process(rec, envelope, mailboxes, before, handed),
                                                     name=f"inbound-{rec.id}")
        self.running[rec.id] = job

        def done(_: asyncio.Task[None]) -> None:
            if not handed.done():  # it ended before reaching the store: the next ones need not wait
                handed.set_result(None)
            self.running.pop(rec.id, None)
            for m in mailboxes:
                if self._latest.get(m.local_part) is handed:
                    del self._latest[m.local_part]
            if self._backlog:  # a free place to claim into; otherwise new mail wakes the loop itself
                self._wake.set()

        job.add_done_callback(done)

    async def _process(self, rec: InboundRecord, envelope: dict[str, Any], mailboxes: list[MailboxRecord],
                       before: set[asyncio.Future[None]], handed: asyncio.Future[None]) -> None:
        raw = rec.raw or b""
        mail_from, client_ip, helo = envelope["mail_from"], envelope["client_ip"], envelope["helo"]
        attempts = self.config.smtp.queue_attempts
        reason = None
        if rec.attempts > attempts:
            reason = (f"not parsed: processing this message was started {rec.attempts - 1} times and never finished "
                      "(the process handling it stopped or crashed; [smtp] queue_attempts)")
            log.error("queued message %s: stored unparsed after %d unfinished attempts", rec.id, rec.attempts - 1,
                      extra={"event": "mail.attempts_exhausted"})
        try:
            try:
                parsed, auth = await self._inbound.prepare(raw, mail_from=mail_from, client_ip=client_ip, helo=helo,
                                                           unparsed_because=reason)
            except (asyncio.CancelledError, StoreError):
                raise
            except Exception as exc:  # a parse worker that died, a bug: stored all the same, never lost
                log.exception("queued message %s could not be parsed; stored unparsed", rec.id,
                              extra={"event": "mail.parse_failed"})
                parsed, auth = await self._inbound.prepare(
                    raw, mail_from=mail_from, client_ip=client_ip, helo=helo,
                    unparsed_because=f"not parsed: parsing failed ({type(exc).__name__}: {exc})")
            if self._inbound.postmaster_forward and all(is_postmaster(m) for m in mailboxes):
                if await self._forward(rec, raw, mail_from, auth):
                    mailboxes = []  # forwarded: nothing is stored, the entry leaves the queue
            sessions = await self._inbound.sessions_of(mailboxes)
            emails = self._inbound.emails_for(mailboxes, sessions, parsed, auth, mail_from=mail_from,
                                              client_ip=client_ip, helo=helo, tls=envelope.get("tls"), entry=rec.id)
            emails = await self._inbound.with_automation_messages(emails)
            if before:  # the earlier messages to the same mailboxes go to the store first
                await asyncio.wait(before)
            # a task starts at the next loop turn, in creation order: so the store receives the calls in
            # the order the messages were handed over, and the next message for these mailboxes, woken
            # by ``handed``, calls after this one
            delivery = asyncio.ensure_future(_timed(self._store.deliver_inbound(InboundDelivery(rec.id, self.worker_id, emails))))
            handed.set_result(None)
            stored, events = await delivery
        except LeaseLost as exc:
            log.warning("queued message %s: %s; left to its new holder", rec.id, exc, extra={"event": "mail.claim_lost"})
            return
        except StoreError as exc:  # full, locked, away: back to the queue after a pause, never a busy loop
            if not self._store_failing:
                log.error("queued messages cannot be stored: %s; they stay queued and are tried again every %g s",
                          exc, self.config.tasks.poll_interval, extra={"event": "mail.store_failed"})
            self._store_failing = True
            await asyncio.sleep(self.config.tasks.poll_interval)  # a retry interval, not synchronisation
            await self._give_back([rec.id])
            return
        if self._store_failing:
            self._store_failing = False
            log.info("queued messages are stored again", extra={"event": "mail.store_recovered"})
        self._commits.after_commit(events, any(e.task for e in emails if e.id in stored))
        self._inbound.delivered(len(stored))
        self.processed += 1
        auth_summary = f"dkim={','.join(d.result for d in auth.dkim) or 'none'} spf={auth.spf.result} dmarc={auth.dmarc.result}"
        log.info("mail processed: queued=%s mailboxes=%s size=%d stored=%s duplicates=%d delay=%.3fs %s", rec.id,
                 ",".join(m.local_part for m in mailboxes) or "postmaster (forwarded)", rec.size, ",".join(stored), len(emails) - len(stored),
                 max(0.0, self._store.now() - rec.received_at), auth_summary, extra={"event": "mail.processed"})

    async def _forward(self, rec: InboundRecord, raw: bytes | bytearray, mail_from: str, auth: AuthResults) -> bool:
        """Forward postmaster mail to ``[mail] postmaster`` through the outbound relay; True once the
        relay took it. A temporary failure is logged and tried again, at growing intervals, while
        this processor holds the claim (its heartbeat keeps it; after a crash the next processor
        tries); a permanent refusal (5xx) returns False: the message is kept in the operator mailbox."""
        target = self._inbound.postmaster_forward
        assert target is not None
        sender, resent = self._inbound.resent(bytes(raw), auth, mail_from)
        wait, tries = self.config.tasks.poll_interval, 0
        while True:
            tries += 1
            result = await self._outbound.forward(sender, [target], resent)
            if result.accepted:
                log.info("postmaster mail forwarded to %s: queued=%s from=<%s> size=%d tries=%d relay: %s", target, rec.id,
                         mail_from[:256], rec.size, tries, result.reply[:200],
                         extra={"event": "mail.postmaster_forwarded", "mailbox": POSTMASTER})
                return True
            if result.permanent:
                log.error("postmaster mail (queued=%s from=<%s>) could not be forwarded to %s: %s; kept in the operator "
                          "mailbox instead (mailgate emails list --postmaster)", rec.id, mail_from[:256], target,
                          result.error, extra={"event": "mail.postmaster_kept", "mailbox": POSTMASTER})
                return False
            log.warning("postmaster mail (queued=%s) not forwarded to %s yet: %s; try %d, again in %g s", rec.id, target,
                        result.error, tries, wait, extra={"event": "mail.postmaster_retry", "mailbox": POSTMASTER})
            await asyncio.sleep(wait)  # the retry interval, not synchronisation
            wait = min(wait * 2, FORWARD_RETRY_MAX)

    async def _give_back(self, entry_ids: list[str]) -> None:
        try:
            await self._store.release_inbound(self.worker_id, entry_ids)
        except StoreError as exc:  # still claimed: offered again once the lease runs out
            log.error("could not give %d queued messages back: %s; they are processed after their lease",
                      len(entry_ids), exc, extra={"event": "mail.release_failed"})

    async def stop(self, grace: float) -> None:
        """Stop claiming, let messages in hand finish within ``grace``, give the rest back to the queue."""
        self._stopping = True
        self._wake.set()
        try:
            leftover = await finish_within(self.running, grace)
        finally:
            if self._heartbeat_task is not None:
                self._heartbeat_task.cancel()
        if leftover:
            await self._give_back(leftover)
            log.warning("gave %d unprocessed queued messages back to the queue", len(leftover),
                        extra={"event": "mail.released"})


async def _timed(commit: Awaitable[_R]) -> _R:
    """``commit``, timed as one received message's commit (``mailgate_smtp_commit_seconds``)."""
    with metrics.SMTP_COMMIT.time():
        return await commit
