"""The real daemon as a subprocess against hostile clients: a thousand idle connections under a low
open-files limit, STARTTLS within TLS and failed handshakes, control characters aimed at the log."""

from __future__ import annotations

import resource
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dnsfake import FakeDns
from tests.e2e.test_smtp_e2e import MailDaemon, RawSmtp
from tests.helpers import (
    kill_process,
    mailgate_cmd,
    stop_process,
    subprocess_env,
    wait_for,
    wait_for_log,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDns]:
    server = FakeDns()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed, so no certificate for STARTTLS can be made")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "c.pem", folder / "k.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns: FakeDns, tls_files: tuple[Path, Path]) -> Iterator[MailDaemon]:
    d = MailDaemon(tmp_path_factory.mktemp("smtp-hostile"), dns, tls_files)
    d.serve()
    yield d
    d.close()


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the certificate names localhost; we connect to 127.0.0.1
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT  # a bare `openssl req -x509` certificate
    return context


def test_starttls_within_tls_is_503_and_a_failed_handshake_one_info_line(
        daemon: MailDaemon, tls_files: tuple[Path, Path]) -> None:
    d = daemon
    conn = RawSmtp(d.port)
    try:
        assert conn.reply()[0] == 220 and conn.cmd(b"EHLO client.test")[0] == 250
        assert conn.cmd(b"STARTTLS")[0] == 220
        tls = client_context(tls_files[0]).wrap_socket(conn.sock, server_hostname="localhost")
        tls_file = tls.makefile("rb")

        def cmd(line: bytes) -> bytes:
            tls.sendall(line + b"\r\n")
            reply = tls_file.readline()
            while reply[3:4] == b"-":
                reply = tls_file.readline()
            return reply

        assert cmd(b"EHLO client.test").startswith(b"250 ")
        assert cmd(b"STARTTLS") == b"503 5.5.1 TLS already active\r\n"  # RFC 3207 4.2
        assert cmd(b"NOOP").startswith(b"250")  # and the session goes on
        assert cmd(b"QUIT").startswith(b"221")
        tls_file.close()
        tls.close()
    finally:
        conn.close()

    # a client that does not trust the certificate aborts the handshake: one info line, no reply claimed
    conn = RawSmtp(d.port)
    try:
        assert conn.reply()[0] == 220 and conn.cmd(b"EHLO client.test")[0] == 250
        assert conn.cmd(b"STARTTLS")[0] == 220
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(conn.sock, server_hostname="localhost")
    finally:
        conn.close()
    wait_for(lambda: "TLS handshake failed" in d.log(), 10, "the handshake failure's log line")
    log = d.log()
    assert log.count("TLS handshake failed") == 1
    assert "Traceback" not in log and "answered 451" not in log and "_abort()" not in log, log[-3000:]
    d.assert_alive()


def test_control_characters_from_a_client_never_reach_the_log(daemon: MailDaemon) -> None:
    d = daemon
    conn = RawSmtp(d.port)
    try:
        assert conn.reply()[0] == 220 and conn.cmd(b"EHLO client.test")[0] == 250
        assert conn.cmd(b"MAIL FROM:<sender@elsewhere.test>")[0] == 250
        assert conn.cmd(b'RCPT TO:<"\x1b[2J\x1b[31mevil\rINFO forged"@mail.test>')[0] in (501, 550)
        assert conn.cmd(b"X\x1b[5mBLINK")[0] == 500  # aiosmtpd logs unknown commands itself
    finally:
        conn.close()
    wait_for(lambda: "BLINK" in d.log() and "evil" in d.log(), 10, "the refusals' log lines")
    raw = d.logs[-1].read_bytes()
    assert b"\x1b" not in raw and b"\r" not in raw
    assert rb"\x1b[2J\x1b[31mevil\x0dINFO forged" in raw and rb"X\x1b[5MBLINK" in raw  # upper-cased by aiosmtpd


# --- a thousand idle connections under a low open-files limit (finding 1) ---------------------

OPEN_FILES = 512
CLIENT_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 61)]  # 59 loopback sources, 17 connections each at most


def banner_within(port: int, source: str, seconds: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=seconds, source_address=(source, 0)) as sock:
        return sock.recv(200)


@pytest.mark.slow
def test_a_thousand_idle_connections_under_a_low_open_files_limit(tmp_path: Path, dns: FakeDns) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 4096, hard))
    try:
        run_thousand_connections(tmp_path, dns)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_thousand_connections(tmp_path: Path, dns: FakeDns) -> None:
    d = MailDaemon(tmp_path, dns)  # per-client cap 20: every source stays within it
    with d.config.open("a") as config:
        config.write('[web]\nport = 0\napi_key = "k"\n')
    d.config.write_text(d.config.read_text().replace('roles = ["worker", "smtp"]', 'roles = ["worker", "smtp", "web"]'))
    log = tmp_path / "daemon.log"

    def low_limit() -> None:  # soft below hard: the daemon raises it to the hard limit itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES // 2, OPEN_FILES))

    with log.open("wb") as out:
        proc = subprocess.Popen(mailgate_cmd("serve"), env=subprocess_env(d.config), stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=low_limit)
    conns: list[socket.socket] = []
    try:
        port = int(wait_for_log(proc, log, r"smtp listening on 127\.0\.0\.1:(\d+)", 60, "the SMTP port").group(1))
        web = int(wait_for_log(proc, log, r"web listening on 127\.0\.0\.1:(\d+)", 60, "the web port").group(1))
        cap = int(wait_for_log(proc, log, r"at most (\d+) connections", 10, "the connection cap").group(1))
        assert cap == 348, "the cap is not below the raised limit (512) by a quarter and one accept burst"
        assert f"Max open files            {OPEN_FILES}" in Path(f"/proc/{proc.pid}/limits").read_text()
        before = log.stat().st_size

        started = time.monotonic()
        for i in range(1000):
            sock = socket.socket()
            conns.append(sock)
            sock.settimeout(10)
            sock.bind((CLIENT_ADDRESSES[i % len(CLIENT_ADDRESSES)], 0))
            sock.connect(("127.0.0.1", port))
        opened = time.monotonic() - started
        assert opened < 30, opened

        # the first `cap` connections are served, the rest told 421 and closed
        replies = []
        for sock in conns:
            try:
                replies.append(sock.recv(200)[:9])
            except OSError:
                replies.append(b"")
        served = sum(r.startswith(b"220 ") for r in replies)
        assert served + sum(r == b"421 4.7.0" for r in replies) == 1000, set(replies)
        assert cap - 5 <= served <= cap

        # with those connections held, new clients get a banner or a 421 within a second, and the
        # web side still answers
        for source in ("127.0.0.61", "127.0.0.62", "127.0.0.63"):
            first = time.monotonic()
            reply = banner_within(port, source, 1.0)
            assert reply.startswith((b"220 ", b"421 4.7.0")), reply
            assert time.monotonic() - first < 1.0
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/healthz", timeout=2) as res:
            assert res.status == 200
        assert proc.poll() is None
        text = log.read_text(errors="replace")
        growth = log.stat().st_size - before
        assert growth < 1000 * 300, growth  # a line per refusal, no flood
        assert "out of system resource" not in text and "Traceback" not in text
        assert text.count("cannot accept connections") <= 2  # a burst may run out briefly: one line per 10 s
    finally:
        for sock in conns:
            sock.close()
        try:
            assert stop_process(proc) == 0
        finally:
            kill_process(proc)
            print(log.read_text(errors="replace")[-5000:])
