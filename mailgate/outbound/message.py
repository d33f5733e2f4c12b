"""Outbound messages: addresses, attachments and the :class:`Message` that ``send_email()`` builds.

A :class:`Message` is checked before anything leaves the process: a line break in the subject, an
address or an extra header is refused as header injection, and so are a message without sender or
recipients and an attachment that cannot be read; each with its own :class:`OutboundError`. How
messages travel (relay, suppress, recorder) is :mod:`mailgate.outbound.transport`.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import email.policy
import mimetypes
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from mailgate.errors import MailgateError


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
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 3.6.8: printable ASCII except colon


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
    if local.isascii() and not domain.isascii():
        # An internationalised domain with an ASCII local part goes out as its IDNA A-label (as
        # Flask-Mail sends it): any relay takes it, where the UTF-8 form needs SMTPUTF8 (RFC 6531).
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise AddressError(f"{what}: {addr!r} has a domain that is not a valid international name ({exc})") from None
        addr = f"{local}@{domain}"
    try:
        if not addr.isascii():  # RFC 6531 address: the addr_spec parser only knows ASCII local parts
            return str(Address(display_name=name.strip(), username=local, domain=domain))
        return str(Address(display_name=name.strip(), addr_spec=addr))
    except (ValueError, IndexError, email.errors.HeaderParseError) as exc:
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
    """A file sent with a message; ``disposition`` "inline" and a ``Content-ID`` in ``headers`` let the
    HTML part show it (``<img src="cid:...">``)."""

    filename: str
    content_type: str
    data: bytes
    disposition: str = "attachment"
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _no_break(self.filename, "attachment file name")
        if self.disposition not in ("attachment", "inline"):
            raise AttachmentError(f"attachment {self.filename!r}: disposition {self.disposition!r} is not 'attachment' or 'inline'")
        for name, value in self.headers:
            if not isinstance(name, str) or not _HEADER_NAME.match(name) or name.lower() in ("content-type", "content-disposition"):
                raise AttachmentError(f"attachment {self.filename!r}: {name!r} is not a header it may set")
            _no_break(str(value), f"attachment {self.filename!r} header {name}")
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
        msg["Message-ID"] = self.message_id or make_msgid(domain=msgid_domain(self.sender))
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
            msg.add_attachment(a.data, maintype=maintype, subtype=subtype, filename=name, disposition=a.disposition,
                               headers=[f"{k}: {v}" for k, v in a.headers] or None)
        return msg

    def as_bytes(self, *, ascii_filenames: bool = False) -> bytes:
        """The message as sent (CRLF line ends; no Bcc header)."""
        return self.as_email_message(ascii_filenames=ascii_filenames).as_bytes()


def msgid_domain(sender: str | None) -> str:
    """The domain for Message-IDs of mail from ``sender`` (IDNA-encoded; localhost if none)."""
    domain = address_of(sender or "").rpartition("@")[2]
    try:
        return domain.encode("idna").decode("ascii") if domain else "localhost"
    except UnicodeError:
        return "localhost"
