"""Claims on queued messages: a long processing keeps its claim (the heartbeat), and a daemon that starts
takes over at once what dead processes of its host held, never what a living one or another host holds.

A real daemon (smtp and worker roles) on a real SQLite file, smtplib as the client. DNS is the fake of
the tests (a static resolver that answers the sender's SPF lookup slowly).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgate.config import Config
from mailgate.core.claims import start_token
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.resolver import StaticResolver
from mailgate.store.base import NewInbound
from mailgate.store.sqlite.backend import SqliteStore
from tests.helpers import make_config, queue_processed, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio


class SlowSpf(StaticResolver):
    """Answers the sender domain's TXT lookup (its SPF record) after ``delay`` seconds, as a slow
    authoritative server would; counts those lookups."""

    def __init__(self, delay: float) -> None:
        super().__init__({("TXT", "elsewhere.test"): ["v=spf1 -all"]})
        self.delay = delay

    async def txt(self, name: str) -> list[str]:
        if name.lower().rstrip(".") == "elsewhere.test":
            await asyncio.sleep(self.delay)  # the fake server's answer time
        return await super().txt(name)

    def spf_lookups(self) -> int:
        return self.queries.count(("TXT", "elsewhere.test"))


def raw_message(subject: str) -> bytes:
    return (f"From: sender@elsewhere.test\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@elsewhere.test>\r\n\r\nbody\r\n").encode()


async def session_address(d: Daemon) -> tuple[str, str]:
    session = await rt(d).create_session("email-to-case")
    text = (await rt(d).run_action(session.id, "start")).text
    assert text is not None
    return session.id, text


async def test_a_processing_longer_than_the_lease_keeps_its_claim_and_runs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    resolver = SlowSpf(delay=3.5)  # each message's processing takes 3.5 s: more than three leases
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "queue_lease": 1.0, "dns_timeout": 10.0},
                         mail={"domains": ("example.test",)})
    caplog.set_level(logging.INFO)
    async with Daemon(config, roles=("worker", "smtp"), resolver=resolver) as d:
        assert d.smtp is not None
        sid, address = await session_address(d)
        port = d.smtp.port

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                assert client.sendmail("sender@elsewhere.test", [address], raw_message("slow")) == {}

        await asyncio.to_thread(send)
        await queue_processed(rt(d), timeout=20)
        assert [json.loads(e.parsed)["subject"] for e in await rt(d).store.list_emails(session_id=sid)] == ["slow"]
        assert [t.action for t in await rt(d).store.list_tasks(session_id=sid)] == ["incoming_email"]
    # processed once: one SPF lookup, no second claim of the same message, no refused delivery
    assert resolver.spf_lookups() == 1
    assert not [r for r in caplog.records if getattr(r, "event", "") in ("mail.claim_lost", "mail.attempts_exhausted")]


def dead_holder() -> str:
    """The identity of a real process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    token = start_token(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    child.wait(10)
    return f"{socket.gethostname()}:{child.pid}:{token}:dead00"


async def test_a_starting_daemon_takes_over_the_claims_of_dead_processes_of_its_host_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "queue_lease": 600.0},
                         mail={"domains": ("example.test",)})
    caplog.set_level(logging.INFO)
    dead, other_host = dead_holder(), "another-host:1:x.1:feed00"
    async with Daemon(config, roles=("worker",), resolver=StaticResolver({})) as first:
        sid, address = await session_address(first)
    local = address.partition("@")[0]
    mailbox = await _mailbox_row(config, local)
    store = SqliteStore(config.store.path)
    await store.open()
    try:
        for n, holder in enumerate([dead, dead, other_host]):
            raw = raw_message(f"held-{n}")
            envelope = json.dumps({"mail_from": "sender@elsewhere.test", "client_ip": "192.0.2.1", "helo": "client.test",
                                   "tls": False, "rcpt": [mailbox]})
            await store.enqueue_inbound(NewInbound(f"q{n}", hashlib.sha256(raw).hexdigest(), raw, envelope))
            assert [c.id for c in await store.claim_inbound(holder, 1, 600)] == [f"q{n}"]
    finally:
        await store.close()
    started = time.monotonic()
    async with Daemon(config, roles=("worker",), resolver=StaticResolver({})) as d:
        async def two_stored() -> bool:
            return len(await rt(d).store.list_emails(session_id=sid)) == 2

        await wait_until(two_stored, 10, "the dead process's two messages stored")
        assert time.monotonic() - started < 10  # not after the 600 s lease
        # another host's claim waits for its lease: that host may be alive
        assert [(q.id, q.worker) for q in await rt(d).store.list_inbound()] == [("q2", other_host)]
    subjects = sorted(json.loads(e.parsed)["subject"] for e in await _emails(config, sid))
    assert subjects == ["held-0", "held-1"]
    taken = [r for r in caplog.records if getattr(r, "event", "") == "mail.claims_taken_over"]
    assert len(taken) == 1 and dead in taken[0].getMessage() and "took over 2 queued messages" in taken[0].getMessage()


async def _mailbox_row(config: Config, local: str) -> list[object]:
    store = SqliteStore(config.store.path)
    await store.open()
    try:
        box = await store.find_mailbox(local)
        assert box is not None
        return [box.local_part, box.session_id, box.key, box.index, box.owner, box.created_at, box.expires_at]
    finally:
        await store.close()


async def _emails(config: Config, sid: str) -> list[object]:
    store = SqliteStore(config.store.path)
    await store.open()
    try:
        return list(await store.list_emails(session_id=sid))
    finally:
        await store.close()
