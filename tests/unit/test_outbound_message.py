"""Outbound messages without a network: addresses, refusals, rendering, templates, transports, counters."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import logging
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailgate.author.sending import (
    mark_task_as_performed,
    record_messages,
    set_task_counter,
    task_not_yet_performed,
    task_performed,
    times_task_performed,
)
from mailgate.author.templates import Template
from mailgate.config import _build_table, _f
from mailgate.core.context import CURRENT, ActionContext, User
from mailgate.errors import ActionError, ConfigError, MailgateError
from mailgate.outbound.message import (
    AddressError,
    Attachment,
    AttachmentError,
    HeaderInjectionError,
    Message,
    NoRecipientsError,
    NoSenderError,
    OutboundError,
    format_address,
    normalize_addresses,
    to_attachment,
)
from mailgate.outbound.transport import (
    MessageRecorder,
    Outbound,
    OutboundConfig,
    RecordingTransport,
    SendResult,
    SuppressTransport,
    check_outbound,
)

SENDER = "Reminders <noreply@example.org>"


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


@pytest.fixture
def action_context() -> Iterator[ActionContext]:
    """A context as the runtime sets it for a handler (no runtime behind it)."""
    ctx = ActionContext(kind="foreground", session_id="s1", interview=None, action="a", arguments={}, user=User(),
                        runtime=None, loop=asyncio.new_event_loop())
    token = CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        CURRENT.reset(token)
        ctx.loop.close()


# -- addresses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ann@example.org", ["ann@example.org"]),
        (" Ann Lee <ann@example.org> ", ["Ann Lee <ann@example.org>"]),
        (("Ann Lee", "ann@example.org"), ["Ann Lee <ann@example.org>"]),
        (("Lee, Ann", "ann@example.org"), ['"Lee, Ann" <ann@example.org>']),
        (["a@example.org", ("B", "b@example.org")], ["a@example.org", "B <b@example.org>"]),
        (User(id="u1", email="u@example.org", first_name="Una", last_name="Ule"), ["Una Ule <u@example.org>"]),
        (None, []),
        ("ann@bücher.example", ["ann@xn--bcher-kva.example"]),  # an ASCII local part: no SMTPUTF8 needed
        (("Jürgen", "j@BÜCHER.example"), ["Jürgen <j@xn--bcher-kva.example>"]),
    ],
)
def test_address_forms(given: Any, expected: list[str]) -> None:
    assert normalize_addresses(given, "to") == expected
    assert normalize_addresses(expected, "to") == expected  # formatting is stable


@pytest.mark.parametrize("bad", ["no-at-sign", "", "a@b, c@d", "two words@example.org", ("only-one",), 42,
                                 "a@example..org", "a@" + "ü" * 70 + ".example"])
def test_not_an_address(bad: Any) -> None:
    with pytest.raises(AddressError):
        normalize_addresses(bad, "to")


# -- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hi\r\nBcc: victim@example.net"},
        {"subject": "Hi\nthere"},
        {"to": "ann@example.org\r\nBcc: victim@example.net"},
        {"to": [("Ann\nBcc: victim@example.net", "ann@example.org")]},
        {"cc": "x@example.org\n"},
        {"bcc": ["ok@example.org", "bad@example.org\rX: y"]},
        {"reply_to": "r@example.org\r\n"},
        {"sender": "me@example.org\nBcc: victim@example.net"},
        {"headers": {"X-Tag": "a\r\nBcc: victim@example.net"}},
        {"headers": {"X-Tag:\r\nBcc": "victim@example.net"}},
        {"message_id": "<x@example.org>\r\nBcc: victim@example.net"},
    ],
)
def test_header_injection_refused(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {"to": "ann@example.org", "sender": SENDER, "subject": "Hi"}
    with pytest.raises(HeaderInjectionError) as info:
        Message(**{**base, **fields})
    assert isinstance(info.value, OutboundError) and isinstance(info.value, MailgateError)


def test_injection_after_construction_is_caught_before_rendering() -> None:
    msg = Message(to="ann@example.org", sender=SENDER, subject="Hi")
    msg.subject = "Hi\r\nBcc: victim@example.net"
    with pytest.raises(HeaderInjectionError):
        msg.as_bytes()
    msg.subject = "Hi"
    msg.to = "ann@example.org\nBcc: victim@example.net"  # type: ignore[assignment]
    with pytest.raises(HeaderInjectionError):
        msg.as_bytes()


def test_no_recipient_and_no_sender() -> None:
    with pytest.raises(NoRecipientsError):
        Message(sender=SENDER, subject="Hi").validate()
    with pytest.raises(NoSenderError):
        Message(to="ann@example.org", subject="Hi").validate()
    Message(bcc="ann@example.org", sender=SENDER).validate()  # Bcc alone is a recipient


def test_body_must_be_text() -> None:
    with pytest.raises(OutboundError, match="body must be text"):
        Message(to="a@example.org", sender=SENDER, body=b"bytes")  # type: ignore[arg-type]


def test_reserved_header_refused() -> None:
    with pytest.raises(OutboundError, match="Bcc"):
        Message(to="a@example.org", sender=SENDER, headers={"Bcc": "victim@example.net"})


def test_unreadable_attachment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pdf"
    with pytest.raises(AttachmentError, match="nope.pdf"):
        Message(to="a@example.org", sender=SENDER, attachments=[str(missing)])
    with pytest.raises(AttachmentError, match="cannot read"):
        to_attachment(tmp_path)  # a directory
    with pytest.raises(AttachmentError, match="content type"):
        Attachment("a.bin", "not a type", b"x")
    with pytest.raises(AttachmentError):
        to_attachment(12)


# -- rendering ---------------------------------------------------------------------------------------
def full_message(tmp_path: Path) -> Message:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 fake")
    return Message(
        to=[("Ann Lee", "ann@example.org")], cc="carl@example.org", bcc=["hidden@example.net", "ANN@example.org"],
        reply_to="help@example.org", sender=SENDER, subject="Rappel : dossier n° 7",
        body="Bonjour Ann,\n\nvoici le rappel.\n", html="<p>Bonjour <b>Ann</b></p>",
        attachments=[str(pdf), ("notes résumé.txt", "text/plain", "déjà vu"), ("raw.bin", b"\x00\x01")],
        headers={"X-Mailgate-Session": "s1"},
    )


def test_rendering_headers_parts_attachments_and_no_bcc(tmp_path: Path) -> None:
    msg = full_message(tmp_path)
    raw = msg.as_bytes()
    assert raw.isascii(), "7-bit clean: no 8BITMIME needed at the relay"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert b"bcc" not in header_block(raw).lower() and b"hidden@example.net" not in raw
    parsed = parse(raw)
    assert parsed["From"] == SENDER
    assert parsed["To"] == "Ann Lee <ann@example.org>"
    assert parsed["Cc"] == "carl@example.org"
    assert parsed["Reply-To"] == "help@example.org"
    assert parsed["Subject"] == "Rappel : dossier n° 7"
    assert parsed["X-Mailgate-Session"] == "s1"
    assert parsed["Message-ID"] and parsed["Date"]
    assert msg.recipients() == ["ann@example.org", "carl@example.org", "hidden@example.net"]  # ANN@ is the same mailbox
    body = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert body is not None and body.get_content() == "Bonjour Ann,\r\n\r\nvoici le rappel.\r\n"
    assert html is not None and html.get_content().strip() == "<p>Bonjour <b>Ann</b></p>"
    files = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in parsed.iter_attachments()]
    assert files == [("report.pdf", "application/pdf", b"%PDF-1.4 fake"),
                     ("notes résumé.txt", "text/plain", "déjà vu".encode()),
                     ("raw.bin", "application/octet-stream", b"\x00\x01")]


def test_ascii_filenames(tmp_path: Path) -> None:
    parsed = parse(full_message(tmp_path).as_bytes(ascii_filenames=True))
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["report.pdf", "notes resume.txt", "raw.bin"]


def test_single_part_forms() -> None:
    text = parse(Message(to="a@example.org", sender=SENDER, body="just text").as_bytes())
    assert text.get_content_type() == "text/plain" and text.get_content() == "just text\r\n"
    html = parse(Message(to="a@example.org", sender=SENDER, html="<p>x</p>").as_bytes())
    assert html.get_content_type() == "text/html"


def test_non_ascii_address_needs_smtputf8() -> None:
    assert not Message(to="a@example.org", sender=SENDER).needs_smtputf8()
    msg = Message(to="jörg@bücher.example", sender=SENDER)
    assert msg.needs_smtputf8()
    assert parse(msg.as_bytes())["To"] == "jörg@bücher.example"
    assert not Message(to="joerg@bücher.example", sender=SENDER).needs_smtputf8()


# -- templates (the rendering itself: tests/unit/test_templates.py) -----------------------------------
def test_template_value_with_line_break_in_subject_is_refused() -> None:
    subject, text, html = Template("Hello ${ name }", "x").render({"name": "Ann\r\nBcc: victim@example.net"})
    with pytest.raises(HeaderInjectionError):
        Message(to="a@example.org", sender=SENDER, subject=subject, body=text, html=html)


# -- Outbound with the in-process transports ---------------------------------------------------------
def test_outbound_config_doc_env_and_checks(tmp_path: Path) -> None:
    for f in dataclasses.fields(OutboundConfig):
        assert f.metadata["doc"], f.name
        assert dict(f.metadata) == {**_f(f.default, f.metadata["doc"]).metadata, "secret": f.name == "password",
                                    "minimum": f.metadata["minimum"], "maximum": f.metadata["maximum"]}, f"{f.name}: metadata differs from config._f"
    table = _build_table(OutboundConfig, "outbound", {"relay_host": "smtp.example.org", "tls": "implicit"}, "m.toml",
                         {"MAILGATE_OUTBOUND_PASSWORD": "s3cret"})
    assert table == OutboundConfig(relay_host="smtp.example.org", tls="implicit", password="s3cret")
    with pytest.raises(ConfigError, match="dkim_selector, dkim_key_file"):
        Outbound(OutboundConfig(dkim_domain="example.org"))
    unreadable = Outbound(OutboundConfig(dkim_domain="example.org", dkim_selector="s", dkim_key_file=str(tmp_path / "none.pem")))
    with pytest.raises(ConfigError, match="cannot read"):  # read by check() (the daemon's start), not by every process
        unreadable.check()
    (tmp_path / "bad.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="m.toml: .outbound. dkim_key_file = .* is not a usable RSA private key"):
        check_outbound(OutboundConfig(dkim_domain="example.org", dkim_selector="s", dkim_key_file=str(tmp_path / "bad.pem")), "m.toml")
    with pytest.raises(ConfigError, match="ca_file"):
        Outbound(OutboundConfig(ca_file=str(tmp_path / "none.pem"))).check()
    with pytest.raises(ConfigError, match="default_sender"):
        Outbound(OutboundConfig(default_sender="a@example.org\nBcc: x@example.net"))


@pytest.mark.asyncio
async def test_default_sender_suppress_and_dispatched(caplog: pytest.LogCaptureFixture) -> None:
    outbound = Outbound(OutboundConfig(suppress=True, default_sender=SENDER))
    assert isinstance(outbound.transport, SuppressTransport)
    seen: list[tuple[Message, SendResult]] = []
    outbound.dispatched.connect(lambda m, r: seen.append((m, r)))

    def broken(message: Message, result: SendResult) -> None:
        raise RuntimeError("receiver bug")

    outbound.dispatched.connect(broken)
    caplog.set_level(logging.ERROR, "mailgate.outbound.transport")
    results = await outbound.send([Message(to="a@example.org", subject="one"), Message(to="b@example.org", subject="two")])
    assert [r.accepted for r in results] == [True, True]
    assert [m.subject for m, _ in seen] == ["one", "two"]
    assert all(m.sender == SENDER and m.message_id and m.message_id.endswith("@example.org>") for m, _ in seen)
    assert "receiver bug" in caplog.text  # logged; the other receivers still ran
    with pytest.raises(NoSenderError):
        await Outbound(OutboundConfig(suppress=True)).send([Message(to="a@example.org")])


@pytest.mark.asyncio
async def test_recorder_swaps_every_outbound_and_nests() -> None:
    own = RecordingTransport()
    outbound = Outbound(OutboundConfig(default_sender=SENDER), transport=own)
    with record_messages() as outer:
        await outbound.send([Message(to="a@example.org", subject="outer")])
        async with MessageRecorder() as inner:
            await outbound.send([Message(to="b@example.org", subject="inner")])
        await outbound.send([Message(to="c@example.org", subject="outer again")])
    await outbound.send([Message(to="d@example.org", subject="after")])
    assert [m.subject for m in outer] == ["outer", "outer again"]
    assert [m.subject for m in inner] == ["inner"]
    assert [m.subject for m in own.outbox] == ["after"]


@pytest.mark.asyncio
async def test_unreadable_dkim_key_fails_the_send_with_reason(tmp_path: Path) -> None:
    cfg = OutboundConfig(relay_host="127.0.0.1", default_sender=SENDER, dkim_domain="example.org", dkim_selector="s",
                         dkim_key_file=str(tmp_path / "none.pem"))
    (result,) = await Outbound(cfg).send([Message(to="a@example.org")])
    assert not result.accepted and "dkim_key_file" in (result.error or "") and "cannot read" in (result.error or "")


@pytest.mark.asyncio
async def test_no_relay_configured_fails_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "mailgate.outbound.transport")
    (result,) = await Outbound(OutboundConfig(default_sender=SENDER)).send([Message(to="a@example.org")])
    assert not result.accepted and "relay_host" in (result.error or "")
    assert "relay_host" in caplog.text


# -- task counters -----------------------------------------------------------------------------------
def test_task_counters(action_context: ActionContext) -> None:
    assert task_not_yet_performed("mail") and not task_performed("mail") and times_task_performed("mail") == 0
    assert action_context.answers == {}, "reading a counter must not change the answers"
    assert mark_task_as_performed("mail") == 1
    assert mark_task_as_performed("mail") == 2
    assert task_performed("mail") and times_task_performed("mail") == 2
    set_task_counter("mail", 0)
    assert task_not_yet_performed("mail")
    assert action_context.answers == {"_internal": {"tasks": {"mail": 0}}}
    with pytest.raises(ActionError):
        set_task_counter("mail", -1)
    with pytest.raises(ActionError):
        mark_task_as_performed("")


def test_task_counters_need_an_action() -> None:
    with pytest.raises(ActionError, match="inside an action"):
        task_performed("x")


def test_format_address_of_object_without_email() -> None:
    with pytest.raises(AddressError):
        format_address(SimpleNamespace(email=None))  # type: ignore[arg-type]
