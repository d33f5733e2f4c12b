"""``stash_data()`` / ``retrieve_stashed_data()``: data handed from one session to a prospective one.

docassemble's page: session A stashes some answers and gets two tokens, ``stash_key`` and
``secret``, to put in the URL of another interview; session B, started from that URL, finds them in
``url_args`` and retrieves the data, optionally deleting it, before it expires. As there, knowledge of
the store is not knowledge of the data: each stash is sealed with AES-256-GCM under a key of its own
that only the ``secret`` carries (the store keeps the ciphertext; the stash key is the associated data,
so a sealed blob cannot be moved to another key). A wrong secret, an unknown key and an expired stash
all read as None, and neither deletes nor refreshes anything.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import secrets
from collections.abc import Callable
from typing import Any

from mailgate.core import answers as codec
from mailgate.errors import ActionError
from mailgate.store.base import StashRecord, Store
from mailgate.store.sealing import seal, unseal

DEFAULT_EXPIRE = 90 * 86400.0  # docassemble's default: 7,776,000 seconds


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _token(make: Callable[[], str]) -> str:
    """A token from ``make`` that does not begin with ``-``: a command line (``mailgate stash get KEY
    SECRET``) would take it for an option. Drawn again in the 1 case of 64 where it does."""
    while True:
        token = make()
        if not token.startswith("-"):
            return token


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ActionError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


class Stashes:
    """Sealed, expiring stashes in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def stash(self, data: Any, expire: float | None = None) -> dict[str, str]:
        """Seal and store ``data`` for ``expire`` seconds (default 90 days); ``{"stash_key", "secret"}``."""
        ttl = DEFAULT_EXPIRE if expire is None else _seconds(expire, "stash_data(expire=...)")
        text = codec.encode_value(data, "stash_data() data")
        secret, stash_key = _token(lambda: _b64(os.urandom(32))), _token(lambda: secrets.token_urlsafe(18))
        sealed = seal(_unb64(secret), text.encode(), stash_key.encode())
        now = self._store.now()
        await self._store.put_stash(StashRecord(stash_key, _b64(sealed), now, now + ttl, ttl))
        return {"stash_key": stash_key, "secret": secret}

    async def retrieve(self, stash_key: str, secret: str, delete: bool = False, refresh: bool | float = False) -> Any:
        """The stashed data, or None if there is none under this key and secret (or it expired).

        ``delete``: remove it (only one of several concurrent readers gets it); ``refresh``: True
        renews its expiry by the seconds it was stashed for, a number sets it that many seconds from now.
        """
        return (await self.lookup(stash_key, secret, delete, refresh))[1]

    async def lookup(self, stash_key: str, secret: str, delete: bool = False,
                     refresh: bool | float = False) -> tuple[bool, Any]:
        """``retrieve()`` that tells a stashed None from no stash: (found, data)."""
        if refresh is not False and refresh is not True:
            _seconds(refresh, "retrieve_stashed_data(refresh=...)")
        if not isinstance(stash_key, str) or not isinstance(secret, str) or "\x00" in stash_key:
            return False, None  # (no key holds a NUL, which PostgreSQL's text cannot even be asked about)
        try:
            key = _unb64(secret)
        except (binascii.Error, ValueError):
            return False, None
        if len(key) != 32:
            return False, None
        now = self._store.now()
        rec = await self._store.take_stash(stash_key, now)
        data = self._open(rec, key) if rec is not None else None
        if data is None:
            return False, None  # nothing is changed for a caller without the secret
        if delete:
            if await self._store.take_stash(stash_key, now, delete=True) is None:
                return False, None  # another reader took it first
        elif refresh is not False:
            ttl = rec.ttl if refresh is True else float(refresh)  # type: ignore[union-attr]
            await self._store.take_stash(stash_key, now, expires_at=now + ttl)
        return True, codec.decode_value(data)

    @staticmethod
    def _open(rec: StashRecord, key: bytes) -> str | None:
        try:
            plain = unseal(key, _unb64(rec.data), rec.key.encode())
        except (binascii.Error, ValueError):
            return None
        return None if plain is None else plain.decode()
