"""DAEmail: one received message as seen by interview code, with docassemble's attribute names.

Stored in answers (and passed as ``action_argument('email')``) by id; the runtime fills in the
fields from the store when it loads answers or arguments. The raw bytes and attachment contents are
read on demand (``email.raw``, ``email.attachment[0].data()``), since they can be large.

As in docassemble, ``body_text``, ``body_html`` and each attachment are file objects: ``slurp()``,
``path()`` (a temporary file with the content), ``url_for()`` (a signed, expiring URL of the web
side), ``filename``, ``mimetype`` and ``extension``. The bodies are also the text itself (a ``str``),
so ``if email.body_text:`` and string methods work as before.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import json
import math
import mimetypes
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailgate.core import answers as codec
from mailgate.core.bridge import refuse_on_loop, run_on_loop
from mailgate.core.context import CURRENT
from mailgate.core.emails import attachment_of
from mailgate.errors import ActionError
from mailgate.store.base import EmailRecord

if TYPE_CHECKING:
    from mailgate.core.emails import Emails


_temp_dir: str | None = None


def _temp_path(email_id: str, part: str, extension: str, data: bytes) -> str:
    """A private temporary file holding ``data``; one per e-mail part, removed when the process exits."""
    global _temp_dir
    if _temp_dir is None or not os.path.isdir(_temp_dir):  # (systemd-tmpfiles removes what was left 10 days)
        _temp_dir = tempfile.mkdtemp(prefix="mailgate-files-")  # mode 0700: the mail is private
        atexit.register(shutil.rmtree, _temp_dir, True)
    name = f"{email_id}-{part}" + (f".{extension}" if extension else "")
    path = os.path.join(_temp_dir, "".join(c if c.isalnum() or c in "-_." else "_" for c in name))
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=_temp_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    return path


def _decoded(data: bytes, mimetype: str, auto_decode: bool, charset: str | None = None) -> str | bytes:
    """docassemble's ``slurp()``: text types decoded (in the part's declared ``charset``; without one,
    or where it does not fit, UTF-8, else Windows-1252), others as bytes."""
    if auto_decode and (mimetype.startswith("text/") or mimetype in ("application/json", "application/javascript")):
        if charset is not None:
            try:
                return data.decode(charset)
            except (UnicodeDecodeError, LookupError):
                pass
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("windows-1252", errors="replace")
    return data


def _extension(filename: str, mimetype: str) -> str:
    suffix = os.path.splitext(filename)[1].lstrip(".").lower()
    if suffix:
        return suffix
    guessed = mimetypes.guess_extension(mimetype) if "/" in mimetype else None
    return guessed.lstrip(".") if guessed else ""


def _file_url(email_id: str, part: str, seconds: float | None) -> str:
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                                or not math.isfinite(seconds)):
        raise ActionError(f"url_for(seconds=...) takes a number of seconds the URL stays valid, not {seconds!r}")
    ctx = CURRENT.get()
    if ctx is None or ctx.runtime is None:
        raise ActionError("url_for() of an e-mail part needs a running mailgate")
    return str(ctx.runtime.url_for_email_part(email_id, part, seconds))


class EmailBody(str):
    """A body of a DAEmail: its text, and a file object as docassemble's (``slurp()``, ``path()``, ...)."""

    filename: str
    mimetype: str
    extension: str
    _email_id: str

    def __new__(cls, text: str, email_id: str, mimetype: str) -> EmailBody:
        body = super().__new__(cls, text)
        body.mimetype = mimetype
        body.extension = "html" if mimetype == "text/html" else "txt"
        body.filename = f"body.{body.extension}"
        body._email_id = email_id
        return body

    def slurp(self, auto_decode: bool = True) -> str | bytes:
        """The body's text (its UTF-8 bytes with ``auto_decode=False``)."""
        return str(self) if auto_decode else str(self).encode("utf-8")

    def path(self) -> str:
        """A temporary file with the body (UTF-8)."""
        return _temp_path(self._email_id, self.extension, self.extension, str(self).encode("utf-8"))

    def url_for(self, seconds: float | None = None, **_: object) -> str:
        """A signed URL of the web side that serves the body (valid ``[web] url_action_ttl`` seconds)."""
        return _file_url(self._email_id, self.extension, seconds)

    def size_in_bytes(self) -> int:
        return len(str(self).encode("utf-8"))


@dataclass(frozen=True)
class EmailAttachment:
    filename: str
    content_type: str
    size: int
    content_id: str | None
    disposition: str
    number: int  # position among the message's attachments
    email: DAEmail

    def data(self) -> bytes:
        """The attachment's bytes (decoded), read from the stored raw message."""
        return attachment_of(self.email.raw, self.number, self.email.id).data

    # -- docassemble's file-object attributes --------------------------------------------------------
    @property
    def mimetype(self) -> str:
        return self.content_type

    @property
    def extension(self) -> str:
        """Lower-case, without the dot: from the file name, else from the MIME type ("" if neither)."""
        return _extension(self.filename, self.content_type)

    def slurp(self, auto_decode: bool = True) -> str | bytes:
        """The content: text types decoded to ``str`` in their declared charset (unless
        ``auto_decode=False``), others as bytes."""
        part = attachment_of(self.email.raw, self.number, self.email.id)
        return _decoded(part.data, self.content_type, auto_decode, part.charset)

    def path(self) -> str:
        """A temporary file with the content (private to the process, removed when it exits)."""
        return _temp_path(self.email.id, f"attachment{self.number}", self.extension, self.data())

    def url_for(self, seconds: float | None = None, **_: object) -> str:
        """A signed URL of the web side that serves the attachment (valid ``[web] url_action_ttl`` seconds)."""
        return _file_url(self.email.id, str(self.number), seconds)

    def size_in_bytes(self) -> int:
        return self.size

    def __str__(self) -> str:
        return self.filename


class DAEmail:
    ref_kind = "email"

    short: str | None
    key: str | None
    index: str | None
    address_owner: str | None
    to_address: list[str]
    cc_address: list[str]
    from_address: str | None
    reply_to: str | None
    return_path: str | None
    subject: str | None
    datetime_message: dt.datetime | None
    datetime_received: dt.datetime | None
    body_text: EmailBody | None
    body_html: EmailBody | None
    attachment: list[EmailAttachment]
    headers: dict[str, str]
    message_id: str | None
    size: int
    authentication: dict[str, Any]
    defects: list[str]
    address: str | None
    envelope: dict[str, Any]

    def __init__(self, email_id: str, record: EmailRecord | None = None, emails: Emails | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, bodies: tuple[str | None, str | None] | None = None) -> None:
        self._id = email_id
        self._emails = emails
        self._loop = loop
        self._raw: bytes | None = None
        self._record: EmailRecord | None = None
        if record is not None:
            self._fill(record, bodies)

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"DAEmail({self._id!r}, subject={getattr(self, 'subject', None)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DAEmail) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("email", self._id))

    def __getattr__(self, name: str) -> Any:
        # Only reached for the fields before the record was loaded.
        if name.startswith("_"):
            raise AttributeError(name)
        raise ActionError(f"DAEmail {self._id} was not loaded from the store (reading {name!r}); "
                          "load it through a session's answers or action arguments")

    def _fill(self, rec: EmailRecord, bodies: tuple[str | None, str | None] | None = None) -> None:
        """Set the fields from ``rec``; ``bodies`` are its (text, html) when they are not in its JSON
        but in the raw message (`Emails.stored_bodies`, read before, since reading is async)."""
        self._record = rec
        parsed = json.loads(rec.parsed)
        if bodies is None:
            if parsed.get("body_text_at") is not None or parsed.get("body_html_at") is not None:
                raise ActionError(f"DAEmail {self._id}: its body is read from the raw message; load the e-mail "
                                  "through a session's answers, action arguments or mailboxes")
            bodies = parsed.get("body_text"), parsed.get("body_html")
        env = json.loads(rec.envelope)
        self.envelope = env
        self.short = env.get("short")
        self.key = env.get("key") or None
        self.index = env.get("index") or None
        self.address_owner = env.get("address_owner")
        self.address = env.get("address")
        self.to_address = list(parsed.get("to_address") or [])
        self.cc_address = list(parsed.get("cc_address") or [])
        self.from_address = parsed.get("from_address")
        self.reply_to = parsed.get("reply_to")
        self.return_path = env.get("mail_from")
        self.subject = parsed.get("subject")
        when = parsed.get("datetime_message")
        self.datetime_message = dt.datetime.fromisoformat(when) if when else None
        self.datetime_received = dt.datetime.fromtimestamp(rec.received_at, dt.UTC)
        text, html = bodies
        self.body_text = None if text is None else EmailBody(text, self._id, "text/plain")
        self.body_html = None if html is None else EmailBody(html, self._id, "text/html")
        self.attachment = [
            EmailAttachment(a["filename"], a["content_type"], a["size"], a.get("content_id"), a["disposition"], i, self)
            for i, a in enumerate(parsed.get("attachments") or [])
        ]
        self.headers = {}
        for name, value in parsed.get("headers") or []:
            self.headers.setdefault(name, value)  # the first of repeated headers, as docassemble
        self.message_id = rec.message_id
        self.size = rec.size
        self.authentication = json.loads(rec.authentication)
        self.defects = list(parsed.get("defects") or [])

    @property
    def raw(self) -> bytes:
        """The message exactly as received."""
        if self._raw is None:
            _, loop = self._bridge()
            refuse_on_loop(loop, "DAEmail.raw (read by an attachment's data(), slurp() and path())",
                           "await email.raw_async()` first; then those read the bytes it fetched")
            self._raw = run_on_loop(loop, self.raw_async(), 30)
        return self._raw

    async def raw_async(self) -> bytes:
        if self._raw is None:
            emails, _ = self._bridge()
            if self._record is None:
                raise ActionError(f"DAEmail {self._id} was not loaded from the store")
            self._raw = await emails.raw(self._record)
        return self._raw

    def _bridge(self) -> tuple[Emails, asyncio.AbstractEventLoop]:
        ctx = CURRENT.get()
        emails = self._emails or (ctx.runtime.emails if ctx is not None else None)
        loop = self._loop or (ctx.loop if ctx is not None else None)
        if emails is None or loop is None:
            raise ActionError("reading a DAEmail's raw bytes needs a running mailgate")
        return emails, loop


codec.register_reference("email", DAEmail, DAEmail)
