"""Stored e-mails as the edges and :class:`~mailgate.core.daemail.DAEmail` read them.

One place reads a message's raw bytes and parses its attachments again on demand (the store keeps
what was parsed at delivery, not the attachment contents, which can be large).
"""

from __future__ import annotations

from collections.abc import Sequence

from mailgate.errors import NotFound
from mailgate.mail.parse import Attachment, parse_message
from mailgate.store.base import EmailRecord, InboundRecord, Store


def attachment_of(raw: bytes, number: int, email_id: str) -> Attachment:
    """Attachment ``number`` (from 0) of the raw message ``raw``, decoded; NotFound if it has none."""
    attachments = parse_message(raw).attachments
    if not 0 <= number < len(attachments):
        raise NotFound(f"e-mail {email_id} has {len(attachments)} attachment(s); there is no number {number}")
    return attachments[number]


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

    async def delete(self, email_id: str) -> None:
        """Delete one stored e-mail (``mailgate emails delete``); its raw bytes go with the last e-mail sharing them."""
        if not await self._store.delete_email(email_id):
            raise NotFound(f"no e-mail {email_id!r}; list e-mails with: mailgate emails list")

    async def attachment(self, rec: EmailRecord, number: int) -> Attachment:
        return attachment_of(await self.raw(rec), number, rec.id)
