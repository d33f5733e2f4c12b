"""The inbound queue's processor in one process: real SMTP server on port 0, smtplib, real SQLite."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mailgate.config import Config
from mailgate.core.ingest import Ingest
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, queue_processed, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio


def config_for(tmp_path: Path, **smtp: Any) -> Config:
    return make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", **smtp}, mail={"domains": ("example.test",)})


def raw_message(to: str, subject: str) -> bytes:
    return (f"From: sender@elsewhere.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@elsewhere.test>\r\n\r\nbody of {subject}\r\n").encode()


async def send(port: int, to: str, raws: list[bytes]) -> list[tuple[int, bytes]]:
    def run() -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.ehlo("client.test")
            out = []
            for raw in raws:
                c.mail("sender@elsewhere.test")
                c.rcpt(to)
                out.append(c.data(raw))
            return out
    return await asyncio.to_thread(run)


async def address_of(d: Daemon) -> tuple[str, str]:
    session = await rt(d).create_session("email-to-case-simple")
    result = await rt(d).run_action(session.id, "start")
    assert result.text is not None
    return session.id, result.text


@pytest_asyncio.fixture
async def holding(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A daemon that only queues (``process_queue = false``): the test runs the processor itself."""
    async with Daemon(config_for(tmp_path, process_queue=False), roles=("smtp", "worker"),
                      resolver=StaticResolver({})) as d:
        assert d.ingest is None
        yield d


async def run_processor(d: Daemon, worker: str = "test-processor") -> tuple[Ingest, asyncio.Task[None]]:
    assert d.inbound is not None and d.store is not None
    ingest = Ingest(d.config, d.store, d.inbound, rt(d).commits, worker)
    return ingest, asyncio.get_running_loop().create_task(ingest.run())


async def test_mail_to_one_mailbox_is_stored_in_arrival_order(tmp_path: Path) -> None:
    async with Daemon(config_for(tmp_path), roles=("smtp",), resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        sid, address = await address_of(d)
        subjects = [f"n{i:03d}" for i in range(60)]
        replies = await send(d.smtp.port, address, [raw_message(address, s) for s in subjects])
        assert {code for code, _ in replies} == {250}
        await queue_processed(rt(d))
        stored = await rt(d).store.list_emails(session_id=sid, limit=1000)
        assert [json.loads(e.parsed)["subject"] for e in stored] == subjects
        assert [e.received_at for e in stored] == sorted(e.received_at for e in stored)


async def test_queued_mail_waits_until_a_processor_runs(holding: Daemon) -> None:
    d = holding
    assert d.smtp is not None
    sid, address = await address_of(d)
    replies = await send(d.smtp.port, address, [raw_message(address, "held")])
    assert replies == [(250, b"2.0.0 Message accepted")]
    [queued] = await rt(d).emails.queued()
    assert queued.worker is None and queued.size == len(raw_message(address, "held"))
    assert json.loads(queued.envelope)["rcpt"][0][:2] == [address.partition("@")[0], sid]
    assert await rt(d).store.list_emails(session_id=sid) == []
    ingest, task = await run_processor(d)
    try:
        await queue_processed(rt(d))
        [email] = await rt(d).store.list_emails(session_id=sid)
        assert email.received_at == queued.received_at and json.loads(email.envelope)["tls"] is False
        assert await rt(d).store.get_raw(email.sha256) == raw_message(address, "held")
    finally:
        await ingest.stop(1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_session_deleted_after_the_250_drops_its_mail_with_a_log_line(
        holding: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    d = holding
    assert d.smtp is not None
    sid, address = await address_of(d)
    assert (await send(d.smtp.port, address, [raw_message(address, "orphan")]))[0][0] == 250
    await rt(d).delete_session(sid)
    caplog.set_level(logging.INFO, logger="mailgate.core.inbound")
    ingest, task = await run_processor(d)
    try:
        await queue_processed(rt(d))
    finally:
        await ingest.stop(1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await rt(d).store.list_emails(session_id=sid) == []
    gone = [r for r in caplog.records if getattr(r, "event", None) == "mail.recipient_gone"]
    assert len(gone) == 1 and address.partition("@")[0] in gone[0].getMessage()


async def test_a_message_its_processors_kept_dying_on_is_stored_unparsed(holding: Daemon) -> None:
    d = holding
    assert d.smtp is not None and d.store is not None
    sid, address = await address_of(d)
    assert (await send(d.smtp.port, address, [raw_message(address, "deadly")]))[0][0] == 250
    for n in range(d.config.smtp.queue_attempts):  # claimed by processors that died with it (lease runs out at once)
        [claimed] = await d.store.claim_inbound(f"dead-{n}", 1, -1.0)
        assert claimed.attempts == n + 1
    ingest, task = await run_processor(d)
    try:
        await queue_processed(rt(d))
    finally:
        await ingest.stop(1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [email] = await rt(d).store.list_emails(session_id=sid)
    parsed = json.loads(email.parsed)
    assert parsed["subject"] is None and len(parsed["defects"]) == 1
    assert parsed["defects"][0].startswith("not parsed: processing this message was started 3 times and never finished")
    assert await rt(d).store.get_raw(email.sha256) == raw_message(address, "deadly")


async def test_a_processor_that_lost_its_claim_does_not_deliver(holding: Daemon) -> None:
    d = holding
    assert d.smtp is not None and d.store is not None
    sid, address = await address_of(d)
    assert (await send(d.smtp.port, address, [raw_message(address, "taken over")]))[0][0] == 250
    [stale] = await d.store.claim_inbound("stalled", 1, -1.0)  # its lease is over at once
    ingest, task = await run_processor(d, "successor")
    try:
        await queue_processed(rt(d))
    finally:
        await ingest.stop(1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [email] = await rt(d).store.list_emails(session_id=sid)
    stalled = Ingest(d.config, d.store, d.inbound, rt(d).commits, "stalled")  # type: ignore[arg-type]
    job = asyncio.get_running_loop().create_task(stalled._process(stale, json.loads(stale.envelope), [], set(),
                                                                  asyncio.get_running_loop().create_future()))
    await wait_until(job.done, what="the stalled processor's attempt")
    assert job.exception() is None and stalled.processed == 0  # refused by the store: LeaseLost, logged
    assert [e.id for e in await rt(d).store.list_emails(session_id=sid)] == [email.id]
