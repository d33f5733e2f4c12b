"""Stored e-mails as the edges and :class:`~mailgate.core.daemail.DAEmail` read them.

One place reads a message's raw bytes and parses its attachments again on demand (the store keeps
what was parsed at delivery, not the attachment contents, which can be large), and reads the bodies
that were stored as their place in the raw message rather than as text (those longer than
`mailgate.core.inbound.INLINE_BODY`: ``body_text_at`` / ``body_html_at`` in the stored JSON). E-mails
stored before that carry their bodies as text, and read as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from mailgate.errors import MailgateError, NotFound
from mailgate.mail.parse import Attachment, BodyPart, parse_message, read_body
from mailgate.store.base import EmailRecord, InboundRecord, Store

_DECODE_IN_THREAD = 1 << 20  # bodies this big are decoded off the event loop

Bodies = tuple[str | None, str | None]  # (body_text, body_html)


def attachment_of(raw: bytes, number: int, email_id: str) -> Attachment:
    """Attachment ``number`` (from 0) of the raw message ``raw``, decoded; NotFound if it has none."""
    attachments = parse_message(raw).attachments
    if not 0 <= number < len(attachments):
        raise NotFound(f"e-mail {email_id} has {len(attachments)} attachment(s); there is no number {number}")
    return attachments[number]


def body_parts(parsed: dict[str, Any]) -> dict[str, BodyPart]:
    """The bodies of the stored JSON ``parsed`` that are to be read from the raw message, by name."""
    out = {}
    for name in ("body_text", "body_html"):
        if parsed.get(f"{name}_at") is not None:
            out[name] = BodyPart.from_json(parsed[f"{name}_at"])
    return out


def _read_bodies(raw: bytes, parts: dict[str, BodyPart], parsed: dict[str, Any]) -> Bodies:
    text, html = (read_body(raw, parts[n]) if n in parts else parsed.get(n) for n in ("body_text", "body_html"))
    return text, html


class Emails:
    """Reads e-mails, their raw bytes and attachments from the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, email_id: str) -> EmailRecord:
        found = await self._store.get_emails([email_id])
        if email_id not in found:
            raise NotFound(f"no e-mail {email_id!r}; list e-mails with: mailgate emails list")
        return found[email_id]

    async def get_many(self, email_ids: list[str]) -> dict[str, EmailRecord]:
        return await self._store.get_emails(email_ids)

    async def list(self, *, session_id: str | None = None, local_part: str | None = None,
                   limit: int = 100) -> list[EmailRecord]:
        return await self._store.list_emails(session_id=session_id, local_part=local_part, limit=limit)

    async def queued(self, limit: int = 100) -> Sequence[InboundRecord]:
        """Messages answered 250 and not processed yet (the inbound queue), oldest first."""
        return await self._store.list_inbound(limit)

    async def queue_depth(self) -> int:
        return await self._store.count_inbound()

    async def raw(self, rec: EmailRecord) -> bytes:
        """The message exactly as received; NotFound once its session (and so its bytes) is gone."""
        raw = await self._store.get_raw(rec.sha256)
        if raw is None:
            raise NotFound(f"the raw bytes of e-mail {rec.id} are gone (its session was deleted)")
        return raw

    async def bodies(self, rec: EmailRecord, parsed: dict[str, Any] | None = None) -> Bodies:
        """``(body_text, body_html)`` of ``rec`` (``parsed``: its JSON, if read already); a body stored
        as its place in the raw message is read from there (NotFound once the raw bytes are gone)."""
        if parsed is None:
            parsed = json.loads(rec.parsed)
        try:
            parts = body_parts(parsed)
        except ValueError as exc:
            raise MailgateError(f"e-mail {rec.id}: its stored record is damaged ({exc})") from None
        if not parts:  # the common case, and every e-mail stored before bodies could be left in the message
            return parsed.get("body_text"), parsed.get("body_html")
        raw = await self.raw(rec)
        try:
            if sum(p.end - p.start for p in parts.values()) >= _DECODE_IN_THREAD:
                return await asyncio.to_thread(_read_bodies, raw, parts, parsed)
            return _read_bodies(raw, parts, parsed)
        except ValueError as exc:
            raise MailgateError(f"e-mail {rec.id}: its stored record does not fit its raw message ({exc})") from None

    async def stored_bodies(self, rec: EmailRecord) -> Bodies | None:
        """`bodies` of ``rec`` if one of them is read from the raw message, else None (the stored JSON
        has them: nothing is read)."""
        if '"body_text_at"' not in rec.parsed and '"body_html_at"' not in rec.parsed:  # no JSON parse needed
            return None
        return await self.bodies(rec)

    async def delete(self, email_id: str) -> None:
        """Delete one stored e-mail (``mailgate emails delete``); its raw bytes go with the last e-mail sharing them."""
        if not await self._store.delete_email(email_id):
            raise NotFound(f"no e-mail {email_id!r}; list e-mails with: mailgate emails list")

    async def attachment(self, rec: EmailRecord, number: int) -> Attachment:
        return attachment_of(await self.raw(rec), number, rec.id)
