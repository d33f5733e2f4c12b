"""Signed, expiring tokens for browsers (WebSocket) and action URLs (``interview_url_action``).

A token is ``base64url(JSON payload) + "." + base64url(HMAC-SHA256)``; the payload carries its kind,
its expiry and what it grants. Verification is constant-time and checks the kind, so a URL token
cannot be used as a browser token or the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from mailgate.errors import MailgateError


class TokenError(MailgateError):
    """A token is malformed, forged, expired or of the wrong kind."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise MailgateError("the signing secret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock

    def sign(self, kind: str, ttl: float, **claims: Any) -> str:
        payload = {"k": kind, "exp": round(self._clock() + ttl, 3), **claims}
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def verify(self, token: str, kind: str) -> dict[str, Any]:
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac:
            raise TokenError("malformed token")
        try:
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise TokenError("malformed token") from None
        if not hmac.compare_digest(given, self._mac(body)):
            raise TokenError("invalid token signature")
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            raise TokenError("malformed token") from None
        if not isinstance(payload, dict) or payload.get("k") != kind:
            raise TokenError(f"not a {kind} token")
        if float(payload.get("exp", 0)) < self._clock():
            raise TokenError("token expired; ask the application for a new one")
        return payload

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).digest()
