"""Flask-Mail's API on mailgate's outbound layer: Flask-Mail code ports by changing its import to
``from mailgate.flask_mail import Mail, Message``.

A :class:`Mail` bound to an app (``Mail(app)`` or ``init_app(app)``; an app is any object with a
``config`` mapping, Flask not needed) sends with that app's ``MAIL_*`` settings through an
:class:`~mailgate.outbound.transport.Outbound` of its own, run on one private event loop thread of
this process. A :class:`Mail` without an app, used inside an interview action, sends through the
daemon's ``[outbound]`` relay, as ``send_email()`` does, from sync handlers only (it blocks).

As in Flask-Mail, every call sends at once and raises when the message is not sent: a
:class:`BadHeaderError` (a line break in a header) or another OutboundError before anything is
sent, a :class:`SendError` (also an ``smtplib.SMTPException``) when the relay refuses the message or
cannot be reached. ``email_dispatched`` (a blinker signal) is sent for every accepted message with
the :class:`Message` as sender and ``app`` as keyword: ``receiver(message, app)``; inside an action
``app`` is an :class:`InterviewApp` (its ``logger`` and ``config`` stand in for the Flask app's).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import mimetypes
import os
import smtplib
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import make_msgid
from types import MappingProxyType
from typing import Any, TypeVar

from blinker import Namespace

from mailgate.core.bridge import refuse_on_loop, run_on_loop
from mailgate.core.context import CURRENT
from mailgate.errors import ConfigError
from mailgate.outbound import message as outbound_message
from mailgate.outbound.message import (
    AddressError,
    HeaderInjectionError,
    NoRecipientsError,
    NoSenderError,
    OutboundError,
    format_address,
    msgid_domain,
    normalize_addresses,
)
from mailgate.outbound.transport import Outbound, OutboundConfig, OutboundConnection, SendResult

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Attachment", "BadHeaderError", "Connection", "InterviewApp", "Mail", "Message", "SendError", "email_dispatched"]

#: Flask-Mail's name for a line break in a subject, an address or a header. It *is* mailgate's
#: HeaderInjectionError, so ``except BadHeaderError`` catches what the outbound layer raises.
BadHeaderError = HeaderInjectionError

signals = Namespace()
#: Sent for every message a relay accepted (or that MAIL_SUPPRESS_SEND / TESTING dropped):
#: ``email_dispatched.send(message, app=app)``; ``app`` is an InterviewApp for a Mail used inside an action.
email_dispatched = signals.signal("email-dispatched", doc="""
Signal sent when an email is dispatched. This signal will also be sent
in testing mode, even though the email will not actually be sent.
""")


class SendError(OutboundError, smtplib.SMTPException):
    """The relay refused the message or could not be reached; ``result`` has its reply."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(f"not sent: {result.error}")
        self.result = result
        self.smtp_code = result.code


# -- messages ---------------------------------------------------------------------------------------
class Attachment:
    """Flask-Mail's attachment: ``data`` is bytes (text is encoded as UTF-8)."""

    def __init__(self, filename: str | None = None, content_type: str | None = None, data: bytes | str | None = None,
                 disposition: str | None = None, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        self.filename = filename
        self.content_type = content_type
        self.data = data
        self.disposition = disposition or "attachment"
        self.headers = headers

    def to_outbound(self) -> outbound_message.Attachment:
        name = self.filename or "attachment"
        data = self.data.encode() if isinstance(self.data, str) else (self.data or b"")
        pairs = self.headers.items() if isinstance(self.headers, Mapping) else (self.headers or ())
        return outbound_message.Attachment(name, self.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream", data,
                                           self.disposition, tuple((str(k), str(v)) for k, v in pairs))


def _text(value: Any) -> str | None:
    # Flask-Mail's force_text: a lazy translation (Flask-Babel's lazy_gettext) becomes its text when
    # the message is sent; bytes are UTF-8
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _unfolded(subject: str | None) -> str | None:
    """A subject folded as Flask-Mail accepts it ("line\\r\\n more": every line after the first starts
    with a space or a tab and has text) unfolded as RFC 5322 reads it, the CRLFs removed; any other
    line break is left for the outbound layer to refuse (header injection)."""
    if not subject or ("\r" not in subject and "\n" not in subject):
        return subject
    lines = subject.split("\r\n")
    if any("\r" in line or "\n" in line or not line.strip() for line in lines) or any(
            line[0] not in " \t" for line in lines[1:]):
        return subject
    return "".join(lines)


def _address_list(value: Any, what: str) -> list[Any]:
    # Flask-Mail takes the string as a sequence of one-letter "addresses"; say what is meant instead
    if isinstance(value, str):
        raise AddressError(f"{what} must be a list of addresses, e.g. {what}=[{value!r}], not a string")
    return list(value or [])


_FIELD_HEADERS = {  # extra_headers that would contradict a field of the message: the field to use
    "from": "use Message(sender=...)", "to": "use Message(recipients=[...])", "cc": "use Message(cc=[...])",
    "bcc": "use Message(bcc=[...])", "reply-to": "use Message(reply_to=...)", "subject": "use Message(subject=...)",
    **dict.fromkeys(("content-type", "content-transfer-encoding", "mime-version", "content-disposition"),
                    "mailgate writes the MIME structure itself"),
}


class Message:
    """Flask-Mail's message. The positional order is Flask-Mail 0.9's (``alts`` is keyword-only).

    ``sender`` may be ``(name, address)``; a missing sender is the Mail's default sender (or
    ``[outbound] default_sender``), filled in when the message is sent, as is ``date``.
    """

    def __init__(self, subject: str = "", recipients: list[Any] | None = None, body: str | None = None,
                 html: str | None = None, sender: str | tuple[str, str] | None = None, cc: list[Any] | None = None,
                 bcc: list[Any] | None = None, attachments: list[Attachment] | None = None, reply_to: Any = None,
                 date: float | dt.datetime | None = None, charset: str | None = None, extra_headers: dict[str, str] | None = None,
                 mail_options: list[str] | None = None, rcpt_options: list[str] | None = None, *,
                 alts: dict[str, str] | None = None) -> None:
        if isinstance(sender, tuple):
            sender = format_address(sender, "sender")
        self.recipients: list[Any] = _address_list(recipients, "recipients")
        self.subject = subject
        self.sender = sender
        self.reply_to = reply_to
        self.cc: list[Any] = _address_list(cc, "cc")
        self.bcc: list[Any] = _address_list(bcc, "bcc")
        self.alts: dict[str, str] = dict(alts or {})
        self.body = body
        if html is not None:
            self.html = html
        self.date = date
        self._msg_id: str | None = None
        self.charset = charset
        self.extra_headers = extra_headers
        self.mail_options: list[str] = list(mail_options or [])
        self.rcpt_options: list[str] = list(rcpt_options or [])
        self.attachments: list[Attachment] = list(attachments or [])

    @property
    def msgId(self) -> str:  # noqa: N802 - Flask-Mail's name
        """The Message-ID, as Flask-Mail gives it from the start: made at the first read (with the
        sender's domain, or this host's name when there is no sender yet) and sent as it is; a
        message sent before any read gets one from its sender's domain."""
        if self._msg_id is None:
            self._msg_id = make_msgid(domain=msgid_domain(self.sender)) if self.sender else make_msgid()
        return self._msg_id

    @msgId.setter
    def msgId(self, value: str) -> None:  # noqa: N802
        self._msg_id = value

    @property
    def html(self) -> str | None:
        return self.alts.get("html")

    @html.setter
    def html(self, value: str | None) -> None:
        if value is None:
            self.alts.pop("html", None)
        else:
            self.alts["html"] = value

    @property
    def send_to(self) -> set[str]:
        """Every envelope recipient: recipients, cc and bcc."""
        return set(self.recipients) | set(self.bcc) | set(self.cc)

    def add_recipient(self, recipient: Any) -> None:
        """Add one recipient (``'a@b'`` or ``('Name', 'a@b')``)."""
        self.recipients.append(recipient)

    def attach(self, filename: str | None = None, content_type: str | None = None, data: bytes | str | None = None,
               disposition: str | None = None, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        """Add an attachment; ``disposition="inline"`` with a ``Content-ID`` header for an image the HTML shows."""
        self.attachments.append(Attachment(filename, content_type, data, disposition, headers))

    def has_bad_headers(self) -> bool:
        """True if the subject, sender, reply-to or a recipient holds a line break (header injection)."""
        try:
            self.to_outbound()
        except HeaderInjectionError:
            return True
        except OutboundError:
            return False
        return False

    def to_outbound(self, default_sender: str | None = None) -> outbound_message.Message:
        """The outbound-layer message for this one (raises OutboundError for what must not be sent)."""
        unsupported = [k for k in self.alts if k != "html"]
        if unsupported:
            raise OutboundError(f"alternative parts {unsupported} are not supported; mailgate sends text and HTML only")
        if self.mail_options or self.rcpt_options:
            raise OutboundError("mail_options and rcpt_options are not supported: mailgate sets the envelope options itself")
        if self.charset not in (None, "utf-8", "utf8", "UTF-8"):
            raise OutboundError(f"charset {self.charset!r} is not supported; mailgate encodes every message as UTF-8")
        for name in self.extra_headers or {}:
            what = _FIELD_HEADERS.get(str(name).lower())
            if what is not None:
                raise OutboundError(f"extra_headers {name!r} is set from the message: {what}")
        sender = self.sender or default_sender
        return outbound_message.Message(
            to=normalize_addresses(self.recipients, "recipients"), cc=normalize_addresses(self.cc, "cc"),
            bcc=normalize_addresses(self.bcc, "bcc"), reply_to=normalize_addresses(self.reply_to, "reply_to"),
            sender=format_address(sender, "sender") if sender else None, subject=_unfolded(_text(self.subject)) or "",
            body=_text(self.body), html=_text(self.html), attachments=[a.to_outbound() for a in self.attachments],
            headers=dict(self.extra_headers or {}), message_id=self._msg_id,
            date=self.date if isinstance(self.date, dt.datetime) or self.date is None else dt.datetime.fromtimestamp(self.date, dt.UTC),
        )

    def as_bytes(self) -> bytes:
        """The message as it would be sent (it needs a sender), with its :attr:`msgId`."""
        self.msgId  # noqa: B018 - made now, so that what is sent later has the same one
        return self.to_outbound().as_bytes()

    def as_string(self) -> str:
        return self.as_bytes().decode("utf-8", "replace")

    def __str__(self) -> str:
        return self.as_string()

    def __bytes__(self) -> bytes:
        return self.as_bytes()

    def send(self, connection: Connection) -> None:
        """Send on ``connection`` (from ``mail.connect()``)."""
        connection.send(self)


# -- where messages go ---------------------------------------------------------------------------------
class _PrivateLoop:
    """One event loop thread for every app-bound Mail of the process: an open relay connection
    belongs to the loop that opened it, and sync callers may come from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def forget(self) -> None:
        """In a forked child: the loop's thread did not survive the fork (a Flask app that sent mail
        before gunicorn --preload or a prefork worker forked), so the next send starts a new one."""
        self._loop, self._lock = None, threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="mailgate-flask-mail", daemon=True).start()
                self._loop = loop
        return run_on_loop(self._loop, coro, timeout)


_PRIVATE_LOOP = _PrivateLoop()
os.register_at_fork(after_in_child=_PRIVATE_LOOP.forget)


# Flask-Mail's settings, as its Mail's attributes (mail.default_sender, ...) -> the app's config key
_SETTING_KEYS = {"server": "MAIL_SERVER", "port": "MAIL_PORT", "use_tls": "MAIL_USE_TLS", "use_ssl": "MAIL_USE_SSL",
                 "username": "MAIL_USERNAME", "default_sender": "MAIL_DEFAULT_SENDER", "max_emails": "MAIL_MAX_EMAILS",
                 "suppress": "MAIL_SUPPRESS_SEND", "ascii_attachments": "MAIL_ASCII_ATTACHMENTS"}


def _outbound_settings(outbound: OutboundConfig) -> dict[str, Any]:
    """``[outbound]`` as Flask-Mail's settings (by attribute name; no password: it stays in the config)."""
    return {"server": outbound.relay_host, "port": outbound.relay_port, "use_tls": outbound.tls == "starttls",
            "use_ssl": outbound.tls == "implicit", "username": outbound.username or None,
            "default_sender": outbound.default_sender or None, "max_emails": outbound.max_messages_per_connection,
            "suppress": outbound.suppress, "ascii_attachments": outbound.ascii_attachments}


@dataclass(frozen=True)
class InterviewApp:
    """What ``email_dispatched`` receivers get as ``app`` for a ``Mail()`` used inside an action, so
    that a receiver written for a Flask app (``app.logger.debug(message.subject)``) works unchanged:
    the interview's ``name``, a ``logger`` (``mailgate.interview.<name>``), and ``[outbound]``'s
    settings under Flask-Mail's names in ``config`` (without the password)."""

    name: str
    logger: logging.Logger
    config: Mapping[str, Any]
    debug: bool = False
    testing: bool = False

    @classmethod
    def of(cls, name: str, outbound: OutboundConfig) -> InterviewApp:
        config = {_SETTING_KEYS[k]: v for k, v in _outbound_settings(outbound).items()}
        return cls(name, logging.getLogger(f"mailgate.interview.{name}" if name else "mailgate.interview"),
                   MappingProxyType(config))


@dataclass(frozen=True)
class _Backend:
    outbound: Outbound
    app: Any
    loop: asyncio.AbstractEventLoop | None  # the daemon's, inside an action; None: the private loop
    sender_setting: str  # where a default sender comes from, for the error that there is none
    # inside an automation step: send_email's journal, which sends a message once even when the step runs again
    journal: Callable[[outbound_message.Message], bool] | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        timeout = self.outbound.deadline + 5  # the connection's own deadline ends it first
        if self.loop is None:
            return _PRIVATE_LOOP.run(coro, timeout)
        return run_on_loop(self.loop, coro, timeout)


@dataclass(frozen=True)
class _State:
    """Flask-Mail's settings of one app, as Flask-Mail's ``Mail`` exposes them."""

    server: str
    username: str | None
    password: str | None = field(repr=False)  # never in a log line or a traceback's locals
    port: int
    use_tls: bool
    use_ssl: bool
    default_sender: str | None
    debug: int
    max_emails: int | None
    suppress: bool
    ascii_attachments: bool
    outbound: Outbound


def _integer(value: Any, name: str) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"the app's config: {name} = {value!r} is not a whole number") from None


def _state(app: Any) -> _State:
    config: Mapping[str, Any] = app.config
    testing = bool(config.get("TESTING", getattr(app, "testing", False)))
    default_sender = config.get("MAIL_DEFAULT_SENDER")
    if default_sender:
        try:  # checked here, so that the error names the app's setting and not [outbound]'s
            formatted = format_address(default_sender, "MAIL_DEFAULT_SENDER")
        except OutboundError as exc:
            raise ConfigError(f"the app's config: {exc}") from None
        if isinstance(default_sender, tuple):
            default_sender = formatted
    use_tls, use_ssl = bool(config.get("MAIL_USE_TLS", False)), bool(config.get("MAIL_USE_SSL", False))
    max_emails = config.get("MAIL_MAX_EMAILS")
    _integer(max_emails, "MAIL_MAX_EMAILS")
    server, port = str(config.get("MAIL_SERVER", "localhost")), (_integer(config.get("MAIL_PORT"), "MAIL_PORT") or 25)
    username, password = config.get("MAIL_USERNAME"), config.get("MAIL_PASSWORD")
    suppress = bool(config.get("MAIL_SUPPRESS_SEND", testing))
    ascii_attachments = bool(config.get("MAIL_ASCII_ATTACHMENTS", False))
    outbound = Outbound(OutboundConfig(
        relay_host=server, relay_port=port, tls="implicit" if use_ssl else "starttls" if use_tls else "none",
        username=username or "", password=password or "", default_sender=default_sender or "",
        max_messages_per_connection=int(max_emails) if max_emails else 2**31,  # Flask-Mail: None is no limit
        ascii_attachments=ascii_attachments, suppress=suppress,
    ))
    return _State(server, username, password, port, use_tls, use_ssl, default_sender,
                  int(config.get("MAIL_DEBUG", getattr(app, "debug", False))), max_emails, suppress, ascii_attachments,
                  outbound)


class Connection:
    """Flask-Mail's connection: ``with mail.connect() as conn: conn.send(msg)`` sends every message
    over one relay connection, opened at the first and reopened after MAIL_MAX_EMAILS messages."""

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend
        self._connection: OutboundConnection | None = None
        self.num_emails = 0

    def __enter__(self) -> Connection:
        self._connection = OutboundConnection(self._backend.outbound)
        self.num_emails = 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._backend.run(connection.close())

    def send(self, message: Message, envelope_from: str | None = None) -> None:
        """Send now; raises BadHeaderError / OutboundError before sending, SendError if not accepted."""
        if envelope_from is not None:
            raise OutboundError("envelope_from is not supported: mailgate's envelope sender is the message's sender")
        if self._connection is None:
            raise OutboundError("use the connection in a with block: `with mail.connect() as conn:`")
        backend = self._backend
        try:
            prepared = backend.outbound.prepare(message.to_outbound())
        except NoRecipientsError:  # Flask-Mail: AssertionError("No recipients have been added")
            raise NoRecipientsError("the message has no recipients: give Message(recipients=[...]) (or cc, bcc), "
                                    "or call msg.add_recipient(...)") from None
        except NoSenderError:
            raise NoSenderError(f"the message has no sender: give Message(sender=...) or set {backend.sender_setting}") from None
        message.sender, message._msg_id = message.sender or prepared.sender, prepared.message_id
        if message.date is None and prepared.date is not None:
            message.date = prepared.date.timestamp()
        if backend.journal is not None:
            if not backend.journal(prepared):
                raise SendError(SendResult(prepared, False, error="the relay did not take it; mailgate's log has its reply"))
        else:
            result = backend.run(self._connection.send(prepared))
            if not result.accepted:
                raise SendError(result)
        self.num_emails += 1
        email_dispatched.send(message, app=self._backend.app)

    def send_message(self, *args: Any, **kwargs: Any) -> None:
        """``send(Message(*args, **kwargs))``."""
        self.send(Message(*args, **kwargs))


class Mail:
    """Flask-Mail's ``Mail``: ``Mail(app)``, or ``Mail()`` then ``init_app(app)``; inside an
    interview action, ``Mail()`` without an app sends through ``[outbound]``."""

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self.state: _State | None = self.init_app(app) if app is not None else None

    def init_app(self, app: Any) -> _State:
        """Read the app's ``MAIL_*`` settings; stores them as ``app.extensions['mail']`` as Flask-Mail does."""
        state = _state(app)
        extensions = getattr(app, "extensions", None)
        if extensions is None:
            extensions = {}
            try:
                app.extensions = extensions
            except AttributeError:
                pass
        extensions["mail"] = state
        self.app, self.state = app, state
        return state

    def __getattr__(self, name: str) -> Any:
        # Flask-Mail's Mail reads its settings (mail.default_sender, mail.max_emails, ...) from its state
        if name.startswith("_") or name == "state":
            raise AttributeError(name)
        if self.state is not None:
            return getattr(self.state, name, None)
        ctx = CURRENT.get()  # a Mail() without an app, inside an action: [outbound]'s settings
        return None if ctx is None else _outbound_settings(ctx.runtime.outbound.config).get(name)

    def _backend(self) -> _Backend:
        ctx = CURRENT.get()
        if ctx is not None:  # a blocking send on the daemon's loop would stall every session
            refuse_on_loop(ctx.loop, "Flask-Mail's send()", "await send_email_async(...)")
        if self.state is not None:
            return _Backend(self.state.outbound, self.app, None, "MAIL_DEFAULT_SENDER in the app's config")
        if ctx is None:
            raise OutboundError("this Mail has no app: use Mail(app) or mail.init_app(app), or use it inside an interview action")
        outbound: Outbound = ctx.runtime.outbound
        name = ctx.interview.name if ctx.interview is not None else ""
        return _Backend(outbound, InterviewApp.of(name, outbound.config), ctx.loop, "[outbound] default_sender", ctx.send_hook)

    def connect(self) -> Connection:
        """A :class:`Connection` for a bulk send: ``with mail.connect() as conn:``."""
        return Connection(self._backend())

    def send(self, message: Message) -> None:
        """Send one message over a connection of its own."""
        with self.connect() as connection:
            message.send(connection)

    def send_message(self, *args: Any, **kwargs: Any) -> None:
        """``send(Message(*args, **kwargs))``."""
        self.send(Message(*args, **kwargs))

    @contextmanager
    def record_messages(self) -> Iterator[list[Message]]:
        """``with mail.record_messages() as outbox:``: every message dispatched meanwhile, as Flask-Mail
        records them (through ``email_dispatched``; sending is not suppressed by this alone)."""
        outbox: list[Message] = []

        def record(message: Message, app: Any) -> None:
            outbox.append(message)

        email_dispatched.connect(record)
        try:
            yield outbox
        finally:
            email_dispatched.disconnect(record)
