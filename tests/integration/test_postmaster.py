"""postmaster (RFC 5321 4.5.1): ``postmaster@`` every configured domain and the bare ``<postmaster>``,
in any case, are accepted and kept in the operator mailbox, a mailbox with no session.

A real daemon (smtp and worker roles) on a real SQLite file, smtplib as the client; the CLI listing
runs ``python -m mailgate`` on the same file.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import logging
import smtplib
import subprocess
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import (
    config_toml,
    mailgate_cmd,
    make_config,
    queue_processed,
    subprocess_env,
    wait_until,
)
from tests.helpers import runtime_of as rt
from tests.integration.test_outbound import Sink

pytestmark = pytest.mark.asyncio


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test"},
                       mail={"domains": ("example.test", "other.test")})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker", "smtp")


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@elsewhere.test>"
    msg["To"] = "postmaster@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@elsewhere.test>"
    msg.set_content(f"about {subject}")
    return msg


def send(port: int, rcpts: list[str], msg: EmailMessage) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None]:
    """The RCPT replies, then the DATA reply (None when no recipient was accepted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("sender@elsewhere.test")
        replies = [client.rcpt(r) for r in rcpts]
        if not any(code == 250 for code, _ in replies):
            return replies, None
        return replies, client.data(msg.as_bytes(policy=email.policy.SMTP))


async def postmaster_emails(d: Daemon) -> list[Any]:
    return await rt(d).store.list_emails(local_part="postmaster")


async def test_both_forms_in_any_case_are_accepted_and_stored_without_a_session(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    port = daemon.smtp.port
    forms = ["postmaster@example.test", "PostMaster@Other.Test", "<Postmaster>", "POSTMASTER"]
    for n, rcpt in enumerate(forms):
        replies, data = await asyncio.to_thread(send, port, [rcpt], message(f"Form {n}"))
        assert replies == [(250, b"2.1.5 Recipient ok")], rcpt
        assert data is not None and data[0] == 250, rcpt
    await queue_processed(rt(daemon))
    stored = await postmaster_emails(daemon)
    assert sorted(json.loads(e.parsed)["subject"] for e in stored) == [f"Form {n}" for n in range(len(forms))]
    for e in stored:
        assert e.session_id == "" and e.local_part == "postmaster"
        envelope = json.loads(e.envelope)
        assert envelope["rcpt_to"] == "postmaster@example.test" and envelope["mail_from"] == "sender@elsewhere.test"
        # the same authentication as any other message: SPF and DMARC were looked at (no DNS here: none)
        auth = json.loads(e.authentication)
        assert auth["header"].startswith("mx.test;") and "spf=" in auth["header"] and "dmarc=" in auth["header"]
        assert await rt(daemon).emails.raw(e) == (await rt(daemon).store.get_raw(e.sha256))
    # no session: no incoming_email task, no email event
    assert await rt(daemon).store.list_tasks() == []
    assert await rt(daemon).store.events_after(0) == []


async def test_foreign_domains_and_near_misses_are_still_refused(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    port = daemon.smtp.port
    replies, data = await asyncio.to_thread(
        send, port, ["postmaster@elsewhere.test", "postmaster@", "<postmasters>", "abuse"], message("Nope"))
    assert [code for code, _ in replies] == [550, 553, 501, 501] and data is None
    assert replies[0][1].startswith(b"5.7.1 Relaying denied")
    assert await postmaster_emails(daemon) == []


async def test_a_message_to_a_session_and_to_postmaster_reaches_both(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    session = await rt(daemon).create_session("email-to-case")
    address = (await rt(daemon).run_action(session.id, "start")).text
    assert address is not None
    replies, data = await asyncio.to_thread(send, daemon.smtp.port, [address, "<postmaster>"], message("Both"))
    assert [code for code, _ in replies] == [250, 250] and data is not None and data[0] == 250
    await queue_processed(rt(daemon))
    assert [json.loads(e.parsed)["subject"] for e in await postmaster_emails(daemon)] == ["Both"]
    mine = await rt(daemon).store.list_emails(session_id=session.id)
    assert [json.loads(e.parsed)["subject"] for e in mine] == ["Both"]
    assert [t.action for t in await rt(daemon).store.list_tasks()] == ["incoming_email"]
    assert [e.session_id for e in await rt(daemon).store.events_after(0) if e.kind == "email"] == [session.id]
    # the session goes, with its copy; the operator's copy and the raw bytes they shared stay
    assert await rt(daemon).delete_session(session.id)
    [kept] = await postmaster_emails(daemon)
    assert b"Subject: Both" in await rt(daemon).emails.raw(kept)
    assert await rt(daemon).store.list_emails() == [kept]


async def test_the_cli_lists_shows_and_deletes_postmaster_mail(daemon: Daemon, config: Config, tmp_path: Path) -> None:
    assert daemon.smtp is not None
    session = await rt(daemon).create_session("email-to-case")
    address = (await rt(daemon).run_action(session.id, "start")).text
    assert address is not None
    sent = message("For the operator")
    await asyncio.to_thread(send, daemon.smtp.port, ["postmaster@other.test"], sent)
    await asyncio.to_thread(send, daemon.smtp.port, [address], message("For the session"))
    await queue_processed(rt(daemon))
    path = tmp_path / "cli.toml"
    path.write_text(config_toml(config))
    env = subprocess_env(path)

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(mailgate_cmd(*args), env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        return done

    rows = json.loads(cli("emails", "list", "--postmaster", "--json").stdout)
    assert [(r["subject"], r["mailbox"], r["session"]) for r in rows] == [("For the operator", "postmaster@example.test", None)]
    everything = json.loads(cli("emails", "list", "--json").stdout)
    assert sorted(r["subject"] for r in everything) == ["For the operator", "For the session"]
    raw = cli("emails", "show", rows[0]["id"], "--raw").stdout
    assert b"Subject: For the operator" in raw and raw.rstrip(b"\r\n").endswith(b"about For the operator")
    shown = json.loads(cli("emails", "show", rows[0]["id"], "--json").stdout)
    assert shown["subject"] == "For the operator" and shown["envelope_from"] == "sender@elsewhere.test"
    cli("emails", "delete", rows[0]["id"])
    assert json.loads(cli("emails", "list", "--postmaster", "--json").stdout) == []
    assert [json.loads(e.parsed)["subject"] for e in await rt(daemon).store.list_emails()] == ["For the session"]


# -- [mail] postmaster = an address: forwarded through the outbound relay (a recording SMTP server) --

OPERATOR = "ops@operators.test"


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await Sink().start()
    yield s
    await s.stop()


def forwarding(tmp_path: Path, sink: Sink) -> Config:
    return make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test"}, mail={"domains": ("example.test",), "postmaster": OPERATOR},
                       outbound={"relay_host": "127.0.0.1", "relay_port": sink.port, "tls": "none", "timeout": 5.0})


def events_of(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == event]


async def test_postmaster_mail_is_forwarded_unchanged_with_resent_fields(tmp_path: Path, sink: Sink,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with Daemon(forwarding(tmp_path, sink), roles=("worker", "smtp"), resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        sent = {rcpt: message(f"Forward {n}") for n, rcpt in enumerate(["postmaster@example.test", "<Postmaster>"])}
        for rcpt, msg in sent.items():
            replies, data = await asyncio.to_thread(send, d.smtp.port, [rcpt], msg)
            assert [code for code, _ in replies] == [250] and data is not None and data[0] == 250
        await wait_until(lambda: len(sink.received) == 2, what="both forwarded")
        await queue_processed(rt(d))
        assert await postmaster_emails(d) == [] and await rt(d).store.list_tasks() == []
        assert await rt(d).store.events_after(0) == []
    for got, msg in zip(sink.received, sent.values(), strict=True):
        assert got.rcpt_tos == [OPERATOR] and got.mail_from == "postmaster@example.test"
        head, _, original = got.data.partition(b"\r\nFrom: ")
        assert b"From: " + original == msg.as_bytes(policy=email.policy.SMTP)  # unchanged, byte for byte
        names = [line.split(b":")[0] for line in head.split(b"\r\n") if line[:1] not in (b"\t", b" ")]
        assert names == [b"Authentication-Results", b"Resent-From", b"Resent-To", b"Resent-Date", b"Resent-Message-ID"]
        forwarded = got.message
        assert forwarded["Resent-From"] == "postmaster@example.test" and forwarded["Resent-To"] == OPERATOR
        assert forwarded["Authentication-Results"].startswith("mx.test;") and "spf=" in forwarded["Authentication-Results"]
    assert len(events_of(caplog, "mail.postmaster_forwarded")) == 2


async def test_a_refused_forward_is_retried_until_the_relay_takes_it(tmp_path: Path, sink: Sink,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sink.data_reply = "451 4.3.0 Try again later"
    async with Daemon(forwarding(tmp_path, sink), roles=("worker", "smtp"), resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        session = await rt(d).create_session("email-to-case")
        address = (await rt(d).run_action(session.id, "start")).text
        assert address is not None
        replies, data = await asyncio.to_thread(send, d.smtp.port, [address, "postmaster@example.test"], message("Retry"))
        assert [code for code, _ in replies] == [250, 250] and data is not None and data[0] == 250
        # the session's copy does not wait for the forward
        await wait_until(lambda: len(events_of(caplog, "mail.postmaster_retry")) >= 3, what="three failed tries")
        assert [json.loads(e.parsed)["subject"] for e in await rt(d).store.list_emails(session_id=session.id)] == ["Retry"]
        assert await rt(d).store.count_inbound() == 1 and sink.received == []  # still queued, never dropped
        retry = events_of(caplog, "mail.postmaster_retry")[0].getMessage()
        assert OPERATOR in retry and "451 4.3.0 Try again later" in retry
        sink.data_reply = None
        await wait_until(lambda: len(sink.received) == 1, what="the forward after the relay recovered")
        await queue_processed(rt(d))
        assert await postmaster_emails(d) == []
    assert sink.received[0].rcpt_tos == [OPERATOR] and b"Subject: Retry" in sink.received[0].data
    assert len(events_of(caplog, "mail.postmaster_forwarded")) == 1


async def test_a_forward_refused_for_good_is_kept_in_the_operator_mailbox(tmp_path: Path, sink: Sink,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sink.rcpt_reply = lambda address: "550 5.1.1 No such user"
    async with Daemon(forwarding(tmp_path, sink), roles=("worker", "smtp"), resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        await asyncio.to_thread(send, d.smtp.port, ["postmaster@example.test"], message("Kept"))
        await queue_processed(rt(d))
        assert [json.loads(e.parsed)["subject"] for e in await postmaster_emails(d)] == ["Kept"]
    [kept] = events_of(caplog, "mail.postmaster_kept")
    assert "550 5.1.1 No such user" in kept.getMessage() and kept.levelno == logging.ERROR


async def test_a_bounce_to_postmaster_is_forwarded_with_a_null_sender(tmp_path: Path, sink: Sink) -> None:
    async with Daemon(forwarding(tmp_path, sink), roles=("worker", "smtp"), resolver=StaticResolver({})) as d:
        assert d.smtp is not None

        def bounce() -> None:
            with smtplib.SMTP("127.0.0.1", d.smtp.port, timeout=10) as client:  # type: ignore[union-attr]
                assert client.sendmail("<>", ["<postmaster>"], message("Undelivered").as_bytes()) == {}

        await asyncio.to_thread(bounce)
        await wait_until(lambda: len(sink.received) == 1, what="the bounce forwarded")
    assert sink.received[0].mail_from == "<>" and sink.received[0].rcpt_tos == [OPERATOR]


@pytest.mark.parametrize("postmaster", ["mailbox", OPERATOR])
async def test_with_auth_policy_reject_postmaster_mail_is_kept_or_forwarded_too(tmp_path: Path, sink: Sink, postmaster: str) -> None:
    """``auth_policy = "reject"`` stores mail before the reply (DMARC decides it): postmaster mail
    goes to the operator mailbox then, or is queued for the forward."""
    config = forwarding(tmp_path, sink).replace(smtp={"port": 0, "hostname": "mx.test", "auth_policy": "reject"},
                                                mail={"domains": ("example.test",), "postmaster": postmaster})
    async with Daemon(config, roles=("worker", "smtp"), resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        session = await rt(d).create_session("email-to-case")
        address = (await rt(d).run_action(session.id, "start")).text
        assert address is not None
        replies, data = await asyncio.to_thread(send, d.smtp.port, [address, "<postmaster>"], message("Strict"))
        assert [code for code, _ in replies] == [250, 250] and data is not None and data[0] == 250
        if postmaster == "mailbox":
            # stored before the 250: no queue in between
            assert [json.loads(e.parsed)["subject"] for e in await postmaster_emails(d)] == ["Strict"]
        else:
            await wait_until(lambda: len(sink.received) == 1, what="the forward")
            assert sink.received[0].rcpt_tos == [OPERATOR]
            await queue_processed(rt(d))
            assert await postmaster_emails(d) == []
        assert [json.loads(e.parsed)["subject"] for e in await rt(d).store.list_emails(session_id=session.id)] == ["Strict"]
