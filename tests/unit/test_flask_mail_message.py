"""Flask-Mail's Message shape (mailgate.flask_mail), without a relay."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from types import SimpleNamespace

import pytest

from mailgate.errors import ConfigError
from mailgate.flask_mail import Attachment, BadHeaderError, Mail, Message
from mailgate.outbound.message import HeaderInjectionError, NoSenderError, OutboundError


def test_constructor_positional_order_is_flask_mails() -> None:
    msg = Message("Subject", ["to@example.com"], "text", "<p>html</p>", ("Me", "me@example.com"), ["cc@example.com"],
                  ["bcc@example.com"], [Attachment("a.txt", "text/plain", b"a")], "reply@example.com", 0.0,
                  None, {"X-Campaign": "7"})
    assert (msg.subject, msg.recipients, msg.body, msg.html, msg.sender) == (
        "Subject", ["to@example.com"], "text", "<p>html</p>", "Me <me@example.com>")
    assert (msg.cc, msg.bcc, msg.reply_to, msg.date, msg.extra_headers) == (
        ["cc@example.com"], ["bcc@example.com"], "reply@example.com", 0.0, {"X-Campaign": "7"})
    assert msg.send_to == {"to@example.com", "cc@example.com", "bcc@example.com"}
    assert msg.alts == {"html": "<p>html</p>"}
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert (parsed["From"], parsed["Cc"], parsed["Reply-To"], parsed["X-Campaign"]) == (
        "Me <me@example.com>", "cc@example.com", "reply@example.com", "7")
    assert parsed["Bcc"] is None and parsed["Date"] == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["a.txt"]
    assert "Subject: Subject" in str(msg)


def test_html_is_the_html_alternative() -> None:
    msg = Message("x", recipients=["to@example.com"], sender="me@example.com")
    assert msg.html is None and msg.alts == {}
    msg.html = "<b>x</b>"
    assert msg.alts == {"html": "<b>x</b>"}
    msg.html = None
    assert msg.alts == {}


def test_bad_header_error_is_the_outbound_layers_header_injection_error() -> None:
    assert BadHeaderError is HeaderInjectionError
    with pytest.raises(BadHeaderError):
        Message("a\nb", recipients=["to@example.com"], sender="me@example.com").as_bytes()


@pytest.mark.parametrize(("fields", "match"), [
    ({"alts": {"amp": "<html amp>"}}, "alternative parts"),
    ({"mail_options": ["SMTPUTF8"]}, "mail_options"),
    ({"charset": "iso-8859-1"}, "charset"),
])
def test_what_mailgate_does_not_do_is_refused_not_ignored(fields: dict[str, object], match: str) -> None:
    msg = Message("x", recipients=["to@example.com"], sender="me@example.com", **fields)  # type: ignore[arg-type]
    with pytest.raises(OutboundError, match=match):
        msg.as_bytes()


def test_a_message_needs_a_sender_to_be_rendered() -> None:
    with pytest.raises(NoSenderError):
        Message("x", recipients=["to@example.com"]).as_bytes()


def test_date_may_be_a_timestamp_or_a_datetime() -> None:
    when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    for date in (when, when.timestamp()):
        msg = Message("x", recipients=["to@example.com"], sender="me@example.com", date=date)
        assert email.message_from_bytes(msg.as_bytes())["Date"] == "Sun, 01 Mar 2026 12:00:00 +0000"


@pytest.mark.parametrize(("header", "match"), [
    ("Reply-To", r"use Message\(reply_to=...\)"), ("to", r"use Message\(recipients=\[...\]\)"),
    ("From", r"use Message\(sender=...\)"), ("Content-Type", "mailgate writes the MIME structure itself"),
])
def test_extra_headers_that_contradict_a_field_name_the_field(header: str, match: str) -> None:
    msg = Message("x", recipients=["to@example.com"], sender="me@example.com", extra_headers={header: "v@example.com"})
    with pytest.raises(OutboundError, match=f"extra_headers '{header}' is set from the message: {match}"):
        msg.as_bytes()


def test_msg_id_is_made_with_the_message_and_rendered_as_it_is() -> None:
    msg = Message("x", recipients=["to@example.com"], sender=("Me", "me@bücher.example"))
    assert msg.msgId.endswith("@xn--bcher-kva.example>") and msg.msgId == msg.msgId
    assert email.message_from_bytes(msg.as_bytes())["Message-ID"] == msg.msgId
    assert email.message_from_bytes(msg.as_bytes())["Message-ID"] == msg.msgId  # rendering twice: the same one
    other = Message("x", recipients=["to@example.com"], sender="me@example.com")
    assert other.msgId != msg.msgId
    other.msgId = "<chosen@example.com>"  # Flask-Mail's msgId is a plain attribute
    assert email.message_from_bytes(other.as_bytes())["Message-ID"] == "<chosen@example.com>"


class LazyText:
    """What Flask-Babel's lazy_gettext returns: not a str, its text made when it is used."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def test_lazy_translations_and_bytes_are_text_as_in_flask_mail() -> None:
    msg = Message(LazyText("Bienvenue — à vous"), recipients=["to@example.com"], sender="me@example.com",  # type: ignore[arg-type]
                  body=LazyText("Texte"), html=b"<p>\xc3\xa9t\xc3\xa9</p>")  # type: ignore[arg-type]
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage) and parsed["Subject"] == "Bienvenue — à vous"
    text, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and text.get_content().strip() == "Texte"
    assert html is not None and html.get_content().strip() == "<p>été</p>"


@pytest.mark.parametrize(("config", "match"), [
    ({"MAIL_PORT": "smtp"}, "MAIL_PORT = 'smtp' is not a whole number"),
    ({"MAIL_MAX_EMAILS": "ten"}, "MAIL_MAX_EMAILS = 'ten' is not a whole number"),
    ({"MAIL_DEFAULT_SENDER": "nobody"}, "MAIL_DEFAULT_SENDER: 'nobody' is not an e-mail address"),
    ({"MAIL_DEFAULT_SENDER": ("News", "news-at-example.com")}, "MAIL_DEFAULT_SENDER: 'news-at-example.com' is not"),
])
def test_settings_that_cannot_work_are_named_as_the_app_sets_them(config: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=f"^the app's config: {re.escape(match)}"):
        Mail(SimpleNamespace(config=config))


def test_settings_and_defaults() -> None:
    mail = Mail(SimpleNamespace(config={"MAIL_PORT": "587", "MAIL_MAX_EMAILS": "3", "MAIL_USE_TLS": True}))
    assert (mail.server, mail.port, mail.use_tls, mail.use_ssl, mail.max_emails, mail.suppress) == (
        "localhost", 587, True, False, "3", False)
    assert (mail.state.outbound.config.relay_port, mail.state.outbound.config.max_messages_per_connection) == (587, 3)
    assert mail.state.outbound.config.tls == "starttls"
    testing = Mail(SimpleNamespace(config={"TESTING": True, "MAIL_PORT": None}))
    assert (testing.port, testing.suppress, testing.default_sender, testing.max_emails) == (25, True, None, None)
    assert Mail(SimpleNamespace(config={"TESTING": True, "MAIL_SUPPRESS_SEND": False})).suppress is False


@pytest.mark.parametrize(("subject", "bad"), [
    ("Testing\r\n folded", False), ("Testing\r\n\tfolded\r\n twice", False),  # folding, as Flask-Mail accepts it
    ("Testing\r\nBcc: victim@example.com", True), ("Testing\n folded", True), ("Testing\r folded", True),
    ("Testing\r\n \r\n folded", True), ("Testing\r\n", True), ("\r\n folded", True),
])
def test_a_subject_folded_as_flask_mail_accepts_it_is_sent_unfolded(subject: str, bad: bool) -> None:
    msg = Message(subject, recipients=["to@example.com"], body="x", sender="from@example.com")
    assert msg.has_bad_headers() is bad
    if bad:
        with pytest.raises(BadHeaderError):
            msg.as_bytes()
        return
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == subject.replace("\r\n", "")
