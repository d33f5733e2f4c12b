"""Test RSA keys made in pure Python, so that no openssl or cryptography package is needed."""

from __future__ import annotations

import base64
import random


def _is_probable_prime(n: int, rng: random.Random) -> bool:
    if n % 2 == 0:
        return n == 2
    for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, rng: random.Random) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if (n - 1) % 65537 and _is_probable_prime(n, rng):
            return n


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_int(v: int) -> bytes:
    raw = v.to_bytes(v.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_len(len(raw)) + raw


def _der_seq(*items: bytes) -> bytes:
    body = b"".join(items)
    return b"\x30" + _der_len(len(body)) + body


class RsaKey:
    """A 1024-bit RSA key (dkimpy's minimum) as PKCS#1 PEM plus its DKIM DNS record."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        e = 65537
        p, q = _prime(512, rng), _prime(512, rng)
        n, d = p * q, pow(e, -1, (p - 1) * (q - 1))
        der = _der_seq(
            *(_der_int(v) for v in (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)))
        )
        b64 = base64.encodebytes(der).decode()
        self.pem = f"-----BEGIN RSA PRIVATE KEY-----\n{b64}-----END RSA PRIVATE KEY-----\n".encode()
        public = base64.b64encode(_der_seq(_der_int(n), _der_int(e))).decode()
        self.record = f"v=DKIM1; k=rsa; p={public}"
