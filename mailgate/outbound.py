"""Outbound mail: messages, the transports that carry them, and the Outbound object the runtime holds.

A :class:`Message` is checked before anything leaves the process: a line break in the subject, an
address or an extra header is refused as header injection, and so are a message without sender or
recipients and an attachment that cannot be read; each with its own :class:`OutboundError`.
:class:`Outbound` fills in the default sender, hands the messages to a :class:`Transport` and
fires its ``dispatched`` signal for every message the transport accepted. The transports are
:class:`RelayTransport` (SMTP to the configured relay with aiosmtplib, optional DKIM signing with
dkimpy), :class:`SuppressTransport` (nothing leaves the host) and :class:`RecordingTransport`,
which :class:`MessageRecorder` swaps in for every Outbound of the process while it is active
(Flask-Mail's ``record_messages``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.policy
import logging
import mimetypes
import os
import re
import socket
import ssl
import threading
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import aiosmtplib
import dkim

from .errors import ConfigError, MailgateError

log = logging.getLogger(__name__)


def _f(default: Any, doc: str, *, secret: bool = False, minimum: float | None = None) -> Any:
    # config._f, repeated: config.py imports OutboundConfig from here for its [outbound] table, so
    # this module must not import config.py (a unit test keeps the two in step).
    return field(default=default, metadata={"doc": doc, "secret": secret, "minimum": minimum})


@dataclass(frozen=True)
class OutboundConfig:
    relay_host: str = _f("", "SMTP relay that carries mailgate's outgoing mail; empty = none (send_email() returns False and logs why)")
    relay_port: int = _f(587, "relay port: 587 for STARTTLS, 465 for implicit TLS, 25 for a relay on this host", minimum=1)
    tls: Literal["starttls", "implicit", "none"] = _f("starttls", "starttls (the relay must offer it, or nothing is sent), implicit (TLS from the first byte, port 465) or none")
    ca_file: str = _f("", "PEM CA certificates the relay's certificate is checked against; empty = the system's trust store")
    username: str = _f("", "user name for AUTH at the relay; empty = no AUTH")
    password: str = _f("", "password for AUTH (env MAILGATE_OUTBOUND_PASSWORD)", secret=True)
    timeout: float = _f(10.0, "seconds each step with the relay (connect, TLS, each command, the message) may take", minimum=0.1)
    default_sender: str = _f("", "From when send_email() is given no sender, e.g. \"Reminders <noreply@example.org>\"")
    max_messages_per_connection: int = _f(100, "messages sent over one relay connection before it is closed and a new one opened", minimum=1)
    connections: int = _f(4, "relay connections open at the same time; a bulk send is spread over them", minimum=1)
    ascii_attachments: bool = _f(False, "reduce attachment file names to ASCII (for relays that mangle UTF-8 file names)")
    dkim_domain: str = _f("", "DKIM signing domain (d=); signing is on when dkim_domain, dkim_selector and dkim_key_file are all set")
    dkim_selector: str = _f("", "DKIM selector (s=); the public key is published at <selector>._domainkey.<domain>")
    dkim_key_file: str = _f("", "PEM RSA private key file for DKIM signing (PKCS#1 or PKCS#8)")
    suppress: bool = _f(False, "nothing leaves this host: every message is accepted and dropped (development, staging)")


# -- errors ----------------------------------------------------------------------------------------
class OutboundError(MailgateError):
    """A message cannot be sent as given; raised before anything is sent."""


class HeaderInjectionError(OutboundError):
    """A line break in a subject, an address or a header value (header injection)."""


class AddressError(OutboundError):
    """Something given as an e-mail address is not one."""


class NoRecipientsError(OutboundError):
    """A message without any To, Cc or Bcc recipient."""


class NoSenderError(OutboundError):
    """A message without sender, and no ``[outbound] default_sender``."""


class AttachmentError(OutboundError):
    """An attachment that cannot be read or described."""


# -- addresses ---------------------------------------------------------------------------------------
class HasEmail(Protocol):
    """Anything with an ``email`` attribute (a :class:`mailgate.User`), optionally first/last name."""

    @property
    def email(self) -> str | None: ...


AddressInput: TypeAlias = "str | tuple[str, str] | HasEmail"
AddressesInput: TypeAlias = "AddressInput | Iterable[AddressInput] | None"

_BREAK = re.compile(r"[\r\n\x00]")


def _no_break(value: str, what: str) -> None:
    if _BREAK.search(value):
        raise HeaderInjectionError(f"{what} {value!r} contains a line break; refused as header injection")


def format_address(value: AddressInput, what: str = "address") -> str:
    """``'a@b'``, ``'Name <a@b>'``, ``('Name', 'a@b')`` or a User -> ``'Name <a@b>'`` (or ``'a@b'``)."""
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, str) for v in value):
            raise AddressError(f"{what}: a (name, address) pair must be two strings, not {value!r}")
        name, addr = value
        _no_break(name, f"{what} name")
        _no_break(addr, what)
    elif isinstance(value, str):
        _no_break(value, what)
        pairs = getaddresses([value])
        if len(pairs) != 1:
            raise AddressError(f"{what}: {value!r} is not one address; give several as a list")
        name, addr = pairs[0]
    elif isinstance(getattr(value, "email", None), str):
        addr = str(value.email)
        name = " ".join(str(n) for n in (getattr(value, "first_name", None), getattr(value, "last_name", None)) if n)
        _no_break(name, f"{what} name")
        _no_break(addr, what)
    else:
        raise AddressError(f"{what}: {value!r} is not an address; use 'a@example.org', ('Name', 'a@example.org') or a list of them")
    addr = addr.strip()
    local, _, domain = addr.rpartition("@")
    if not local or not domain or any(c.isspace() or c in "<>,;" for c in addr):
        raise AddressError(f"{what}: {addr!r} is not an e-mail address")
    try:
        if not addr.isascii():  # RFC 6531 address: the addr_spec parser only knows ASCII local parts
            return str(Address(display_name=name.strip(), username=local, domain=domain))
        return str(Address(display_name=name.strip(), addr_spec=addr))
    except (ValueError, IndexError) as exc:
        raise AddressError(f"{what}: {addr!r} is not an e-mail address ({exc})") from None


def normalize_addresses(value: AddressesInput, what: str = "address") -> list[str]:
    """One address or an iterable of them -> a list of formatted addresses. A tuple is one (name, address)."""
    if value is None:
        return []
    if isinstance(value, (str, tuple)) or hasattr(value, "email"):
        return [format_address(value, what)]  # type: ignore[arg-type]
    if isinstance(value, Iterable):
        return [format_address(v, what) for v in value]
    raise AddressError(f"{what}: {value!r} is not an address or a list of addresses")


def address_of(formatted: str) -> str:
    """The bare address (for the envelope) of a formatted address."""
    pairs = getaddresses([formatted])
    return pairs[0][1] if pairs else ""


# -- attachments ---------------------------------------------------------------------------------------
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    def __post_init__(self) -> None:
        _no_break(self.filename, "attachment file name")
        if not _CONTENT_TYPE.match(self.content_type):
            raise AttachmentError(f"attachment {self.filename!r}: {self.content_type!r} is not a content type like 'application/pdf'")
        if not isinstance(self.data, bytes):
            raise AttachmentError(f"attachment {self.filename!r}: data must be bytes, not {type(self.data).__name__}")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], filename: str | None = None, content_type: str | None = None) -> Attachment:
        """Read a file; the content type is guessed from the name when not given."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise AttachmentError(f"cannot read attachment {os.fspath(path)!r}: {exc.strerror or exc}") from None
        name = filename or Path(path).name
        return cls(name, content_type or _guess_type(name), data)


def _guess_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def to_attachment(item: Any) -> Attachment:
    """An Attachment from a path, ``(filename, content_type, data)``, ``(filename, data)``, or an
    object with ``filename`` and ``data`` (bytes or a method returning them), such as a received
    e-mail's attachment. Reading happens here, so call it off the event loop."""
    if isinstance(item, Attachment):
        return item
    if isinstance(item, (str, os.PathLike)):
        return Attachment.from_path(item)
    if isinstance(item, tuple) and len(item) in (2, 3):
        filename, data = item[0], item[-1]
        content_type = item[1] if len(item) == 3 else None
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(filename, str):
            raise AttachmentError(f"attachment {item!r}: the file name must be a string")
        return Attachment(filename, content_type or _guess_type(filename), data)
    filename, data = getattr(item, "filename", None), getattr(item, "data", None)
    if isinstance(filename, str) and data is not None:
        try:
            raw = data() if callable(data) else data
        except OSError as exc:
            raise AttachmentError(f"cannot read attachment {filename!r}: {exc}") from None
        return Attachment(filename, getattr(item, "content_type", None) or _guess_type(filename), raw)
    raise AttachmentError(f"cannot attach {item!r}: give a path, (filename, content_type, data) or an Attachment")


def _ascii_filename(name: str) -> str:
    # Flask-Mail's rule: NFKD, then drop what is not ASCII (no transliteration of ß and the like).
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "attachment"


# -- messages ----------------------------------------------------------------------------------------
# Set from the Message fields; an extra header of one of these names would contradict them.
_RESERVED = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "content-type",
                       "content-transfer-encoding", "mime-version", "content-disposition"})
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 3.6.8: printable ASCII except colon
# Bodies go out 7-bit clean (quoted-printable or base64), so the relay needs no 8BITMIME.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")


@dataclass(kw_only=True)
class Message:
    """One e-mail. Address fields also accept ``'a@b'``, ``('Name', 'a@b')`` or a list of either;
    they are stored formatted (``['Name <a@b>']``). ``bcc`` recipients are in the envelope only."""

    to: list[str] = field(default_factory=list)
    subject: str = ""
    body: str | None = None
    html: str | None = None
    sender: str | None = None
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None
    date: dt.datetime | None = None

    def __post_init__(self) -> None:
        items: Any = self.attachments
        self.attachments = [to_attachment(a) for a in ([] if items is None else items if isinstance(items, list) else [items])]
        self.headers = dict(self.headers or {})
        self.validate(complete=False)

    def recipients(self) -> list[str]:
        """Envelope recipients: To, Cc and Bcc, each address once."""
        seen: dict[str, str] = {}
        for formatted in (*self.to, *self.cc, *self.bcc):
            addr = address_of(formatted)
            seen.setdefault(addr.lower(), addr)
        return list(seen.values())

    def validate(self, *, complete: bool = True) -> None:
        """Normalise the address fields and raise the specific OutboundError for what would make this
        message unsafe; ``complete`` also requires a sender and a recipient (checked at sending)."""
        if self.subject is None:
            self.subject = ""
        if not isinstance(self.subject, str):
            raise OutboundError(f"subject must be text, not {type(self.subject).__name__}")
        _no_break(self.subject, "subject")
        for part in ("body", "html"):
            if getattr(self, part) is not None and not isinstance(getattr(self, part), str):
                raise OutboundError(f"{part} must be text, not {type(getattr(self, part)).__name__}")
        if self.message_id is not None:
            _no_break(self.message_id, "message_id")
        self.to = normalize_addresses(self.to, "to")
        self.cc = normalize_addresses(self.cc, "cc")
        self.bcc = normalize_addresses(self.bcc, "bcc")
        self.reply_to = normalize_addresses(self.reply_to, "reply_to")
        self.sender = format_address(self.sender, "sender") if self.sender else None
        for name, value in self.headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise HeaderInjectionError(f"{name!r} is not a header name")
            if name.lower() in _RESERVED:
                raise OutboundError(f"header {name!r} is set from the message's fields; use them instead of headers=")
            _no_break(str(value), f"header {name}")
        for item in self.attachments:
            if not isinstance(item, Attachment):
                raise AttachmentError(f"attachment {item!r} was not read; add it with to_attachment() or Attachment.from_path()")
        if complete and not self.sender:
            raise NoSenderError("the message has no sender; pass sender=... or set [outbound] default_sender")
        if complete and not self.recipients():
            raise NoRecipientsError("the message has no recipient; give to, cc or bcc")

    def needs_smtputf8(self) -> bool:
        """True when an address is not ASCII (the relay must then offer SMTPUTF8, RFC 6531)."""
        return not all(a.isascii() for a in (address_of(self.sender or ""), *self.recipients()))

    def as_email_message(self, *, ascii_filenames: bool = False) -> EmailMessage:
        self.validate()
        msg = EmailMessage(policy=email.policy.SMTPUTF8 if self.needs_smtputf8() else _POLICY)
        msg["From"] = self.sender
        if self.to:
            msg["To"] = ", ".join(self.to)
        if self.cc:
            msg["Cc"] = ", ".join(self.cc)
        if self.reply_to:
            msg["Reply-To"] = ", ".join(self.reply_to)
        msg["Subject"] = self.subject
        msg["Date"] = format_datetime(self.date or dt.datetime.now(dt.UTC))
        msg["Message-ID"] = self.message_id or make_msgid(domain=_msgid_domain(self.sender))
        for name, value in self.headers.items():
            if name.lower() in ("date", "message-id"):
                del msg[name]
            msg[name] = str(value)
        if self.html is None or self.body is not None:
            msg.set_content(self.body or "")
            if self.html is not None:
                msg.add_alternative(self.html, subtype="html")
        else:
            msg.set_content(self.html, subtype="html")
        for a in self.attachments:
            maintype, subtype = a.content_type.split("/", 1)
            name = _ascii_filename(a.filename) if ascii_filenames else a.filename
            msg.add_attachment(a.data, maintype=maintype, subtype=subtype, filename=name)
        return msg

    def as_bytes(self, *, ascii_filenames: bool = False) -> bytes:
        """The message as sent (CRLF line ends; no Bcc header)."""
        return self.as_email_message(ascii_filenames=ascii_filenames).as_bytes()


def _msgid_domain(sender: str | None) -> str:
    domain = address_of(sender or "").rpartition("@")[2]
    try:
        return domain.encode("idna").decode("ascii") if domain else "localhost"
    except UnicodeError:
        return "localhost"


@dataclass(frozen=True)
class SendResult:
    """What became of one message. ``error`` says why it was not accepted, with the relay's reply."""

    message: Message
    accepted: bool
    code: int | None = None
    reply: str = ""
    error: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # recipients the relay refused, when others were accepted


class Signal:
    """In-process signal: ``connect(fn)``; ``fn(message, result)`` is called for every accepted message.

    Receivers run on the event loop and must not block; one that raises is logged and skipped.
    """

    def __init__(self) -> None:
        self._receivers: list[Callable[[Message, SendResult], Any]] = []

    def connect(self, receiver: Callable[[Message, SendResult], Any]) -> Callable[[Message, SendResult], Any]:
        self._receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Callable[[Message, SendResult], Any]) -> None:
        if receiver in self._receivers:
            self._receivers.remove(receiver)

    def send(self, message: Message, result: SendResult) -> None:
        for receiver in list(self._receivers):
            try:
                receiver(message, result)
            except Exception:
                log.exception("a receiver of the dispatched signal raised", extra={"event": "outbound.receiver_failed"})


# -- transports ----------------------------------------------------------------------------------------
class Transport(Protocol):
    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        """One result per message, in order. Failures are results, never exceptions."""
        ...


class SuppressTransport:
    """Accepts every message and sends nothing (``[outbound] suppress = true``)."""

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        for m in messages:
            log.info("outbound message %s suppressed ([outbound] suppress = true)", m.message_id,
                     extra={"event": "outbound.suppressed"})
        return [SendResult(m, True, reply="suppressed") for m in messages]


class RecordingTransport:
    """Keeps every message in ``outbox`` and sends nothing; used by :class:`MessageRecorder`."""

    def __init__(self, outbox: list[Message] | None = None) -> None:
        self.outbox: list[Message] = [] if outbox is None else outbox

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        for m in messages:
            m.as_bytes()  # what a relay would be sent must be renderable
        self.outbox.extend(messages)
        return [SendResult(m, True, reply="recorded") for m in messages]


@dataclass
class _Batch:
    queue: deque[tuple[int, Message]]
    raws: list[bytes]
    results: list[SendResult | None]
    alive: int  # workers that have not stopped
    error: str | None = None  # why the last connection attempt failed
    code: int | None = None


def _smtp_failure(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "refused every recipient: " + "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        stage = {aiosmtplib.SMTPSenderRefused: " to MAIL FROM", aiosmtplib.SMTPDataError: " to the message (DATA)",
                 aiosmtplib.SMTPAuthenticationError: " to AUTH", aiosmtplib.SMTPConnectResponseError: " on connect",
                 aiosmtplib.SMTPHeloError: " to EHLO"}.get(type(exc), "")
        return f"answered {exc.code} {exc.message}{stage}"
    return str(exc) or type(exc).__name__


def _smtp_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return exc.recipients[0].code
    return exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else None


class RelayTransport:
    """SMTP to ``[outbound] relay_host`` with aiosmtplib.

    A send of several messages is spread over up to ``connections`` connections, each reused for up
    to ``max_messages_per_connection`` messages; ``connections`` also caps the connections that all
    sends of this process hold at once. Messages are DKIM-signed when ``dkim_*`` are set.
    """

    def __init__(self, config: OutboundConfig) -> None:
        self.config = config
        self.relay = f"{config.relay_host}:{config.relay_port}"
        self._loaded = False
        self._dkim_key: bytes | None = None
        self._tls: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(config.connections)
        self._helo: str | None = None

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        if not messages:
            return []
        if not self.config.relay_host:
            why = "no relay is configured; set [outbound] relay_host (or suppress = true on a development host)"
            return [SendResult(m, False, error=why) for m in messages]
        if not self._loaded:
            try:
                await asyncio.to_thread(self.load)
            except ConfigError as exc:
                return [SendResult(m, False, error=f"cannot send: {exc}") for m in messages]
        raws = await asyncio.to_thread(lambda: [self.render(m) for m in messages])
        if self._helo is None:
            self._helo = await asyncio.to_thread(socket.getfqdn)
        batch = _Batch(deque(enumerate(messages)), raws, [None] * len(messages), min(self.config.connections, len(messages)))
        await asyncio.gather(*(self._worker(batch) for _ in range(batch.alive)))
        return [r or SendResult(m, False, error="not sent") for r, m in zip(batch.results, messages, strict=True)]

    def load(self) -> None:
        """Read the DKIM key and the CA file (ConfigError if they cannot be used); done once, at the
        first send or by :meth:`Outbound.check`, so that processes that never send need not read them."""
        if not self._loaded:
            self._dkim_key = _load_dkim_key(self.config)
            self._tls = _tls_context(self.config)
            self._loaded = True

    def render(self, message: Message) -> bytes:
        """The bytes sent for ``message``: rendered, and DKIM-signed when configured."""
        raw = message.as_bytes(ascii_filenames=self.config.ascii_attachments)
        if self._dkim_key is None:
            return raw
        signature = dkim.sign(raw, self.config.dkim_selector.encode(), self.config.dkim_domain.encode(), self._dkim_key,
                              canonicalize=(b"relaxed", b"relaxed"))
        return bytes(signature) + raw

    async def _worker(self, batch: _Batch) -> None:
        """Send queued messages over one connection at a time until the queue is empty.

        A worker that cannot connect puts its message back and stops, leaving the queue to the
        others (a relay may allow fewer connections than configured); the last one to stop fails
        what is left with its error, so a relay that is down fails the batch after one attempt.
        """
        smtp: aiosmtplib.SMTP | None = None
        try:
            async with self._slots:
                used = 0
                while batch.queue:
                    i, message = batch.queue.popleft()
                    for _attempt in (1, 2):
                        if smtp is not None and used >= self.config.max_messages_per_connection:
                            await self._quit(smtp)
                            smtp = None
                        if smtp is None:
                            try:
                                smtp, used = await self._connect(), 0
                            except (aiosmtplib.SMTPException, OSError) as exc:
                                batch.error = f"cannot send through the relay {self.relay}: {_smtp_failure(exc)}"
                                batch.code = _smtp_code(exc)
                                batch.queue.appendleft((i, message))
                                return
                        reused = used > 0
                        result, usable = await self._transact(smtp, message, batch.raws[i])
                        used += 1
                        if not usable:
                            smtp.close()
                            smtp = None
                        # A reused connection that the relay dropped or closed with 421 ("too many
                        # messages") is worth one fresh connection; a fresh one that failed is not.
                        if result.accepted or usable or not reused:
                            break
                    batch.results[i] = result
                if smtp is not None:
                    await self._quit(smtp)
                    smtp = None
        finally:
            if smtp is not None:
                smtp.close()  # cancelled (the sender's deadline): do not wait for the relay
            batch.alive -= 1
            if batch.alive == 0:
                while batch.queue:
                    i, message = batch.queue.popleft()
                    batch.results[i] = SendResult(message, False, code=batch.code, error=batch.error or "not sent")

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        smtp = aiosmtplib.SMTP(
            hostname=cfg.relay_host, port=cfg.relay_port, timeout=cfg.timeout, local_hostname=self._helo,
            use_tls=cfg.tls == "implicit", start_tls=cfg.tls == "starttls",
            tls_context=self._tls, username=cfg.username or None, password=cfg.password or None,
        )
        await smtp.connect()
        return smtp

    async def _transact(self, smtp: aiosmtplib.SMTP, message: Message, raw: bytes) -> tuple[SendResult, bool]:
        """Send one message on an open connection; returns the result and whether the connection is still usable."""
        options = ["SMTPUTF8"] if message.needs_smtputf8() else None
        sender = address_of(message.sender or "")
        try:
            refused, reply = await smtp.sendmail(sender, message.recipients(), raw, mail_options=options)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPNotSupported) as exc:
            code = _smtp_code(exc)
            error = f"the relay {self.relay} {_smtp_failure(exc)}"
            return SendResult(message, False, code=code, error=error), code != 421 and smtp.is_connected
        except (aiosmtplib.SMTPException, OSError) as exc:
            return SendResult(message, False, error=f"lost the connection to the relay {self.relay}: {_smtp_failure(exc)}"), False
        return SendResult(message, True, code=250, reply=reply,
                          refused={addr: f"{r.code} {r.message}" for addr, r in refused.items()}), True

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _tls_context(config: OutboundConfig) -> ssl.SSLContext | None:
    if config.tls == "none":
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[outbound] ca_file = {config.ca_file!r}: cannot load it: {exc}") from None


def _dkim_enabled(config: OutboundConfig) -> bool:
    parts = {"dkim_domain": config.dkim_domain, "dkim_selector": config.dkim_selector, "dkim_key_file": config.dkim_key_file}
    missing = [k for k, v in parts.items() if not v]
    if missing and len(missing) < len(parts):
        raise ConfigError(f"[outbound] DKIM signing needs dkim_domain, dkim_selector and dkim_key_file; {', '.join(missing)} not set")
    return not missing


def _load_dkim_key(config: OutboundConfig) -> bytes | None:
    if not _dkim_enabled(config):
        return None
    try:
        key = Path(config.dkim_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"[outbound] dkim_key_file = {config.dkim_key_file!r}: cannot read it: {exc.strerror or exc}") from None
    try:
        dkim.sign(b"From: a@example.org\r\n\r\n", config.dkim_selector.encode(), config.dkim_domain.encode(), key)
    except (dkim.DKIMException, ValueError) as exc:
        raise ConfigError(f"[outbound] dkim_key_file = {config.dkim_key_file!r} is not a usable RSA private key: {exc}") from None
    return key


def check_outbound(config: OutboundConfig, source: str = "", *, files: bool = True) -> None:
    """Raise ConfigError (prefixed with ``source``) for an ``[outbound]`` table that cannot work.

    ``files=False`` skips reading the DKIM key and the CA file: config loading uses that, so that
    one-shot CLI commands run by a user who cannot read the key still work.
    """
    try:
        if config.tls not in ("starttls", "implicit", "none"):
            raise ConfigError(f"[outbound] tls = {config.tls!r} is not one of 'starttls', 'implicit', 'none'")
        if config.default_sender:
            try:
                format_address(config.default_sender, "default_sender")
            except OutboundError as exc:
                raise ConfigError(f"[outbound] {exc}") from None
        _dkim_enabled(config)
        if files:
            _load_dkim_key(config)
            _tls_context(config)
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


# -- recorder ----------------------------------------------------------------------------------------
_overrides: list[Transport] = []
_overrides_lock = threading.Lock()


class MessageRecorder:
    """While active, every Outbound of this process hands its messages to a RecordingTransport
    instead of its own transport; ``with MessageRecorder() as outbox:`` (or ``async with``)."""

    def __init__(self) -> None:
        self.outbox: list[Message] = []
        self.transport = RecordingTransport(self.outbox)

    def __enter__(self) -> list[Message]:
        with _overrides_lock:
            _overrides.append(self.transport)
        return self.outbox

    def __exit__(self, *exc: object) -> None:
        with _overrides_lock:
            _overrides.remove(self.transport)

    async def __aenter__(self) -> list[Message]:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def _override() -> Transport | None:
    with _overrides_lock:
        return _overrides[-1] if _overrides else None


# -- the runtime's object ----------------------------------------------------------------------------
class Outbound:
    """Config + transport + ``dispatched`` signal; the runtime holds one as ``runtime.outbound``."""

    def __init__(self, config: OutboundConfig, transport: Transport | None = None) -> None:
        check_outbound(config, files=False)
        self.config = config
        self.dispatched = Signal()
        self.transport: Transport = transport or (SuppressTransport() if config.suppress else RelayTransport(config))

    def check(self) -> None:
        """Read the DKIM key and CA file now (ConfigError if unusable); the daemon calls this at start."""
        check_outbound(self.config)
        if isinstance(self.transport, RelayTransport):
            self.transport.load()

    @property
    def deadline(self) -> float:
        """Longest time one message may take end to end (connect, TLS, AUTH, envelope, data, quit)."""
        return self.config.timeout * 6

    def prepare(self, message: Message) -> Message:
        """A copy with the default sender, Message-ID and Date filled in; validated (raises OutboundError)."""
        sender = message.sender or self.config.default_sender or None
        message = dataclasses.replace(
            message, sender=sender, date=message.date or dt.datetime.now(dt.UTC),
            message_id=message.message_id or make_msgid(domain=_msgid_domain(format_address(sender) if sender else None)),
        )
        message.validate()
        return message

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send messages (one connection pool for all of them); one result each, in order.

        Every message is validated before any is sent. Accepted messages fire ``dispatched``;
        failures are logged with the relay's reply.
        """
        prepared = [self.prepare(m) for m in messages]
        transport = _override() or self.transport
        results = await transport.send(prepared)
        for r in results:
            if r.accepted:
                if r.refused:
                    log.warning("outbound message %s: the relay refused some recipients: %s", r.message.message_id,
                                "; ".join(f"{a}: {why}" for a, why in r.refused.items()), extra={"event": "outbound.refused"})
                self.dispatched.send(r.message, r)
            else:
                log.error("outbound message %s to %s not sent: %s", r.message.message_id, ", ".join(r.message.recipients()),
                          r.error, extra={"event": "outbound.failed"})
        return results

    async def send_one(self, message: Message) -> SendResult:
        """Send one message within :attr:`deadline`."""
        prepared = self.prepare(message)
        try:
            async with asyncio.timeout(self.deadline):
                (result,) = await self.send([prepared])
        except TimeoutError:
            result = SendResult(prepared, False, error=f"gave up after {self.deadline:g} s ([outbound] timeout x 6)")
            log.error("outbound message %s to %s not sent: %s", prepared.message_id, ", ".join(prepared.recipients()),
                      result.error, extra={"event": "outbound.failed"})
        return result
