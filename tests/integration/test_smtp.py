"""The SMTP edge in one process: real aiosmtpd server on port 0, real smtplib client, real SQLite."""

from __future__ import annotations

import asyncio
import email.policy
import json
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest

from mailgate.config import Config
from mailgate.core.tasks import Task
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, queue_processed, wait_until
from tests.helpers import runtime_of as rt
from tests.keys import RsaKey

pytestmark = pytest.mark.asyncio


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "max_recipients": 3, "parse_processes": 1, "max_line_length": 2000,
                                       "max_message_size": 200_000, "max_unknown_recipients": 3},
                       mail={"domains": ("example.test", "Bücher.test")})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:  # the conftest's daemon runs these
    return ("worker", "smtp")


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


def message(to: str, subject: str = "Hello", body: str = "Body text") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@elsewhere.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@elsewhere.test>"
    msg.set_content(body)
    return msg


async def smtp_call(port: int, fn: Any) -> Any:
    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            return fn(client)
    return await asyncio.to_thread(run)


async def processed(d: Daemon) -> None:
    await queue_processed(rt(d))


async def new_address(d: Daemon, interview: str = "email-to-case") -> tuple[str, str]:
    session = await rt(d).create_session(interview)
    result = await rt(d).run_action(session.id, "start")
    assert result.text is not None
    return session.id, result.text


async def test_mail_to_session_fires_incoming_email_and_is_saved(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon)
    local, _, domain = address.partition("@")
    assert domain == "example.test" and len(local) == 16 and set(local) <= set("abcdefghijkmnpqrstuvwxyz23456789")
    events: list[Any] = []
    (await daemon.start_feed()).subscribe(events.append, sid)
    refused = await smtp_call(daemon.smtp.port, lambda c: c.send_message(message(address, "Case 1")))
    assert refused == {}
    await processed(daemon)
    tasks = await rt(daemon).store.list_tasks(session_id=sid)
    assert [t.action for t in tasks] == ["incoming_email"]
    assert await Task(tasks[0].id, rt(daemon).tasks).wait_async(10)
    answers = await rt(daemon).get_answers(sid)
    assert answers["email"].subject == "Case 1" and answers["email"].from_address == "sender@elsewhere.test"
    assert answers["email"].body_text.strip() == "Body text" and answers["email"].short == local
    assert (await rt(daemon).run_action(sid, "screen")).text == "From sender@elsewhere.test: Case 1"

    async def pushed() -> bool:
        return [e.kind for e in events][:1] == ["email"]

    await wait_until(pushed, what="the email event from the feed")


async def test_same_key_same_address_and_case_insensitive_domain(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon, "email-to-case-simple")
    again = await rt(daemon).run_action(sid, "start")
    assert again.text == address
    upper = address.split("@")[0].upper() + "@EXAMPLE.TEST"
    assert await smtp_call(daemon.smtp.port, lambda c: c.send_message(message(upper, "Upper"))) == {}
    idna = address.split("@")[0] + "@xn--bcher-kva.test"
    assert await smtp_call(daemon.smtp.port, lambda c: c.send_message(message(idna, "Idna"))) == {}
    await processed(daemon)
    text = (await rt(daemon).run_action(sid, "screen")).text or ""
    assert "Upper" in text and "Idna" in text


async def test_bcc_envelope_recipient_picks_the_mailbox(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon, "email-to-case-simple")
    msg = message("someone@elsewhere.test", "Blind")
    assert await smtp_call(daemon.smtp.port, lambda c: c.send_message(msg, to_addrs=[address])) == {}
    await processed(daemon)
    text = (await rt(daemon).run_action(sid, "screen")).text or ""
    assert "Blind" in text


async def test_rejections_at_rcpt(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    _, address = await new_address(daemon, "email-to-case-simple")

    def talk(c: smtplib.SMTP) -> list[tuple[int, bytes]]:
        c.ehlo("client.test")
        out = [c.mail("a@elsewhere.test")]
        out.append(c.rcpt("nobody@example.test"))
        out.append(c.rcpt(address.split("@")[0] + "@other.test"))
        out.append(c.rcpt(address))
        out.append(c.rcpt(address))
        out.append(c.rcpt(address))
        out.append(c.rcpt(address))  # the fourth accepted would exceed max_recipients = 3
        return out

    replies = await smtp_call(daemon.smtp.port, talk)
    assert replies[1][0] == 550 and replies[1][1].startswith(b"5.1.1")
    assert replies[2][0] == 550 and replies[2][1].startswith(b"5.7.1")
    assert [r[0] for r in replies[3:6]] == [250, 250, 250]
    assert replies[6][0] == 452 and replies[6][1].startswith(b"4.5.3")


async def test_paths_that_break_the_address_parser_are_malformed_not_internal_failures(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    _, address = await new_address(daemon, "email-to-case-simple")

    def talk(c: smtplib.SMTP) -> list[tuple[int, bytes]]:
        c.ehlo("client.test")
        out = [c.docmd("MAIL FROM:<a@[elsewhere.test>"), c.docmd("MAIL FROM:a@")]
        out.append(c.docmd("MAIL FROM:<sender@elsewhere.test>  SIZE=100"))
        out.append(c.docmd(f"RCPT TO:<{address}>"))
        return out

    replies = await smtp_call(daemon.smtp.port, talk)
    assert [r[0] for r in replies] == [553, 553, 250, 250]
    assert replies[0][1] == b"5.1.3 Error: malformed address"


async def test_unknown_recipient_cap_closes(daemon: Daemon) -> None:
    assert daemon.smtp is not None

    def talk(c: smtplib.SMTP) -> list[Any]:
        c.ehlo("client.test")
        c.mail("a@elsewhere.test")
        out: list[Any] = [c.rcpt(f"nobody{i}@example.test") for i in range(4)]
        try:
            c.noop()
            out.append("open")
        except smtplib.SMTPServerDisconnected:
            out.append("closed")
        return out

    replies = await smtp_call(daemon.smtp.port, talk)
    assert [r[0] for r in replies[:3]] == [550, 550, 550]
    assert replies[3][0] == 421 and replies[4] == "closed"


async def test_oversize_and_size_declaration(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon, "email-to-case-simple")
    big = message(address, "Big", "x" * 250_000)
    with pytest.raises(smtplib.SMTPSenderRefused) as info:  # SIZE= declared in MAIL FROM
        await smtp_call(daemon.smtp.port, lambda c: c.send_message(big))
    assert info.value.smtp_code == 552 and info.value.smtp_error.startswith(b"5.3.4")

    def undeclared(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.helo("client.test")  # HELO: no SIZE extension, so the size shows only in DATA
        c.mail("a@elsewhere.test")
        c.rcpt(address)
        return c.data(big.as_bytes(policy=email.policy.SMTP))

    code, text = await smtp_call(daemon.smtp.port, undeclared)
    assert code == 552 and text.startswith(b"5.3.4"), (code, text)
    assert await rt(daemon).store.list_emails(session_id=sid) == []


async def test_duplicates_are_stored_once(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon, "email-to-case-simple")
    msg = message(address, "Twice")
    for _ in range(2):
        assert await smtp_call(daemon.smtp.port, lambda c: c.send_message(msg)) == {}
    await processed(daemon)
    assert len(await rt(daemon).store.list_emails(session_id=sid)) == 1


async def test_internal_failure_is_451(daemon: Daemon) -> None:
    assert daemon.smtp is not None and daemon.inbound is not None
    _, address = await new_address(daemon, "email-to-case-simple")

    async def broken(**kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    daemon.inbound.receive = broken  # type: ignore[method-assign]
    with pytest.raises(smtplib.SMTPDataError) as info:
        await smtp_call(daemon.smtp.port, lambda c: c.send_message(message(address, "Fail")))
    assert info.value.smtp_code == 451 and info.value.smtp_error.startswith(b"4.3.0")
    assert b"disk on fire" not in info.value.smtp_error


async def test_deleting_the_session_kills_the_address(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon, "email-to-case-simple")
    assert await smtp_call(daemon.smtp.port, lambda c: c.send_message(message(address, "Before"))) == {}
    await processed(daemon)
    await rt(daemon).delete_session(sid)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await smtp_call(daemon.smtp.port, lambda c: c.send_message(message(address, "After")))
    assert await rt(daemon).store.list_emails(session_id=sid) == []


async def test_line_too_long_is_refused_with_an_enhanced_code(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon, "email-to-case-simple")

    def long_line(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo("client.test")
        c.mail("a@elsewhere.test")
        c.rcpt(address)
        return c.data(b"Subject: long\r\n\r\n" + b"x" * 3000 + b"\r\n")

    code, text = await smtp_call(daemon.smtp.port, long_line)
    assert code == 500 and text.startswith(b"5.5.2"), (code, text)
    assert await rt(daemon).store.list_emails(session_id=sid) == []


class StuckDns(StaticResolver):
    """A DNS that never answers."""

    async def txt(self, name: str) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_dns_timeout_bounds_all_lookups_of_a_message(tmp_path: Path) -> None:
    timeout = 2.0
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "dns_timeout": timeout},
                         mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=StuckDns({})) as d:
        assert d.smtp is not None
        sid, address = await new_address(d, "email-to-case-simple")
        msg = message(address, "Stuck DNS").as_bytes(policy=email.policy.SMTP)
        signed = dkim.sign(msg, b"sel", b"elsewhere.test", RsaKey(3).pem, include_headers=[b"from", b"to"]) + msg
        started = time.monotonic()
        assert await smtp_call(d.smtp.port, lambda c: c.sendmail("sender@elsewhere.test", [address], signed)) == {}
        answered = time.monotonic() - started
        await processed(d)
        elapsed = time.monotonic() - started
        [stored] = await rt(d).store.list_emails(session_id=sid)
    assert answered < timeout / 2, answered  # the 250 waits for the queue's commit, not for DNS
    auth = json.loads(stored.authentication)
    assert ([x["result"] for x in auth["dkim"]], auth["spf"]["result"], auth["dmarc"]["result"]) == (
        ["temperror"], "temperror", "temperror")
    # the key lookups and then SPF + DMARC share one budget: not one timeout each (2 x 2 s)
    assert timeout <= elapsed < 1.75 * timeout, elapsed


@pytest.mark.parametrize("processes", [1, 0], ids=["worker-process", "thread"])
async def test_a_message_the_worker_takes_too_long_on_is_stored_unparsed(tmp_path: Path, processes: int) -> None:
    # 2,000,000 short lines (6 MB) in a part, each beginning with "-" as a boundary does, so that the parser
    # checks every one: about 2.7 s here, well past the 0.2 s allowed
    config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "parse_processes": processes, "parse_timeout": 0.2},
                         mail={"domains": ("example.test",)})
    async with Daemon(config, roles=("smtp",), resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        sid, address = await new_address(d, "email-to-case-simple")
        slow = message(address, "Slow")
        slow.add_attachment("-\n" * 2_000_000)  # in a multipart, where a line may end the part
        raw = slow.as_bytes(policy=email.policy.SMTP)
        assert await smtp_call(d.smtp.port, lambda c: c.sendmail("sender@elsewhere.test", [address], raw)) == {}
        await processed(d)
        [stored] = await rt(d).store.list_emails(session_id=sid)
        assert await rt(d).store.get_raw(stored.sha256) == raw  # the message itself is kept whole
        parsed = json.loads(stored.parsed)
        assert parsed["defects"] == ["not parsed: parsing and DKIM took longer than 0.2 s ([smtp] parse_timeout)"]
        assert parsed["subject"] is None and parsed["body_text"] is None
        # the worker was replaced (or the thread left to finish): the next message is parsed as usual
        assert await smtp_call(d.smtp.port, lambda c: c.send_message(message(address, "Quick"))) == {}
        await processed(d)
        subjects = {json.loads(e.parsed)["subject"] for e in await rt(d).store.list_emails(session_id=sid)}
        assert subjects == {None, "Quick"}
