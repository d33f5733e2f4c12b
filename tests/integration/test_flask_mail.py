"""Flask-Mail's documentation examples (seed 004), unchanged but for the import, against a real relay.

The relay is aiosmtpd on 127.0.0.1, port 0, on an event loop thread of its own (Flask-Mail's calls
block their caller, so the relay cannot share the caller's loop). It records every envelope as
received and numbers its connections, which shows ``mail.connect()`` keeping one connection.
The blocks marked "seed 004" are the documentation's code as printed; around them, the test sets up
what the documentation assumes (an app, a ``mail``, ``users``, ``emails``).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
import smtplib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.author.sending import record_messages
from mailgate.automations import flow, this
from mailgate.automations.registry import AutomationRegistry
from mailgate.config import Config
from mailgate.core import answers as codec
from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import ActionError
from mailgate.flask_mail import BadHeaderError, Mail, Message, SendError, email_dispatched
from mailgate.mail.auth import StaticResolver
from mailgate.outbound.message import AddressError, NoRecipientsError, NoSenderError
from tests.automations.test_runner import automation, cfg, settled
from tests.helpers import INTERVIEWS, make_config
from tests.helpers import runtime_of as rt


# -- the recording relay -------------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Relay:
    """A recording SMTP relay on its own loop thread; ``data_reply`` makes it refuse messages,
    ``messages_per_connection`` closes a connection with 421 after that many."""

    received: list[Received] = field(default_factory=list)
    connections: int = 0
    data_reply: str | None = None
    messages_per_connection: int | None = None  # answer MAIL with 421 after this many
    smtputf8: bool = True  # False: a relay that does not offer SMTPUTF8 (RFC 6531), as many do not
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _server: asyncio.Server | None = None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        done = getattr(session, "count", 0)
        if self.messages_per_connection is not None and done >= self.messages_per_connection:
            return "421 4.7.0 Too many messages on this connection"
        session.count = done + 1  # type: ignore[attr-defined]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        assert isinstance(envelope.original_content, bytes)
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content,
                                      getattr(server, "number", 0)))
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"

    def per_connection(self) -> list[int]:
        return [sum(1 for r in self.received if r.connection == n) for n in range(1, self.connections + 1)]

    async def _serve(self) -> None:
        relay = self

        class CountingSMTP(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                relay.connections += 1
                self.number = relay.connections
                super().connection_made(transport)

        def factory() -> SMTP:
            return CountingSMTP(self, hostname="relay.test", decode_data=False, enable_SMTPUTF8=self.smtputf8,
                               loop=self._loop)

        self._server = await self._loop.create_server(factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def __enter__(self) -> Relay:
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-relay", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def relay() -> Iterator[Relay]:
    with Relay() as r:
        yield r


class App:
    """What Flask-Mail reads of a Flask app: ``config``, and what the examples use: ``logger``, ``open_resource``."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.config: dict[str, Any] = dict(config)
        self.logger = logging.getLogger("tests.flask_app")
        self.root = root

    def open_resource(self, name: str) -> BinaryIO:
        return (self.root / name).open("rb")


def app_for(relay: Relay, tmp_path: Path, **config: Any) -> App:
    return App(tmp_path, MAIL_SERVER="127.0.0.1", MAIL_PORT=relay.port, **config)


# -- "Sending messages" ----------------------------------------------------------------------------------
def test_sending_messages(relay: Relay, tmp_path: Path) -> None:
    app = app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="default@example.com")
    mail = Mail(app)

    def index() -> Message:
        # seed 004
        msg = Message("Hello",
                      sender="from@example.com",
                      recipients=["to@example.com"])
        return msg

    msg = index()
    # seed 004
    msg.recipients = ["you@example.com"]
    msg.add_recipient("somebodyelse@example.com")
    msg.body = "testing"
    msg.html = "<b>testing</b>"
    mail.send(msg)

    (got,) = relay.received
    assert got.mail_from == "from@example.com"
    assert got.rcpt_tos == ["you@example.com", "somebodyelse@example.com"]
    sent = got.message
    assert (sent["Subject"], sent["From"], sent["To"]) == ("Hello", "from@example.com", "you@example.com, somebodyelse@example.com")
    text, html = sent.get_body(("plain",)), sent.get_body(("html",))
    assert text is not None and text.get_content().strip() == "testing"
    assert html is not None and html.get_content().strip() == "<b>testing</b>"
    assert sent["Message-ID"] == msg.msgId and msg.date is not None

    # seed 004: with MAIL_DEFAULT_SENDER set
    msg = Message("Hello",
                  recipients=["to@example.com"])
    mail.send(msg)
    assert relay.received[1].mail_from == "default@example.com" and msg.sender == "default@example.com"

    # seed 004
    msg = Message("Hello",
                  sender=("Me", "me@example.com"))

    assert msg.sender == "Me <me@example.com>"
    msg.add_recipient("to@example.com")
    mail.send(msg)
    assert relay.received[2].message["From"] == "Me <me@example.com>"
    assert relay.connections == 3, "mail.send() uses a connection of its own each time, as Flask-Mail's does"


def test_no_sender_and_no_default_sender_is_refused(relay: Relay, tmp_path: Path) -> None:
    mail = Mail(app_for(relay, tmp_path))
    with pytest.raises(NoSenderError, match=r"Message\(sender=...\) or set MAIL_DEFAULT_SENDER"):
        mail.send(Message("Hello", recipients=["to@example.com"]))
    assert relay.connections == 0


def test_no_recipients_is_refused(relay: Relay, tmp_path: Path) -> None:
    # Flask-Mail asserts "No recipients have been added"; mailgate says what to give
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com"))
    with mail.record_messages() as outbox, pytest.raises(NoRecipientsError, match=r"recipients=\[...\].*add_recipient"):
        mail.send(Message("Hello", body="x"))
    with pytest.raises(AddressError, match=r"recipients=\['to@example.com'\], not a string"):
        Message("Hello", recipients="to@example.com")  # type: ignore[arg-type]  # Flask-Mail would send to t, o, @, ...
    assert outbox == [] and relay.connections == 0


def test_msg_id_is_there_before_sending_and_is_the_one_sent(relay: Relay, tmp_path: Path) -> None:
    # Flask-Mail makes msgId with the message: code keeps it (to thread replies) before sending
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com"))
    msg = Message("Hello", recipients=["to@example.com"], sender="me@example.com", body="x")
    msg_id = msg.msgId
    assert msg_id.startswith("<") and msg_id.endswith("@example.com>") and msg.msgId == msg_id
    mail.send(msg)
    unnamed = Message("Hello", recipients=["to@example.com"], body="x")  # read before the default sender is known
    unnamed_id = unnamed.msgId
    mail.send(unnamed)
    assert [r.message["Message-ID"] for r in relay.received] == [msg_id, unnamed_id]
    assert (msg.msgId, unnamed.msgId) == (msg_id, unnamed_id)


def test_unicode_subject_names_and_international_domains(relay: Relay, tmp_path: Path) -> None:
    relay.smtputf8 = False  # Flask-Mail sends these through any relay: mailgate must too
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER=("Zoë Ünal", "zoe@bücher.example")))
    msg = Message("Grüße — ✓", recipients=[("Jürgen Dœ", "jd@BÜCHER.example"), "ann@example.com"], body="héllo")
    mail.send(msg)
    (got,) = relay.received
    assert (got.mail_from, got.rcpt_tos) == ("zoe@xn--bcher-kva.example", ["jd@xn--bcher-kva.example", "ann@example.com"])
    sent = got.message
    assert (sent["Subject"], sent["From"], sent["To"]) == (
        "Grüße — ✓", "Zoë Ünal <zoe@xn--bcher-kva.example>", "Jürgen Dœ <jd@xn--bcher-kva.example>, ann@example.com")
    assert got.data.isascii(), "names, subject and body are MIME-encoded, no 8-bit data"
    assert sent.get_content().strip() == "héllo"


# -- "Bulk emails" ---------------------------------------------------------------------------------------
@dataclass
class User:
    name: str
    email: str


USERS = [User(f"user{i}", f"user{i}@example.com") for i in range(7)]


def bulk(mail: Mail, users: list[User]) -> None:
    # seed 004
    with mail.connect() as conn:
        for user in users:
            message = '...'
            subject = "hello, %s" % user.name  # noqa: UP031  (as printed)
            msg = Message(recipients=[user.email],
                          body=message,
                          subject=subject)

            conn.send(msg)


def test_bulk_emails_share_one_connection(relay: Relay, tmp_path: Path) -> None:
    bulk(Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="news@example.com")), USERS)
    assert relay.connections == 1 and relay.per_connection() == [7]
    assert [r.rcpt_tos for r in relay.received] == [[u.email] for u in USERS]
    assert [r.message["Subject"] for r in relay.received] == [f"hello, {u.name}" for u in USERS]


def test_bulk_emails_reconnect_after_mail_max_emails(relay: Relay, tmp_path: Path) -> None:
    bulk(Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="news@example.com", MAIL_MAX_EMAILS=3)), USERS)
    assert relay.connections == 3 and relay.per_connection() == [3, 3, 1]
    assert sorted(r.rcpt_tos[0] for r in relay.received) == sorted(u.email for u in USERS)


def test_relay_stricter_than_mail_max_emails_gets_a_fresh_connection(relay: Relay, tmp_path: Path) -> None:
    relay.messages_per_connection = 2
    bulk(Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="news@example.com")), USERS[:5])
    assert relay.per_connection() == [2, 2, 1]
    assert [r.rcpt_tos[0] for r in relay.received] == [u.email for u in USERS[:5]]


def test_init_app_later(relay: Relay, tmp_path: Path) -> None:
    # seed 004's configuration pattern: the extension first, the app later
    mail = Mail()
    app = app_for(relay, tmp_path, MAIL_DEFAULT_SENDER=("News", "news@example.com"), MAIL_MAX_EMAILS=2)
    mail.init_app(app)
    assert app.extensions["mail"] is mail.state  # type: ignore[attr-defined]
    assert (mail.default_sender, mail.max_emails, mail.suppress) == ("News <news@example.com>", 2, False)
    bulk(mail, USERS[:4])
    assert relay.per_connection() == [2, 2]
    assert relay.received[0].message["From"] == "News <news@example.com>"


def test_mail_without_app_outside_an_action_says_what_to_do() -> None:
    with pytest.raises(Exception, match=r"Mail\(app\) or mail.init_app\(app\)"):
        Mail().send_message(subject="x", recipients=["a@example.com"], sender="b@example.com")


# -- "Attachments" ---------------------------------------------------------------------------------------
def test_attachments(relay: Relay, tmp_path: Path) -> None:
    image = bytes(range(256)) * 4
    (tmp_path / "image.png").write_bytes(image)
    app = app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com")
    mail = Mail(app)
    msg = Message("Pictures", recipients=["to@example.com"], html='<img src="cid:logo">')

    # seed 004
    with app.open_resource("image.png") as fp:
        msg.attach("image.png", "image/png", fp.read())

    msg.attach("logo.png", "image/png", b"\x89PNG logo", "inline", headers={"Content-ID": "<logo>"})
    msg.attach("notes résumé.txt", "text/plain", "déjà vu")
    mail.send(msg)
    parts = list(relay.received[0].message.iter_attachments())
    assert [(p.get_filename(), p.get_content_type(), p.get_content_disposition()) for p in parts] == [
        ("image.png", "image/png", "attachment"), ("logo.png", "image/png", "inline"),
        ("notes résumé.txt", "text/plain", "attachment")]
    assert parts[0].get_payload(decode=True) == image and parts[1]["Content-ID"] == "<logo>"
    assert parts[2].get_payload(decode=True) == "déjà vu".encode()


def test_ascii_attachments(relay: Relay, tmp_path: Path) -> None:
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com", MAIL_ASCII_ATTACHMENTS=True))
    msg = Message("x", recipients=["to@example.com"])
    msg.attach("Übersicht.pdf", "application/pdf", b"%PDF")
    mail.send(msg)
    assert [p.get_filename() for p in relay.received[0].message.iter_attachments()] == ["Ubersicht.pdf"]


# -- "Unit tests and suppressing emails" -------------------------------------------------------------------
@pytest.mark.parametrize("setting", [{"TESTING": True}, {"MAIL_SUPPRESS_SEND": True}])
def test_record_messages_while_suppressed(relay: Relay, tmp_path: Path, setting: dict[str, bool]) -> None:
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com", **setting))
    emails = ["a@example.com", "b@example.com"]

    # seed 004
    with mail.record_messages() as outbox:

        mail.send_message(subject='testing',
                          body='test',
                          recipients=emails)

        assert len(outbox) == 1
        assert outbox[0].subject == "testing"

    assert outbox[0].recipients == emails and outbox[0].sender == "from@example.com"
    assert relay.connections == 0 and relay.received == []
    mail.send_message(subject="after the block", body="x", recipients=emails)
    assert len(outbox) == 1, "the outbox stops recording when the block ends"


def test_record_messages_records_what_is_sent(relay: Relay, tmp_path: Path) -> None:
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com"))
    msg = Message("recorded and sent", recipients=["a@example.com"], body="x")
    with mail.record_messages() as outbox:
        mail.send(msg)
    assert outbox == [msg] and outbox[0] is msg
    assert [r.message["Subject"] for r in relay.received] == ["recorded and sent"]


# -- "Header injection" ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [
    {"subject": "Hello\r\nBcc: victim@example.net", "recipients": ["to@example.com"]},
    {"subject": "Hello", "recipients": ["to@example.com\nBcc: victim@example.net"]},
    {"subject": "Hello", "recipients": ["to@example.com"], "sender": "from@example.com\r\nBcc: victim@example.net"},
])
def test_header_injection_raises_bad_header_error(relay: Relay, tmp_path: Path, fields: dict[str, Any]) -> None:
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com"))
    msg = Message(body="x", **fields)
    assert msg.has_bad_headers()
    with mail.record_messages() as outbox, pytest.raises(BadHeaderError):
        mail.send(msg)
    assert outbox == [] and relay.connections == 0
    assert not Message("Hello", recipients=["to@example.com"], sender="from@example.com").has_bad_headers()


# -- "Signalling support" --------------------------------------------------------------------------------
def test_email_dispatched(relay: Relay, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com")
    mail = Mail(app)
    caplog.set_level(logging.DEBUG, "tests.flask_app")

    # seed 004
    def log_message(message, app):  # type: ignore[no-untyped-def]  # as printed
        app.logger.debug(message.subject)

    email_dispatched.connect(log_message)
    try:
        mail.send_message(subject="dispatched one", recipients=["a@example.com"], body="x")
        relay.data_reply = "554 5.7.1 Rejected"
        with pytest.raises(SendError) as refused:
            mail.send_message(subject="refused one", recipients=["a@example.com"], body="x")
    finally:
        email_dispatched.disconnect(log_message)
    assert [r.getMessage() for r in caplog.records if r.name == "tests.flask_app"] == ["dispatched one"]
    assert [r.message["Subject"] for r in relay.received] == ["dispatched one"]  # and refused the other
    assert isinstance(refused.value, smtplib.SMTPException) and refused.value.smtp_code == 554
    assert "554 5.7.1 Rejected" in str(refused.value)


def test_relay_down_raises_send_error(tmp_path: Path) -> None:
    with Relay() as gone:
        port = gone.port
    mail = Mail(App(tmp_path, MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_DEFAULT_SENDER="from@example.com"))
    with mail.record_messages() as outbox, pytest.raises(SendError, match=f"cannot send through the relay 127.0.0.1:{port}"):
        mail.send_message(subject="x", recipients=["a@example.com"], body="x")
    assert outbox == []


# -- from interview code ----------------------------------------------------------------------------------
@pytest.fixture
def config(tmp_path: Path, relay: Relay) -> Config:  # the conftest's daemon runs on this
    return make_config(tmp_path, interviews={"paths": (str(INTERVIEWS / "flask_mail.py"),)},
                       outbound={"relay_host": "127.0.0.1", "relay_port": relay.port, "tls": "none",
                                 "default_sender": "Cases <cases@example.org>", "max_messages_per_connection": 2})


@pytest.mark.asyncio
async def test_from_interview_code(daemon: Daemon, relay: Relay) -> None:
    sid = (await rt(daemon).create_session("flask_mail", {"email": "ann@example.org", "name": "Ann"})).id
    await rt(daemon).run_action(sid, "notify")
    assert (await rt(daemon).get_answers(sid))["sent"] is True
    (got,) = relay.received
    assert (got.mail_from, got.rcpt_tos, got.message["Subject"]) == ("cases@example.org", ["ann@example.org"], "Your case")
    addresses = [f"p{i}@example.org" for i in range(5)]
    await rt(daemon).run_action(sid, "bulk", {"addresses": addresses})
    assert [r.rcpt_tos[0] for r in relay.received[1:]] == addresses
    assert relay.connections == 1 + 3 and relay.per_connection() == [1, 2, 2, 1], "[outbound] max_messages_per_connection"
    with pytest.raises(ActionError, match="send_email_async"):
        await rt(daemon).run_action(sid, "send_on_loop")
    assert len(relay.received) == 6
    with record_messages() as outbox:  # mailgate's recorder also catches Flask-Mail sends of interview code
        await rt(daemon).run_action(sid, "notify")
    assert [(m.subject, m.to, m.sender) for m in outbox] == [("Your case", ["ann@example.org"], "Cases <cases@example.org>")]
    assert len(relay.received) == 6 and relay.connections == 4


@pytest.mark.asyncio
async def test_email_dispatched_receivers_get_an_app_inside_an_action(daemon: Daemon, relay: Relay,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    apps: list[Any] = []

    # seed 004, as a Flask app had connected it: interview code sending must not break it
    def log_message(message, app):  # type: ignore[no-untyped-def]  # as printed
        app.logger.debug(message.subject)

    caplog.set_level(logging.DEBUG, "mailgate.interview")
    email_dispatched.connect(log_message)
    email_dispatched.connect(record := lambda message, app: apps.append(app))
    try:
        sid = (await rt(daemon).create_session("flask_mail", {"email": "ann@example.org", "name": "Ann"})).id
        await rt(daemon).run_action(sid, "notify")
    finally:
        email_dispatched.disconnect(log_message)
        email_dispatched.disconnect(record)
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("mailgate.interview")] == [
        ("mailgate.interview.flask_mail", "Your case")]
    (app,) = apps
    assert (app.name, app.config["MAIL_DEFAULT_SENDER"], app.config["MAIL_PORT"]) == (
        "flask_mail", "Cases <cases@example.org>", relay.port)
    assert "MAIL_PASSWORD" not in app.config
    assert len(relay.received) == 1
    # the Mail's own settings (mail.default_sender, ...) read [outbound] too, the password excepted
    await rt(daemon).run_action(sid, "settings")
    settings = (await rt(daemon).get_answers(sid))["settings"]
    assert settings == {"server": "127.0.0.1", "port": relay.port, "use_tls": False, "use_ssl": False,
                        "default_sender": "Cases <cases@example.org>", "max_emails": 2, "suppress": False, "password": None}


@pytest.mark.asyncio
async def test_from_interview_code_what_would_block_or_cannot_be_sent_is_refused(daemon: Daemon, relay: Relay) -> None:
    sid = (await rt(daemon).create_session("flask_mail", {})).id
    with record_messages() as outbox:
        # a Mail(app) blocks its caller as Flask-Mail does: on the daemon's loop that would stall every session
        with pytest.raises(ActionError, match="send_email_async"):
            await rt(daemon).run_action(sid, "send_on_loop_with_app")
        with pytest.raises(NoRecipientsError, match=r"no recipients: give Message\(recipients=\[...\]\)"):
            await rt(daemon).run_action(sid, "no_recipients")
    assert outbox == [] and relay.received == []


class FlaskMailFlow(flow.Automation):
    """An automation whose step sends with Flask-Mail's API."""

    class Meta:
        name = "FlaskMailFlow"

    post = flow.Execute(this.notify)
    end = flow.End()

    def notify(self, task: Any) -> None:
        with Mail().connect() as conn:
            conn.send(Message("From a step", recipients=["client@example.org"], body="x"))
        self.data["sent"] = True


@pytest.mark.asyncio
async def test_in_an_automation_step_it_is_journaled_as_send_email_is(tmp_path: Path) -> None:
    # a step may run again (a runner died before its commit): its mail must go out once, as send_email's
    with record_messages() as outbox:
        async with Daemon(cfg(tmp_path), roles=("worker",), resolver=StaticResolver({}),
                          automations=AutomationRegistry([FlaskMailFlow])) as d:
            made, _ = await FlaskMailFlow.start_async()
            await settled(d, made.id)
            assert codec.decode((await automation(d, made.id)).data)["sent"] is True
            history = {s.node: s for s in await rt(d).store.automation_history(made.id)}
            assert await rt(d).store.journal_entry(history["post"].id, 0) is not None
    assert [m.subject for m in outbox] == ["From a step"]
    assert outbox[0].message_id.startswith(f"<{history['post'].id}.0@"), "the journal's Message-ID, made from the step"


def test_a_forked_child_sends_too(relay: Relay, tmp_path: Path) -> None:
    # a Flask app that sent mail before forking (gunicorn --preload, prefork workers): each process sends
    mail = Mail(app_for(relay, tmp_path, MAIL_DEFAULT_SENDER="from@example.com", MAIL_SUPPRESS_SEND=False))
    mail.send_message(subject="parent", recipients=["a@example.com"], body="x")
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if the relay took its message
        code = 1
        try:
            mail.send_message(subject="child", recipients=["a@example.com"], body="x")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r.message["Subject"] for r in relay.received] == ["parent", "child"]
