"""Per-session addresses and mailboxes: ``interview_email()`` and ``get_emails()``.

Addresses are derived, not looked up: the local part is an HMAC of (session, key, index) under a
secret kept in the store, written in an unambiguous lower-case alphabet. The same key and index
always give the same address, nobody without the secret can guess one, and creating it again is
idempotent. An address accepts mail while its mailbox row exists (deleted with its session) and
has not expired.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailgate.config import MailConfig
from mailgate.core.context import ActionContext
from mailgate.core.daemail import DAEmail
from mailgate.core.emails import Emails
from mailgate.store.base import MailboxRecord, NewMailbox, SessionRecord, Store

ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols: no l/1, o/0 to confuse
MAX_LOCAL_PART = 51  # 256 HMAC bits / 5 bits per symbol

# The operator mailbox (RFC 5321 4.5.1): mail to postmaster@ every domain and to the bare <postmaster>.
# Its e-mails are stored under this local part with no session (an empty session id): no generated
# local part can be "postmaster" (the alphabet has no "o"), and no session has an empty id.
POSTMASTER = "postmaster"
POSTMASTER_MAILBOX = MailboxRecord(POSTMASTER, "", "", "", "{}", 0.0, None)


def is_postmaster(mailbox: MailboxRecord) -> bool:
    """Whether ``mailbox`` is the session-less operator mailbox."""
    return mailbox.local_part == POSTMASTER and not mailbox.session_id


def normalise_domain(domain: str) -> str | None:
    """Lower-case ASCII (IDNA) form of a domain, or None if it is not a valid one."""
    domain = domain.strip().rstrip(".")
    if not domain or domain.startswith("["):
        return None
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def is_bare_postmaster(address: str) -> bool:
    """``<postmaster>`` with no domain, in any case: RFC 5321 4.5.1 has every server accept it."""
    return address.strip().strip("<>").lower() == POSTMASTER


def split_address(address: str) -> tuple[str, str] | None:
    """(local part lower-cased, normalised domain) of an envelope address, or None."""
    address = address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return None
    norm = normalise_domain(domain)
    if norm is None:
        return None
    return local.lower(), norm


class Addresses:
    """Derives and recognises per-session addresses."""

    def __init__(self, config: MailConfig, secret: bytes) -> None:
        self._secret = secret
        self.length = min(config.local_part_length, MAX_LOCAL_PART)
        self.domains = [d for d in (normalise_domain(x) for x in config.domains) if d]
        self.domain = config.domains[0].strip().rstrip(".").lower()
        self.expiry_days = config.mailbox_expiry_days

    def local_part(self, session_id: str, key: str, index: str) -> str:
        digest = hmac.new(self._secret, f"{session_id}\0{key}\0{index}".encode(), hashlib.sha256).digest()
        n = int.from_bytes(digest, "big")
        chars = []
        for _ in range(self.length):
            chars.append(ALPHABET[n & 31])
            n >>= 5
        return "".join(chars)

    def address(self, local_part: str) -> str:
        return f"{local_part}@{self.domain}"

    def is_ours(self, domain: str) -> bool:
        return domain in self.domains


@dataclass(frozen=True)
class MailboxView:
    """A mailbox with its full address and its session (None if the session is gone), for the edges."""

    address: str
    record: MailboxRecord
    session: SessionRecord | None


@dataclass(frozen=True)
class Mailbox:
    """What ``get_emails()`` returns for each address: docassemble's ``address``, ``key``, ``index``, ``emails``."""

    address: str
    key: str | None
    index: str | None
    emails: builtins.list[DAEmail]
    record: MailboxRecord


class Mailboxes:
    """The sessions' addresses and their mailboxes."""

    def __init__(self, config: MailConfig, store: Store, emails: Emails, clock: Callable[[], float]) -> None:
        self._config = config
        self._store = store
        self._emails = emails
        self._clock = clock
        self.addresses: Addresses

    async def open(self) -> None:
        """Read the address secret from the store (made on first use)."""
        secret = await self._store.setting("address_secret", secrets.token_hex(32))
        self.addresses = Addresses(self._config, bytes.fromhex(secret))

    def interview_email(self, ctx: ActionContext, key: str | None, index: Any) -> str:
        """The session's address for (key, index); the mailbox is created (or its expiry renewed) with the action."""
        key_s, index_s = "" if key is None else str(key), "" if index is None else str(index)
        local = self.addresses.local_part(ctx.session_id, key_s, index_s)
        if not any(m.local_part == local for m in ctx.new_mailboxes):
            days = self.addresses.expiry_days
            expires = self._clock() + days * 86400 if days else None
            ctx.new_mailboxes.append(NewMailbox(local, ctx.session_id, key_s, index_s, ctx.user.to_json(), expires))
        return self.addresses.address(local)

    async def get_mailboxes(self, session_id: str, key: str | None, index: Any,
                            loop: asyncio.AbstractEventLoop) -> builtins.list[Mailbox]:
        """The session's mailboxes (optionally one key/index) with their e-mails, oldest first."""
        boxes = await self._store.list_mailboxes(session_id=session_id, limit=10_000)
        out = []
        for box in boxes:
            if (key is not None and box.key != str(key)) or (index is not None and box.index != str(index)):
                continue
            records = await self._emails.list(local_part=box.local_part, limit=10_000)
            emails = [DAEmail(r.id, r, self._emails, loop, await self._emails.stored_bodies(r)) for r in records]
            out.append(Mailbox(self.addresses.address(box.local_part), box.key or None, box.index or None, emails, box))
        return out

    async def list(self, *, session_id: str | None = None, limit: int = 100) -> builtins.list[MailboxView]:
        """Mailboxes (of one session, or all) with their addresses and sessions, for the edges."""
        boxes = await self._store.list_mailboxes(session_id=session_id, limit=limit)
        sessions = await self._store.get_sessions([b.session_id for b in boxes])
        return [MailboxView(self.addresses.address(b.local_part), b, sessions.get(b.session_id)) for b in boxes]
