"""DAEmail: one received message as seen by interview code, with docassemble's attribute names.

Stored in answers (and passed as ``action_argument('email')``) by id; the runtime fills in the
fields from the store when it loads answers or arguments. The raw bytes and attachment contents are
read on demand (``email.raw``, ``email.attachment[0].data()``), since they can be large.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
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
    body_text: str | None
    body_html: str | None
    attachment: list[EmailAttachment]
    headers: dict[str, str]
    message_id: str | None
    size: int
    authentication: dict[str, Any]
    defects: list[str]
    address: str | None
    envelope: dict[str, Any]

    def __init__(self, email_id: str, record: EmailRecord | None = None, emails: Emails | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._id = email_id
        self._emails = emails
        self._loop = loop
        self._raw: bytes | None = None
        self._record: EmailRecord | None = None
        if record is not None:
            self._fill(record)

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

    def _fill(self, rec: EmailRecord) -> None:
        self._record = rec
        parsed = json.loads(rec.parsed)
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
        self.body_text = parsed.get("body_text")
        self.body_html = parsed.get("body_html")
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
            refuse_on_loop(loop, "DAEmail.raw", "await email.raw_async()")
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
