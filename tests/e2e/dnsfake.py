"""Test helpers for the e2e SMTP tests: a fake DNS server in a thread, and a DKIM key made in Python.

The daemon runs as a subprocess, so its DKIM/SPF/DMARC lookups must go over the wire: point
``[smtp] dns_servers`` at ``127.0.0.1:<FakeDns.port>``. Names not published answer NXDOMAIN at once
(no timeouts, no real DNS). The RSA key is made in pure Python (no openssl, no cryptography).
"""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests.keys import RsaKey  # noqa: F401 - re-exported for the e2e tests


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
        self.silent = threading.Event()  # while set, queries are recorded and not answered (a dead server)
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
            if self.silent.is_set():
                with self._lock:
                    self.queries.append(("?", "(not answered)"))
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


