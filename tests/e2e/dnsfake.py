"""Test helpers for the e2e SMTP tests: a fake DNS server in a thread, and a DKIM key made in Python.

The daemon runs as a subprocess, so its DKIM/SPF/DMARC lookups must go over the wire: point
``[smtp] dns_servers`` at ``127.0.0.1:<FakeDns.port>``. Names not published answer NXDOMAIN at once
(no timeouts, no real DNS). The RSA key is made in pure Python (no openssl, no cryptography).
"""

from __future__ import annotations

import base64
import random
import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeDns:
    """A UDP DNS server on 127.0.0.1 answering from ``records`` {(TYPE, name): [text, ...]}."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, rdtype: str, name: str, text: str) -> None:
        with self._lock:
            self.records.setdefault((rdtype.upper(), name.lower().rstrip(".")), []).append(text)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                reply = self._answer(data)
            except Exception:  # noqa: BLE001 -- a garbled query gets no answer, like a real server
                continue
            try:
                self._sock.sendto(reply, addr)
            except OSError:
                continue

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((rdtype, name))
            found = list(self.records.get((rdtype, name), []))
            exists = any(n == name for _, n in self.records)
        response = dns.message.make_response(query)
        if found:
            if rdtype == "TXT":  # split into <= 255-byte character-strings, as real zones do
                texts = [" ".join(f'"{t[i:i + 255]}"' for i in range(0, len(t), 255)) for t in found]
            else:
                texts = found
            response.answer.append(dns.rrset.from_text_list(name + ".", 60, "IN", rdtype, texts))
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


# --- an RSA key made here, in pure Python (copied from tests/unit/test_mailauth.py) ----------


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
