"""Outbound mail against a real SMTP server: an aiosmtpd sink on 127.0.0.1, port 0, started here.

The sink records every connection and every envelope exactly as received, so the tests check what
really went over the wire: headers, parts, attachments, the envelope (Cc and Bcc), DKIM signatures,
TLS and AUTH, how many connections a bulk send opened, and what happens when the relay says no.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import email
import email.policy
import html as html_module
import json
import logging
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate.author.dates import DADateTime, format_date
from mailgate.author.sending import record_messages
from mailgate.author.templates import TemplateError
from mailgate.config import Config
from mailgate.core.context import User
from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.cli.send import add_parser, cmd_send_test_email
from mailgate.errors import ActionError, ConfigError, TaskFailed
from mailgate.outbound.message import HeaderInjectionError, Message
from mailgate.outbound.transport import Outbound, OutboundConfig
from tests.helpers import INTERVIEWS, make_config
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio

SENDER = "Reminders <noreply@example.org>"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


# -- the sink ----------------------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Sink:
    """A recording SMTP server. ``data_reply``/``rcpt_reply``/``mail_reply`` make it say no."""

    received: list[Received] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    max_active: int = 0
    data_reply: str | None = None
    rcpt_reply: Callable[[str], str | None] = lambda address: None
    messages_per_connection: int | None = None  # answer MAIL with 421 after this many
    password: str | None = None
    port: int = 0
    server: asyncio.Server | None = None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        done = getattr(session, "mailgate_count", 0)
        if self.messages_per_connection is not None and done >= self.messages_per_connection:
            return "421 4.7.0 Too many messages on this connection"
        session.mailgate_count = done + 1  # type: ignore[attr-defined]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self.rcpt_reply(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        assert server.transport is not None and isinstance(envelope.original_content, bytes)
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        self.received.append(Received(
            str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content, getattr(server, "number", 0),
            server.transport.get_extra_info("ssl_object") is not None, login,
        ))
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == self.password
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    async def start(self, *, tls: ssl.SSLContext | None = None, implicit: bool = False) -> Sink:
        loop = asyncio.get_running_loop()
        sink = self

        class CountingSMTP(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if not hasattr(self, "number"):  # STARTTLS calls this again on the same connection
                    sink.connections += 1
                    sink.active += 1
                    sink.max_active = max(sink.max_active, sink.active)
                    self.number = sink.connections
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                sink.active -= 1
                super().connection_lost(exc)

        def factory() -> SMTP:
            return CountingSMTP(
                self, hostname="sink.test", decode_data=False, enable_SMTPUTF8=True, loop=loop,
                tls_context=None if implicit else tls, require_starttls=False,
                authenticator=self.authenticate if self.password else None, auth_require_tls=not implicit,
            )

        self.server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls if implicit else None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await Sink().start()
    yield s
    await s.stop()


def relay(sink: Sink, **options: Any) -> OutboundConfig:
    values: dict[str, Any] = {"relay_host": "127.0.0.1", "relay_port": sink.port, "tls": "none", "timeout": 5.0,
                              "default_sender": SENDER, **options}
    return OutboundConfig(**values)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def config(tmp_path: Path) -> Config:  # the conftest's daemon runs on this
    return make_config(tmp_path, interviews={"paths": (str(INTERVIEWS / "outbound.py"),)})


def use(daemon: Daemon, config: OutboundConfig) -> Outbound:
    # Until Runtime.__init__ creates it from [outbound], the tests set the runtime's Outbound here.
    outbound = Outbound(config)
    rt(daemon).outbound = outbound  # type: ignore[attr-defined]
    return outbound


async def new_session(daemon: Daemon, **answers: Any) -> str:
    base = {"email_address": "ann@example.org", "name": "Ann", "days": 21, "case": {"number": 7}, "allow_cron": True}
    return (await rt(daemon).create_session("reminders", {**base, **answers})).id


async def tasks_of(daemon: Daemon, session_id: str) -> dict[str, int]:
    return dict((await rt(daemon).get_answers(session_id)).get("_internal", {}).get("tasks", {}))


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


# -- what goes over the wire --------------------------------------------------------------------------
async def test_headers_parts_attachments_and_envelope(sink: Sink, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 " + bytes(range(256)))
    outbound = Outbound(relay(sink))
    result = await outbound.send_one(Message(
        to=[("Ann Lee", "ann@example.org")], cc="carl@example.org", bcc=["hidden@example.net"],
        reply_to="help@example.org", subject="Rappel : dossier n° 7", body="Bonjour Ann.\n", html="<p>Bonjour <b>Ann</b></p>",
        attachments=[str(pdf), ("notes résumé.txt", "text/plain", "déjà vu")],
    ))
    assert result.accepted and result.code == 250 and result.reply == "2.0.0 Ok: queued as Q1"
    (got,) = sink.received
    assert got.mail_from == "noreply@example.org"
    assert got.rcpt_tos == ["ann@example.org", "carl@example.org", "hidden@example.net"]
    assert b"hidden@example.net" not in got.data and b"\nbcc:" not in got.data.lower()
    msg = got.message
    assert (msg["From"], msg["To"], msg["Cc"], msg["Reply-To"]) == (SENDER, "Ann Lee <ann@example.org>", "carl@example.org", "help@example.org")
    assert msg["Subject"] == "Rappel : dossier n° 7"
    assert msg["Message-ID"] == result.message.message_id and msg["Message-ID"].endswith("@example.org>")
    assert msg["Date"] is not None and msg["Bcc"] is None
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and text.get_content().replace("\r\n", "\n") == "Bonjour Ann.\n"
    assert html is not None and "<b>Ann</b>" in html.get_content()
    files = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in msg.iter_attachments()]
    assert files == [("report.pdf", "application/pdf", pdf.read_bytes()),
                     ("notes résumé.txt", "text/plain", "déjà vu".encode())]


async def test_ascii_attachment_names(sink: Sink) -> None:
    outbound = Outbound(relay(sink, ascii_attachments=True))
    await outbound.send_one(Message(to="a@example.org", attachments=[("Übersicht.pdf", "application/pdf", b"x")]))
    assert [p.get_filename() for p in sink.received[0].message.iter_attachments()] == ["Ubersicht.pdf"]


@needs_openssl
async def test_dkim_signature_verifies(sink: Sink, tmp_path: Path) -> None:
    key = tmp_path / "dkim.pem"
    openssl("genrsa", "-out", str(key), "2048")
    openssl("rsa", "-in", str(key), "-pubout", "-outform", "DER", "-out", str(tmp_path / "pub.der"))
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode((tmp_path / "pub.der").read_bytes())
    lookups: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        lookups.append(name)
        return record if name == b"mg2026._domainkey.example.org." else None

    outbound = Outbound(relay(sink, dkim_domain="example.org", dkim_selector="mg2026", dkim_key_file=str(key)))
    result = await outbound.send_one(Message(to="a@example.org", subject="signed", body="Signed body.\n",
                                             attachments=[("a.txt", "text/plain", b"attached")]))
    assert result.accepted
    data = sink.received[0].data
    assert data.startswith(b"DKIM-Signature:") and b"d=example.org" in data and b"s=mg2026" in data
    assert dkim.verify(data, dnsfunc=dns) is True
    assert lookups == [b"mg2026._domainkey.example.org."]
    assert dkim.verify(data.replace(b"Signed body.", b"Forged body."), dnsfunc=dns) is False


async def test_bulk_send_uses_the_configured_connections(sink: Sink) -> None:
    outbound = Outbound(relay(sink, connections=4, max_messages_per_connection=100))
    messages = [Message(to=f"user{i}@example.org", subject=f"n{i}") for i in range(50)]
    results = await outbound.send(messages)
    assert [r.accepted for r in results] == [True] * 50
    assert [r.message.subject for r in results] == [f"n{i}" for i in range(50)]
    assert sink.connections == 4 and sink.max_active == 4
    assert sorted(r.rcpt_tos[0] for r in sink.received) == sorted(f"user{i}@example.org" for i in range(50))
    assert {r.connection for r in sink.received} == {1, 2, 3, 4}


async def test_bulk_send_reconnects_after_the_per_connection_cap(sink: Sink) -> None:
    outbound = Outbound(relay(sink, connections=1, max_messages_per_connection=10))
    results = await outbound.send([Message(to=f"user{i}@example.org") for i in range(50)])
    assert all(r.accepted for r in results)
    assert sink.connections == 5 and sink.max_active == 1
    assert [sum(1 for r in sink.received if r.connection == n) for n in range(1, 6)] == [10] * 5
    sink.connections = 0
    sink.received.clear()
    outbound = Outbound(relay(sink, connections=3, max_messages_per_connection=7))
    assert all(r.accepted for r in await outbound.send([Message(to=f"user{i}@example.org") for i in range(50)]))
    per_connection = [sum(1 for r in sink.received if r.connection == n) for n in range(1, sink.connections + 1)]
    assert sum(per_connection) == 50 and max(per_connection) == 7 and sink.max_active == 3


async def test_relay_closing_a_reused_connection_gets_a_fresh_one(sink: Sink) -> None:
    sink.messages_per_connection = 2  # a relay stricter than max_messages_per_connection
    outbound = Outbound(relay(sink, connections=1))
    results = await outbound.send([Message(to=f"user{i}@example.org") for i in range(5)])
    assert all(r.accepted for r in results)
    assert len(sink.received) == 5 and sink.connections == 3


async def test_some_recipients_refused(sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    sink.rcpt_reply = lambda address: "550 5.1.1 No such user" if address.startswith("gone") else None
    outbound = Outbound(relay(sink))
    result = await outbound.send_one(Message(to=["ann@example.org", "gone@example.org"]))
    assert result.accepted and result.refused == {"gone@example.org": "550 5.1.1 No such user"}
    assert sink.received[0].rcpt_tos == ["ann@example.org"]
    assert "gone@example.org: 550 5.1.1 No such user" in caplog.text
    result = await outbound.send_one(Message(to="gone@example.org"))
    assert not result.accepted and "refused every recipient" in (result.error or "") and result.code == 550


async def test_dispatched_fires_for_accepted_messages_only(sink: Sink) -> None:
    outbound = Outbound(relay(sink))
    seen: list[tuple[str, str]] = []
    outbound.dispatched.connect(lambda m, r: seen.append((m.subject, r.reply)))
    await outbound.send_one(Message(to="a@example.org", subject="first"))
    sink.data_reply = "554 5.7.1 Rejected"
    await outbound.send_one(Message(to="a@example.org", subject="second"))
    assert seen == [("first", "2.0.0 Ok: queued as Q1")]


# -- TLS and AUTH ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"))
    return d / "cert.pem", d / "key.pem"


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


async def test_starttls_and_auth(certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    s = Sink(password="s3cret")
    await s.start(tls=server_context(certificate))
    try:
        cfg = relay(s, tls="starttls", ca_file=str(certificate[0]), username="mailgate", password="s3cret")
        assert (await Outbound(cfg).send_one(Message(to="a@example.org"))).accepted
        assert (s.received[0].tls, s.received[0].login) == (True, "mailgate")
        wrong = relay(s, tls="starttls", ca_file=str(certificate[0]), username="mailgate", password="wrong")
        result = await Outbound(wrong).send_one(Message(to="a@example.org"))
        assert not result.accepted and result.code == 535 and "to AUTH" in (result.error or "")
        assert "535" in caplog.text and "wrong" not in caplog.text
        untrusted = relay(s, tls="starttls", username="mailgate", password="s3cret")  # the system CAs do not know the sink
        result = await Outbound(untrusted).send_one(Message(to="a@example.org"))
        assert not result.accepted and "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
        assert len(s.received) == 1
    finally:
        await s.stop()


async def test_starttls_required_when_configured(sink: Sink) -> None:
    result = await Outbound(relay(sink, tls="starttls")).send_one(Message(to="a@example.org"))
    assert not result.accepted and "STARTTLS" in (result.error or "")
    assert sink.received == []


async def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    s = Sink()
    await s.start(tls=server_context(certificate), implicit=True)
    try:
        result = await Outbound(relay(s, tls="implicit", ca_file=str(certificate[0]))).send_one(Message(to="a@example.org"))
        assert result.accepted and s.received[0].tls is True
    finally:
        await s.stop()


# -- send_email in real actions ----------------------------------------------------------------------
async def test_send_email_from_sync_and_async_handlers_marks_the_task(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon)
    kwargs = {"to": "ann@example.org", "subject": "Hello", "body": "Hi.", "task": "hello", "bcc": "audit@example.org"}
    await rt(daemon).run_action(sid, "send", {"kwargs": kwargs})
    await rt(daemon).run_action(sid, "send_async", {"kwargs": {**kwargs, "attachments": [("a.txt", "text/plain", b"x")]}})
    answers = await rt(daemon).get_answers(sid)
    assert answers["sent"] is True and await tasks_of(daemon, sid) == {"hello": 2}
    assert [r.rcpt_tos for r in sink.received] == [["ann@example.org", "audit@example.org"]] * 2
    assert [len(list(r.message.iter_attachments())) for r in sink.received] == [0, 1]


async def test_docassemble_cron_reminder_is_sent_once(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon, name="Ann <b>Lee</b>")
    for _ in range(3):
        await rt(daemon).run_action(sid, "cron_daily", kind="cron")
    (got,) = sink.received
    msg = got.message
    assert msg["Subject"] == "Hey, it's been 20 days." and msg["To"] == "ann@example.org"
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and "that thing you need to do, Ann <b>Lee</b>!" in text.get_content()
    assert html is not None and "Ann &lt;b&gt;Lee&lt;/b&gt;" in html.get_content() and "<strong>7</strong>" in html.get_content()
    assert await tasks_of(daemon, sid) == {"20 day reminder": 1}


@pytest.mark.parametrize("action", ["send", "send_async"])
async def test_relay_4xx_returns_false_without_marking(daemon: Daemon, sink: Sink, action: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    sink.data_reply = "451 4.3.0 Try again later"
    use(daemon, relay(sink))
    sid = await new_session(daemon)
    caplog.set_level(logging.ERROR, "mailgate.outbound.transport")
    await rt(daemon).run_action(sid, action, {"kwargs": {"to": "ann@example.org", "subject": "x", "task": "t"}})
    assert (await rt(daemon).get_answers(sid))["sent"] is False
    assert await tasks_of(daemon, sid) == {}
    failures = [r for r in caplog.records if getattr(r, "event", None) == "outbound.failed"]
    assert len(failures) == 1 and "451 4.3.0 Try again later" in failures[0].getMessage()
    assert "ann@example.org" in failures[0].getMessage()


async def test_relay_down_returns_false_without_marking(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    use(daemon, OutboundConfig(relay_host="127.0.0.1", relay_port=port, tls="none", timeout=5, default_sender=SENDER))
    sid = await new_session(daemon)
    caplog.set_level(logging.ERROR, "mailgate.outbound.transport")
    await rt(daemon).run_action(sid, "cron_daily", kind="cron")
    assert await tasks_of(daemon, sid) == {}
    (failure,) = [r for r in caplog.records if getattr(r, "event", None) == "outbound.failed"]
    assert f"cannot send through the relay 127.0.0.1:{port}" in failure.getMessage()
    assert f"Error connecting to 127.0.0.1 on port {port}" in failure.getMessage()


async def test_suppress_sends_nothing_and_returns_true(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink, suppress=True))
    sid = await new_session(daemon)
    await rt(daemon).run_action(sid, "send", {"kwargs": {"to": "ann@example.org", "subject": "x", "task": "t"}})
    assert (await rt(daemon).get_answers(sid))["sent"] is True and await tasks_of(daemon, sid) == {"t": 1}
    assert sink.connections == 0 and sink.received == []


async def test_send_email_in_a_background_action(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon)
    task = await rt(daemon).start_background_action(
        sid, "send_bg", arguments={"kwargs": {"to": "ann@example.org", "subject": "from the worker", "task": "bg mail"}})
    assert await task.get_async(10) == {"sent": True, "times": 1}
    assert sink.received[0].message["Subject"] == "from the worker"
    assert await tasks_of(daemon, sid) == {}, "a background action's answers are a throwaway copy"


async def test_sync_send_email_refused_on_the_loop(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon)
    with pytest.raises(ActionError, match="send_email_async"):
        await rt(daemon).run_action(sid, "send_sync_on_loop")
    assert sink.connections == 0


async def test_refusals_raise_before_anything_is_sent(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon)
    with pytest.raises(HeaderInjectionError):
        await rt(daemon).run_action(sid, "send", {"kwargs": {"to": "ann@example.org", "subject": "x\r\nBcc: victim@example.net"}})
    assert sink.connections == 0 and await tasks_of(daemon, sid) == {}


async def test_task_counter_functions(daemon: Daemon) -> None:
    sid = await new_session(daemon)
    await rt(daemon).run_action(sid, "counters")
    answers = await rt(daemon).get_answers(sid)
    assert answers["seen"] == [False, True, 0, 1, 2, True, False, 2, 5, True]
    assert answers["_internal"]["tasks"] == {"t": 0, "u": 5}


# -- the recorder, as the README shows it ------------------------------------------------------------
async def test_reminder_sent_once(daemon: Daemon) -> None:
    use(daemon, OutboundConfig(default_sender=SENDER))  # no relay at all: the recorder must not need one
    # -- from here on, the README's example --
    runtime = daemon.runtime
    session = await runtime.create_session("reminders", {
        "email_address": "ann@example.org", "name": "Ann", "days": 21, "case": {"number": 7}, "allow_cron": True})
    with record_messages() as outbox:
        await runtime.run_action(session.id, "cron_daily", kind="cron")
        await runtime.run_action(session.id, "cron_daily", kind="cron")
    assert len(outbox) == 1  # the task counter stopped the second one
    assert outbox[0].to == ["ann@example.org"]
    assert outbox[0].subject == "Hey, it's been 20 days."
    assert "that thing you need to do, Ann!" in outbox[0].body
    answers = await runtime.get_answers(session.id)
    assert answers["_internal"]["tasks"]["20 day reminder"] == 1


# -- send-test-email ---------------------------------------------------------------------------------
def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailgate")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    add_parser(parser.add_subparsers(dest="command"), common)
    return parser.parse_args(["send-test-email", *argv])


@dataclass(frozen=True)
class _Config:
    outbound: OutboundConfig


async def test_send_test_email(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cmd_send_test_email(cli_args("ops@example.org"), _Config(relay(sink))) == 0
    out = capsys.readouterr().out
    assert out == f"accepted by 127.0.0.1:{sink.port}: 250 2.0.0 Ok: queued as Q1\n"
    assert sink.received[0].rcpt_tos == ["ops@example.org"] and "mailgate test message" in sink.received[0].message["Subject"]
    assert await cmd_send_test_email(cli_args("ops@example.org", "--json", "--from", "me@example.org"), _Config(relay(sink))) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["code"] == 250 and data["reply"] == "2.0.0 Ok: queued as Q2" and data["from"] == "me@example.org"


async def test_send_test_email_failures(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    sink.data_reply = "451 4.3.0 Try again later"
    assert await cmd_send_test_email(cli_args("ops@example.org"), _Config(relay(sink))) == 1
    err = capsys.readouterr().err
    assert err == f"mailgate: error: the relay 127.0.0.1:{sink.port} answered 451 4.3.0 Try again later to the message (DATA)\n"
    port = closed_port()
    down = OutboundConfig(relay_host="127.0.0.1", relay_port=port, tls="none", default_sender=SENDER)
    assert await cmd_send_test_email(cli_args("ops@example.org", "--json"), _Config(down)) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and f"Error connecting to 127.0.0.1 on port {port}" in data["error"]
    assert await cmd_send_test_email(cli_args("ops@example.org"), _Config(relay(sink, suppress=True))) == 1
    assert "suppress = true" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="dkim_key_file"):  # the CLI's main() prints it and exits 2
        await cmd_send_test_email(cli_args("ops@example.org"), _Config(relay(
            sink, dkim_domain="example.org", dkim_selector="s", dkim_key_file="/nonexistent/key.pem")))



async def test_template_in_a_checkin_target_sees_the_answers(daemon: Daemon) -> None:
    sid = await new_session(daemon, name="Ann <b>", count=3)
    result = await rt(daemon).run_action(sid, "greet", kind="checkin")
    assert result.commands == ({"command": "target", "target": "greeting", "html": True,
                                "content": "<p>Hello <strong>Ann &lt;b&gt;</strong>, you have 3 new messages.</p>\n"},)


async def test_a_template_error_reaches_the_author_without_a_traceback(daemon: Daemon, sink: Sink,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon)
    message = r"template broken_reminder, content line 3: 'case_number' is neither in the answers nor an interview function"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(TemplateError, match=message):
            await rt(daemon).run_action(sid, "send_broken")
        task = await rt(daemon).start_background_action(sid, "send_broken_bg")
        with pytest.raises(TaskFailed, match="TemplateError: " + message):
            await task.get_async(10)
    assert sink.received == []
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no traceback in the daemon's log


async def test_docassemble_target_template_verbatim(daemon: Daemon) -> None:
    sid = await new_session(daemon)
    result = await rt(daemon).run_action(sid, "question_food", {"favorite_food": "apples <i>"}, kind="checkin")
    assert result.commands == ({"command": "target", "target": "feedback", "html": True,
                                "content": "<p><em>What?</em>  You like\nAPPLES &lt;I&gt;?</p>\n"},)
    result = await rt(daemon).run_action(sid, "question_food", {}, kind="checkin")
    assert result.commands == ({"command": "target", "target": "feedback", "html": True, "content": ""},)


async def test_a_saved_dadatetime_is_a_dadatetime_in_the_next_action(daemon: Daemon) -> None:
    sid = await new_session(daemon)
    await rt(daemon).run_action(sid, "set_due")
    due = (await rt(daemon).get_answers(sid))["due"]
    shown = (await rt(daemon).run_action(sid, "show_due")).text
    assert isinstance(due, DADateTime)
    assert shown == f"Due {format_date(due)}, or {due.plus(days=1).format_date(format='yyyy-MM-dd')}."


async def test_interview_functions_in_an_email_template(daemon: Daemon, sink: Sink) -> None:
    use(daemon, relay(sink))
    sid = await new_session(daemon, parties=["Ann", "Bob", "Cy"], filing_date=dt.date(2026, 1, 5))
    user = User(id="u1", email="una@example.org", first_name="Una")
    url = (await rt(daemon).run_action(sid, "send_links", user=user)).text
    assert url is not None and re.fullmatch(r"/run/[\w.-]+", url)  # no [web] public_url in the tests
    (got,) = sink.received
    days = int((dt.datetime.now(dt.UTC) - dt.datetime(2026, 1, 5, tzinfo=dt.UTC)).days)
    assert got.message["Subject"] == "Una, your case 7"
    text = got.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith(f"Ann, Bob, and Cy: filed January 5, 2026,\n{days} days ago.\n")
    html = got.message.get_body(("html",)).get_content()
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert len(hrefs) == 2
    for href in hrefs:  # a signed URL as the reader's client reads it, whole, in both links
        assert re.fullmatch(r"/run/[\w.-]+", html_module.unescape(href)), href
