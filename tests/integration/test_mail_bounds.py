"""Bounded work per message and DMARC alignment, through the real SMTP edge (port 0, smtplib, SQLite)."""

from __future__ import annotations

import asyncio
import email.policy
import json
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio


def message(to: str, sender: str, subject: str = "Hello", body: str = "Body text") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@elsewhere.test>"
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


async def send(port: int, mail_from: str, to: str, raw: bytes) -> Any:
    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            try:
                return client.sendmail(mail_from, [to], raw)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error
    return await asyncio.to_thread(run)


async def new_address(d: Daemon) -> tuple[str, str]:
    session = await rt(d).create_session("email-to-case-simple")
    result = await rt(d).run_action(session.id, "start")
    assert result.text is not None
    return session.id, result.text


async def test_reject_policy_refuses_a_spoof_from_a_neighbour_under_a_private_suffix(tmp_path: Path) -> None:
    # attacker.github.io passes SPF for the client's address; the From claims victim.github.io,
    # whose DMARC record says reject. Only the Public Suffix List tells the two apart.
    resolver = StaticResolver({
        ("TXT", "attacker.github.io"): ["v=spf1 ip4:127.0.0.0/8 -all"],
        ("TXT", "_dmarc.victim.github.io"): ["v=DMARC1; p=reject"],
    })
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "auth_policy": "reject"},
                         mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=resolver) as d:
        assert d.smtp is not None
        sid, address = await new_address(d)
        spoof = message(address, "CEO <ceo@victim.github.io>", "Wire the money")
        code, text = await send(d.smtp.port, "bounce@attacker.github.io", address, spoof)
        assert code == 550 and b"DMARC" in text, (code, text)
        # the attacker's own From domain is aligned with its own SPF pass, and is accepted
        honest = message(address, "Attacker <me@attacker.github.io>", "Hello")
        assert await send(d.smtp.port, "bounce@attacker.github.io", address, honest) == {}
        [stored] = await rt(d).store.list_emails(session_id=sid)
        assert json.loads(stored.parsed)["subject"] == "Hello"


async def emails_of(d: Daemon, sid: str, n: int) -> list[Any]:
    """The session's e-mails once ``n`` are stored: a 250 queues a message, the processor stores it."""
    found: list[Any] = []

    async def stored() -> bool:
        found[:] = await rt(d).store.list_emails(session_id=sid)
        return len(found) >= n

    await wait_until(stored, what=f"{n} e-mails processed")
    return found


async def test_five_hundred_dkim_signatures_cost_at_most_the_configured_queries(tmp_path: Path) -> None:
    resolver = StaticResolver({})
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "parse_processes": 1, "max_dns_queries": 8},
                         mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=resolver) as d:
        assert d.smtp is not None
        sid, address = await new_address(d)
        signatures = b"".join(f"DKIM-Signature: v=1; a=rsa-sha256; d=signer{n}.example; s=sel1; h=from; bh=; b=\r\n"
                              .encode() for n in range(500))
        raw = signatures + message(address, "Sender <s@elsewhere.test>", "Signed")
        assert 40_000 < len(raw) < 50_000
        assert await send(d.smtp.port, "s@elsewhere.test", address, raw) == {}
        [stored] = await emails_of(d, sid, 1)
        auth = json.loads(stored.authentication)
        assert [x["result"] for x in auth["dkim"]] == ["permerror"] * 5 + ["policy"]
        assert auth["dkim"][5]["reason"] == "not checked: 495 signatures past the first 5 ([smtp] max_dkim_signatures)"
        assert len([q for q in resolver.queries if "._domainkey." in q[1]]) == 5
        assert len(resolver.queries) <= 8 + 2  # the budget, and DMARC's two lookups
        assert json.loads(stored.parsed)["subject"] == "Signed"


async def test_from_past_the_header_limit_still_decides_dmarc(tmp_path: Path) -> None:
    # 256 KB of Received: fields in front of From used to leave DMARC without a From domain,
    # so a spoof of a p=reject domain was recorded as dmarc=permerror and accepted
    resolver = StaticResolver({("TXT", "_dmarc.victim.example"): ["v=DMARC1; p=reject"]})
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "auth_policy": "reject",
                                         "max_line_length": 2000}, mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=resolver) as d:
        assert d.smtp is not None
        _, address = await new_address(d)
        received = b"".join(b"Received: from relay%d.example by mx.example; Tue, 2 Jan 2024 10:00:00 +0000\r\n" % i
                            for i in range(3500))
        spoof = received + message(address, "CEO <ceo@victim.example>", "Wire the money")
        assert spoof.index(b"From:") > config.smtp.max_header_bytes
        code, text = await send(d.smtp.port, "bounce@attacker.example", address, spoof)
        assert code == 550 and b"DMARC" in text, (code, text)


def empty_lines_in_a_part(to: str, mib: int) -> bytes:
    """A multipart message whose one text part is ``mib`` MiB of empty lines (the message and its text
    need about twice the bytes in the worker; the stored record only locates the text in the message)."""
    return (f"From: s@elsewhere.test\r\nTo: {to}\r\nSubject: Empty lines\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n").encode() \
        + b"\r\n" * (mib * 2**19) + b"--b--\r\n"


async def test_a_message_past_the_worker_memory_limit_is_stored_unparsed(tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "parse_processes": 1,
                                         "parse_memory_limit": 64 * 2**20}, mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=StaticResolver({})) as d:
        assert d.smtp is not None and d.inbound is not None
        sid, address = await new_address(d)
        raw = empty_lines_in_a_part(address, 28)  # 2x 28 MiB and the worker's own memory: past 64 MiB
        assert await send(d.smtp.port, "s@elsewhere.test", address, raw) == {}
        [stored] = await emails_of(d, sid, 1)
        assert await rt(d).store.get_raw(stored.sha256) == raw  # kept whole
        parsed = json.loads(stored.parsed)
        assert parsed["defects"] == ["not parsed: parsing and DKIM needed more than 64 MiB ([smtp] parse_memory_limit)"]
        # the worker was replaced: the next message is parsed as usual
        assert await send(d.smtp.port, "s@elsewhere.test", address, message(address, "s@elsewhere.test", "Next")) == {}
        subjects = {json.loads(e.parsed)["subject"] for e in await emails_of(d, sid, 2)}
        assert subjects == {None, "Next"}
        assert d.inbound._pool is not None and d.inbound._pool.recycled == 1


async def test_a_worker_left_with_too_much_memory_is_replaced(tmp_path: Path) -> None:
    # a threshold below any Python process's resident size: every worker ends itself after its message
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "parse_processes": 1,
                                         "parse_worker_max_rss": 1}, mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=StaticResolver({})) as d:
        assert d.smtp is not None and d.inbound is not None and d.inbound._pool is not None
        pool = d.inbound._pool
        sid, address = await new_address(d)
        pids = set()
        for n, subject in enumerate(("One", "Two", "Three"), 1):
            assert await send(d.smtp.port, "s@elsewhere.test", address, message(address, "s@elsewhere.test", subject)) == {}
            await emails_of(d, sid, n)
            await wait_until(lambda: bool(pool._workers), what="a worker in place")
            pids.add(pool._workers[0].process.pid)
        assert pool.recycled >= 2 and len(pids) >= 2
        parsed = [json.loads(e.parsed) for e in await emails_of(d, sid, 3)]
        assert sorted(p["subject"] for p in parsed) == ["One", "Three", "Two"]
        assert all(p["defects"] == [] for p in parsed)
