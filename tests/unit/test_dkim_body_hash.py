"""`mailgate.mail.auth._body_hash` (the DKIM body hash read block by block) against dkimpy's own
canonicalization of the whole body, and signatures verified through it against dkimpy alone."""

from __future__ import annotations

import hashlib
import random

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

from mailgate.mail import auth
from mailgate.mail.auth import verify_dkim
from tests.keys import RsaKey

_PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"  \t ", b"a", b"word", b"=", b"\r\n\r\n", b" \r\n", b"\t\n", b"\x00", b"\xff"]


def _dkimpy_hash(body: bytes, relaxed: bool, limit: int | None) -> bytes:
    canon = (Relaxed if relaxed else Simple).canonicalize_body(auth._LINE_END.sub(b"\r\n", body))
    return hashlib.sha256(canon if limit is None else canon[:limit]).digest()


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_block_by_block_as_dkimpy_on_the_whole(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_BODY_BLOCK", block)
    rng = random.Random(block)
    bodies = [b"", b"\r\n", b"\r\n" * 5, b" \r\n\t\r\n", b"x", b"x\r\n\r\n", b"\r\n" * (70000 if block > 64 else 300) + b"x" + b"\r\n" * 3]
    bodies += [b"".join(rng.choice(_PIECES) for _ in range(rng.randrange(60))) for _ in range(400)]
    for body in bodies:
        for relaxed in (False, True):
            for limit in (None, 0, 1, 5, 1000):
                prefix = b"H: v\r\n\r\n"
                got = auth._body_hash(prefix + body, len(prefix), relaxed, hashlib.sha256, limit)
                assert got == _dkimpy_hash(body, relaxed, limit), (body, relaxed, limit)


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey(3)


@pytest.mark.parametrize("canon", [b"simple/simple", b"relaxed/relaxed", b"relaxed/simple"])
@pytest.mark.parametrize("length", [False, True])
def test_signatures_verify_as_with_dkimpy_alone(key: RsaKey, canon: bytes, length: bool) -> None:
    rng = random.Random(5)
    for n in range(40):
        body = b"".join(rng.choice(_PIECES) for _ in range(rng.randrange(200)))
        message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\n" + body
        signed = dkim.sign(message, b"sel", b"example.com", key.pem, canonicalize=tuple(canon.split(b"/")),
                           length=length) + message
        tampered = signed + (b"more\r\n" if n % 2 else b" \r\n\r\n")
        for raw in (signed, tampered):
            expected = dkim.verify(raw, dnsfunc=lambda _name, timeout=5: key.record.encode())
            results, missing = verify_dkim(raw, {"sel._domainkey.example.com": key.record.encode()})
            assert not missing
            assert (results[0].result == "pass") == expected, (canon, length, raw)
