"""E-mail to a session, end to end: the real daemon as a subprocess, real SMTP clients, the real CLI.

One daemon serves the whole module (tests 1-6 use their own sessions, so they do not see each
other's mail); the crash test starts its own daemon, kills it with SIGKILL and starts it again.
The daemon's DKIM/SPF/DMARC lookups go to a fake DNS server in this process (``[smtp] dns_servers``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.e2e.dnsfake import FakeDns, RsaKey
from tests.helpers import (
    mailgate_cmd,
    start_mailgate,
    stop_process,
    subprocess_env,
    wait_for,
    wait_for_log,
)

pytestmark = pytest.mark.e2e

DOMAIN = "mail.test"
MAX_MESSAGE_SIZE = 1_048_576
MAX_RECIPIENTS = 5
MAX_UNKNOWN = 10  # [smtp] max_unknown_recipients, the default
MAX_CONNECTIONS = 20  # [smtp] max_connections_per_client, the default
SENDER = "sender@elsewhere.test"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "eml"
CORPUS_FOLDERS = ("malformed", "rfc", "thirdparty")
LISTENING = r"smtp listening on 127\.0\.0\.1:(\d+) \(STARTTLS (offered|off)\)"


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of strings are the same in TOML


class MailDaemon:
    """A config file, a SQLite file, and the daemon processes started on them (log to a file)."""

    def __init__(self, tmp_path: Path, dns: FakeDns, tls: tuple[Path, Path] | None = None, **smtp: Any) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "mailgate.sqlite3"
        smtp_table: dict[str, Any] = {
            "port": 0, "hostname": "mx.test", "max_message_size": MAX_MESSAGE_SIZE,
            "max_recipients": MAX_RECIPIENTS, "max_unknown_recipients": MAX_UNKNOWN,
            "max_connections_per_client": MAX_CONNECTIONS, "dns_servers": [dns.address], "dns_timeout": 2.0,
            "queue_lease": 3.0,  # what the killed daemon had claimed is taken up again soon after the restart
            **smtp,
        }
        if tls is not None:
            smtp_table["tls_cert"], smtp_table["tls_key"] = str(tls[0]), str(tls[1])
        tables: dict[str, dict[str, Any]] = {
            "store": {"path": str(self.db)},
            "interviews": {"modules": ["mailgate.demo.background", "mailgate.demo.email"]},
            "daemon": {"roles": ["worker", "smtp"], "grace_period": 3},
            "tasks": {"workers": 4, "poll_interval": 0.05},
            "mail": {"domains": [DOMAIN, "alt.test"]},
            "smtp": smtp_table,
        }
        lines = []
        for name, table in tables.items():
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        self.config = tmp_path / "mailgate.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.env = subprocess_env(self.config)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.port = 0
        self.starttls = False

    # --- the daemon ---------------------------------------------------------------------------

    def serve(self) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"daemon-{len(self.procs)}.log"
        proc = start_mailgate("serve", env=self.env, log=log)
        self.procs.append(proc)
        self.logs.append(log)
        found = wait_for_log(proc, log, LISTENING, 60, "the daemon's 'smtp listening' log line")
        self.port = int(found.group(1))
        self.starttls = found.group(2) == "offered"
        return proc

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the daemon died ({self.proc.returncode}):\n{self.log()}"

    def close(self) -> None:
        for proc in self.procs:
            stop_process(proc, 20)
        for log in self.logs:  # shown by pytest when a test failed
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')}")

    # --- the CLI ------------------------------------------------------------------------------

    def cli_bytes(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run(mailgate_cmd(*args), capture_output=True, env=self.env, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"mailgate {' '.join(args)} exited {res.returncode}: {res.stderr.decode(errors='replace')}")
        return res

    def cli(self, *args: str, check: bool = True) -> str:
        return self.cli_bytes(*args, check=check).stdout.decode()

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def new_address(self, interview: str = "email-to-case-simple") -> tuple[str, str]:
        sid = self.cli("sessions", "new", interview).strip()
        address = self.cli("sessions", "run", sid, "start").strip()
        local, _, domain = address.partition("@")
        assert domain == DOMAIN and len(local) == 16, address
        return sid, address

    def processed(self, timeout: float = 60) -> None:
        """Wait until nothing is queued: a 250 comes once a message is queued, its e-mails right after."""
        wait_for(lambda: self.cli_json("emails", "list", "--queued") == [], timeout, "the inbound queue to be processed")

    def emails(self, sid: str) -> list[dict[str, Any]]:
        self.processed()
        rows: list[dict[str, Any]] = self.cli_json("emails", "list", "--session", sid, "--limit", "10000")
        assert all(row["state"] == "stored" for row in rows), rows
        return rows

    def raw(self, email_id: str) -> bytes:
        return self.cli_bytes("emails", "show", email_id, "--raw").stdout

    # --- SMTP ---------------------------------------------------------------------------------

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30)

    def send(self, rcpts: list[str], raw: bytes, mail_from: str = SENDER,
             client: smtplib.SMTP | None = None) -> tuple[int, bytes]:
        """MAIL, RCPT (each must get 250), DATA: the DATA reply. smtplib dot-stuffs ``raw``."""
        if client is None:
            with self.smtp() as c:
                return self.send(rcpts, raw, mail_from, c)
        client.ehlo_or_helo_if_needed()
        code, text = client.mail(mail_from)
        assert code == 250, (code, text)
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250 and text.startswith(b"2.1.5"), (rcpt, code, text)
        return client.data(raw)


def message(to: str, subject: str, body: bytes = b"Hello from the e2e test.\r\n", *,
            sender: str = "Sender <sender@elsewhere.test>", extra: bytes = b"",
            message_id: str | None = None) -> bytes:
    """A CRLF message with a unique Message-ID (unless given), as exact bytes."""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id or uuid.uuid4().hex + '@elsewhere.test'}>\r\n"
        "Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    ).encode() + extra + b"\r\n" + body


def crlf(data: bytes) -> bytes:
    """What an SMTP client transmits for ``data``: bare LFs become CRLF, and it ends with CRLF."""
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


# Many CLI calls in one Python process: ``mailgate.edges.cli.main.main(argv)`` once per argv, each with its own
# stdout (bytes, as a pipe would get them), stderr and exit code. A process per call costs ~0.5 s of
# start-up on a small machine, which for a corpus of e-mails times two calls is most of a minute.
BATCH_CLI = r"""
import base64, io, json, sys, traceback
from mailgate.edges.cli.main import main
results = []
real_out, real_err = sys.stdout, sys.stderr
for argv in json.load(sys.stdin):
    out, err = io.BytesIO(), io.StringIO()
    wrapper = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    sys.stdout, sys.stderr = wrapper, err
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        rc, _ = 1, err.write(traceback.format_exc())
    finally:
        wrapper.flush()
        sys.stdout, sys.stderr = real_out, real_err
    results.append({"rc": rc, "out": base64.b64encode(out.getvalue()).decode(), "err": err.getvalue()})
    wrapper.detach()
json.dump(results, sys.stdout)
"""


def cli_batch(d: MailDaemon, calls: list[list[str]]) -> list[tuple[int, bytes, str]]:
    """(exit code, stdout bytes, stderr) of each ``mailgate ARGS`` call, run in one process."""
    res = subprocess.run([sys.executable, "-c", BATCH_CLI], input=json.dumps(calls).encode(),
                         capture_output=True, env=d.env, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return [(r["rc"], base64.b64decode(r["out"]), r["err"]) for r in json.loads(res.stdout)]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDns]:
    server = FakeDns()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path] | None:
    """A throw-away self-signed certificate, or None without the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "c.pem", folder / "k.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns: FakeDns,
           tls_files: tuple[Path, Path] | None) -> Iterator[MailDaemon]:
    d = MailDaemon(tmp_path_factory.mktemp("smtp-e2e"), dns, tls_files)
    d.serve()
    yield d
    d.close()


@pytest.fixture
def alive(daemon: MailDaemon) -> Iterator[MailDaemon]:
    """The module's daemon, checked to be running before and after the test."""
    daemon.assert_alive()
    yield daemon
    daemon.assert_alive()


# --- 1. end to end ----------------------------------------------------------------------------


def test_emails_replay_runs_incoming_email_again_and_delete_removes_the_message(alive: MailDaemon) -> None:
    d = alive
    sid, address = d.new_address("email-to-case")
    raw = message(address, "Replay me", b"Once more.\r\n")
    assert d.send([address], raw)[0] == 250
    email_id = d.emails(sid)[0]["id"]

    def saved(n: int) -> bool:
        return len(d.cli_json("sessions", "show", sid)["answers"].get("emails", [])) == n

    wait_for(lambda: saved(1), 60, "incoming_email to save the e-mail once")
    replayed = d.cli_json("emails", "replay", email_id, "--wait", "30")
    assert (replayed["action"], replayed["state"], replayed["session"]) == ("incoming_email", "succeeded", sid)
    assert saved(2)  # the task's callback committed with its finish: the e-mail is in the answers twice
    assert d.cli("emails", "replay", email_id).startswith(f"e-mail {email_id}: incoming_email queued as task ")
    wait_for(lambda: saved(3), 60, "the second replay")

    simple_sid, simple_address = d.new_address("email-to-case-simple")
    assert d.send([simple_address], message(simple_address, "No handler"))[0] == 250
    simple_id = d.emails(simple_sid)[0]["id"]
    res = d.cli_bytes("emails", "replay", simple_id, check=False)
    assert res.returncode == 1
    assert res.stderr == b"mailgate: error: interview 'email-to-case-simple' defines no incoming_email action; nothing to replay\n"

    with sqlite3.connect(d.db, timeout=10) as conn:
        assert conn.execute("SELECT COUNT(*) FROM raw_messages WHERE sha256 = ?", (hashlib.sha256(raw).hexdigest(),)).fetchone() == (1,)
    assert d.cli("emails", "delete", email_id) == f"deleted e-mail {email_id}\n"
    assert d.emails(sid) == []
    for command in (("emails", "delete", email_id), ("emails", "show", email_id), ("emails", "replay", email_id)):
        res = d.cli_bytes(*command, check=False)
        assert res.returncode == 1 and res.stderr == f"mailgate: error: no e-mail {email_id!r}; list e-mails with: mailgate emails list\n".encode()
    with sqlite3.connect(d.db, timeout=10) as conn:  # the raw bytes went with the only e-mail that had them
        assert conn.execute("SELECT COUNT(*) FROM raw_messages WHERE sha256 = ?", (hashlib.sha256(raw).hexdigest(),)).fetchone() == (0,)
    assert d.cli_json("emails", "delete", simple_id, "--json") == {"deleted": simple_id}


def test_mail_to_session_address_is_stored_and_fires_incoming_email(alive: MailDaemon) -> None:
    d = alive
    sid, address = d.new_address("email-to-case")
    assert d.cli("sessions", "run", sid, "start").strip() == address  # same key: same address
    assert "No e-mails have arrived yet" in d.cli("sessions", "run", sid, "screen")
    raw = message(address, "E2E case 1", b"Hello,\r\n\r\nthis is case one.\r\n")
    with d.smtp() as client:
        client.ehlo()
        assert client.has_extn("size") and client.esmtp_features["size"] == str(MAX_MESSAGE_SIZE)
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        code, text = d.send([address], raw, client=client)
    assert (code, text) == (250, b"2.0.0 Message accepted")

    listed = d.emails(sid)
    assert len(listed) == 1
    email = listed[0]
    assert email["mailbox"] == address and email["subject"] == "E2E case 1"
    assert email["from"] == SENDER and email["size"] == len(raw)
    assert d.cli_json("emails", "list", "--mailbox", address) == listed
    assert d.cli_json("emails", "list", "--mailbox", address.upper())[0]["id"] == email["id"]

    boxes = d.cli_json("mailboxes", "list", "--session", sid)
    assert len(boxes) == 1
    assert boxes[0]["address"] == address and boxes[0]["emails"] == 1
    assert boxes[0]["interview"] == "email-to-case" and boxes[0]["session"] == sid
    assert address in d.cli("mailboxes", "list")

    # incoming_email ran in the background and its background_response_action saved the e-mail
    screen: list[str] = []

    def saved() -> bool:
        screen.append(d.cli("sessions", "run", sid, "screen").strip())
        return screen[-1] == f"From {SENDER}: E2E case 1"

    try:
        wait_for(saved, 60, "the incoming_email callback to save the e-mail")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the screen shows {screen[-1]!r}") from None
    tasks = d.cli_json("tasks", "list", "--session", sid)
    assert [t["state"] for t in tasks if t["action"] == "incoming_email"] == ["succeeded"]

    # the exact bytes, three ways
    assert d.raw(email["id"]) == raw
    as_json = d.cli_json("emails", "show", email["id"], "--raw")
    assert as_json["id"] == email["id"] and base64.b64decode(as_json["raw_base64"]) == raw

    headers_text = d.cli("emails", "show", email["id"], "--headers")
    assert "Subject: E2E case 1" in headers_text.splitlines()
    assert f"To: {address}" in headers_text.splitlines()
    headers = d.cli_json("emails", "show", email["id"], "--headers")
    assert {"name": "Subject", "value": "E2E case 1"} in headers
    assert [h["name"] for h in headers][:3] == ["From", "To", "Subject"]

    shown = d.cli_json("emails", "show", email["id"])
    assert shown["id"] == email["id"] and shown["session"] == sid and shown["mailbox"] == address
    assert shown["envelope_from"] == SENDER and shown["client_ip"] == "127.0.0.1"
    assert shown["to"] == [address] and shown["subject"] == "E2E case 1"
    assert shown["body_text"].replace("\r\n", "\n").strip() == "Hello,\n\nthis is case one."
    assert shown["message_id"].strip("<>").endswith("@elsewhere.test")
    assert shown["authentication_results"].startswith("mx.test;")
    assert "dkim=none" in shown["authentication_results"]
    table = d.cli("emails", "show", email["id"])
    assert "E2E case 1" in table and email["id"] in table

    # the same message again: 250 (queued), stored once
    assert d.send([address], raw) == (250, b"2.0.0 Message accepted")
    assert len(d.emails(sid)) == 1


# --- 2. envelope, recipients, size ------------------------------------------------------------


def test_bcc_unknown_relay_oversize_and_too_many_recipients(alive: MailDaemon) -> None:
    d = alive
    sid, address = d.new_address()
    local = address.partition("@")[0]

    # Bcc: the envelope recipient appears in no header, and the mail still lands in its mailbox
    bcc = message("Visible <visible@elsewhere.test>", "Blind copy", extra=b"Cc: other@elsewhere.test\r\n")
    assert address.encode() not in bcc and local.encode() not in bcc
    assert d.send([address], bcc)[0] == 250
    stored = d.emails(sid)
    assert [e["subject"] for e in stored] == ["Blind copy"] and stored[0]["mailbox"] == address
    assert d.raw(stored[0]["id"]) == bcc

    with d.smtp() as c:
        c.ehlo()
        assert c.mail(SENDER)[0] == 250
        code, text = c.rcpt(f"zz{local[2:]}@{DOMAIN}")  # our domain, nobody's local part
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        code, text = c.rcpt(f"{local}@ALT.TEST")  # our second domain: local parts are global
        assert code == 250, (code, text)
        code, text = c.rcpt(f"{local}@elsewhere.example")  # relay attempt
        assert code == 550 and text.startswith(b"5.7.1"), (code, text)
        code, text = c.rcpt(f"someone@{DOMAIN}.evil.example")
        assert code == 550 and text.startswith(b"5.7.1"), (code, text)
        assert c.rset()[0] == 250

        # too many recipients: the (MAX_RECIPIENTS + 1)-th gets 452 4.5.3, the rest are kept
        assert c.mail(SENDER)[0] == 250
        for _ in range(MAX_RECIPIENTS):
            assert c.rcpt(address)[0] == 250
        code, text = c.rcpt(address)
        assert code == 452 and text.startswith(b"4.5.3"), (code, text)
        many = message(address, "Many recipients")
        assert c.data(many)[0] == 250

        # oversize, declared with SIZE= at MAIL FROM
        big = message(address, "Too big", (b"y" * 76 + b"\r\n") * 14_000)
        assert len(big) > MAX_MESSAGE_SIZE
        code, text = c.mail(SENDER, [f"SIZE={len(big)}"])
        assert code == 552 and text.startswith(b"5.3.4"), (code, text)
        c.rset()
        # oversize, undeclared: the whole DATA is read, then refused
        assert c.mail(SENDER)[0] == 250 and c.rcpt(address)[0] == 250
        code, text = c.data(big)
        assert code == 552 and text.startswith(b"5.3.4"), (code, text)
        assert c.noop()[0] == 250  # the connection is still usable

    assert sorted(e["subject"] for e in d.emails(sid)) == ["Blind copy", "Many recipients"]
    box = d.cli_json("mailboxes", "list", "--session", sid)
    assert [b["emails"] for b in box] == [2]

    # one message to two session addresses: one e-mail in each mailbox, same bytes
    sid2, address2 = d.new_address()
    both = message(f"{address}, {address2}", "For both")
    assert d.send([address, address2], both) == (250, b"2.0.0 Message accepted")
    [first] = [e for e in d.emails(sid) if e["subject"] == "For both"]
    [second] = d.emails(sid2)
    assert first["id"] != second["id"] and second["mailbox"] == address2
    assert d.raw(first["id"]) == d.raw(second["id"]) == both

    # an SMTPUTF8 envelope sender
    utf8 = message(address2, "Envelope in UTF-8", sender="Jürgen <jürgen@bücher.test>")
    with d.smtp() as c:
        c.ehlo()
        assert c.mail("jürgen@bücher.test", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert c.rcpt(address2)[0] == 250
        assert c.data(utf8)[0] == 250
    [shown] = [d.cli_json("emails", "show", e["id"]) for e in d.emails(sid2) if e["subject"] == "Envelope in UTF-8"]
    assert shown["envelope_from"] == "jürgen@bücher.test" and shown["from"] == "jürgen@bücher.test"

    # the session (and so the mailbox) is deleted between RCPT and DATA: a permanent 550 5.1.1
    sid3, address3 = d.new_address()
    with d.smtp() as c:
        c.ehlo()
        assert c.mail(SENDER)[0] == 250 and c.rcpt(address3)[0] == 250
        d.cli("sessions", "delete", sid3)
        code, text = c.data(message(address3, "Too late"))
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        assert c.mail(SENDER)[0] == 250
        code, text = c.rcpt(address3)
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
    assert d.cli_json("mailboxes", "list", "--session", sid3) == []


def test_per_client_connection_and_unknown_recipient_limits(alive: MailDaemon) -> None:
    d = alive
    # max_unknown_recipients (10): the 11th unknown recipient gets 421 4.7.0 and the connection closes
    with d.smtp() as c:
        c.ehlo()
        assert c.mail(SENDER)[0] == 250
        replies = [c.rcpt(f"nobody{i:02d}@{DOMAIN}") for i in range(MAX_UNKNOWN + 1)]
        assert {code for code, _ in replies[:MAX_UNKNOWN]} == {550}
        code, text = replies[-1]
        assert code == 421 and text.startswith(b"4.7.0"), (code, text)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.noop()

    # max_connections_per_client (20): the 21st concurrent connection gets 421 4.7.0
    conns = []
    try:
        for _ in range(MAX_CONNECTIONS):
            conns.append(RawSmtp(d.port))
            assert conns[-1].reply()[0] == 220
        extra = RawSmtp(d.port)
        try:
            code, text = extra.reply()
            assert code == 421 and text.startswith(b"421 4.7.0"), text
            assert extra.file.read() == b""  # and closed
        finally:
            extra.close()
    finally:
        for conn in conns:
            conn.close()

    # closed connections give their places back
    def can_connect() -> bool:
        probe = RawSmtp(d.port)
        try:
            return probe.reply()[0] == 220
        finally:
            probe.close()

    wait_for(can_connect, 10, "a connection to be accepted again")
    with d.smtp() as c:
        assert c.noop()[0] == 250


# --- 3. SMTP smuggling ------------------------------------------------------------------------


class RawSmtp:
    """SMTP over a plain socket: we write exactly the bytes we want."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise AssertionError(f"connection closed; replies so far: {lines}")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    def cmd(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


SMUGGLING = {"lf-dot-lf": b"\n.\n", "cr-dot-lf": b"\r.\n", "lf-dot-crlf": b"\n.\r\n", "crlf-dot-cr": b"\r\n.\r"}


def unstuff(wire: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, undone by the receiver: one leading dot off each CRLF line."""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in wire.split(b"\r\n"))


def test_smtp_smuggling_never_splits_a_message(alive: MailDaemon) -> None:
    d = alive
    sid, address = d.new_address()
    smuggled = (
        b"MAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<" + address.encode() + b">\r\nDATA\r\n"
        b"From: smuggler@evil.test\r\nTo: " + address.encode() + b"\r\nSubject: SMUGGLED\r\n\r\n"
        b"smuggled body\r\n"
    )
    bodies = {}
    for name, seq in SMUGGLING.items():
        bodies[name] = message(address, f"Smuggling {name}", b"Before the fake end" + seq + smuggled + b"after\r\n")
    bodies["all"] = message(address, "Smuggling all", b"".join(b"x" + seq + smuggled for seq in SMUGGLING.values()))
    expected = {}
    for name, wire in bodies.items():
        conn = RawSmtp(d.port)
        try:
            assert conn.reply()[0] == 220
            assert conn.cmd(b"EHLO client.test")[0] == 250
            assert conn.cmd(b"MAIL FROM:<" + SENDER.encode() + b">")[0] == 250
            assert conn.cmd(b"RCPT TO:<" + address.encode() + b">")[0] == 250
            assert conn.cmd(b"DATA")[0] == 354
            conn.sock.sendall(wire + b".\r\n")  # the message as the attacker writes it: no dot-stuffing
            code, text = conn.reply()
            assert code == 250 and text.startswith(b"250 2.0.0"), (name, text)
            code, text = conn.cmd(b"QUIT")  # a split message would have produced more replies first
            assert code == 221, (name, code, text)
            assert conn.file.read() == b""
        finally:
            conn.close()
        expected[name] = unstuff(wire)

    stored = d.emails(sid)
    assert sorted(e["subject"] for e in stored) == sorted(f"Smuggling {n}" for n in bodies), stored
    assert d.cli_json("mailboxes", "list", "--session", sid)[0]["emails"] == len(bodies)
    by_subject = {e["subject"]: e["id"] for e in stored}
    for name, want in expected.items():
        raw = d.raw(by_subject[f"Smuggling {name}"])
        assert raw == want, name
        assert b"MAIL FROM:<smuggler@evil.test>" in raw and b"Subject: SMUGGLED" in raw


# --- 4. DKIM ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key(dns: FakeDns) -> RsaKey:
    key = RsaKey(20240102)
    dns.add("TXT", "sel._domainkey.signer.test", key.record)
    dns.add("TXT", "signer.test", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("TXT", "_dmarc.signer.test", "v=DMARC1; p=none")
    return key


def signed_message(key: RsaKey, to: str, subject: str, selector: str = "sel") -> bytes:
    msg = message(to, subject, b"Hello, this is signed.\r\n", sender="Alice <alice@signer.test>")
    header = dkim.sign(msg, selector.encode(), b"signer.test", key.pem,
                       include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return bytes(header) + msg


def test_dkim_pass_and_fail_through_fake_dns(alive: MailDaemon, dns: FakeDns, dkim_key: RsaKey) -> None:
    d = alive
    sid, address = d.new_address()
    good = signed_message(dkim_key, address, "Signed")
    tampered = signed_message(dkim_key, address, "Tampered").replace(b"this is signed", b"this is forged")
    unknown_key = signed_message(dkim_key, address, "Unknown selector", selector="gone")
    assert d.send([address], good, mail_from="bounce@signer.test")[0] == 250
    assert d.send([address], tampered)[0] == 250
    assert d.send([address], unknown_key)[0] == 250
    assert ("TXT", "sel._domainkey.signer.test") in dns.queries

    by_subject = {e["subject"]: e["id"] for e in d.emails(sid)}
    assert set(by_subject) == {"Signed", "Tampered", "Unknown selector"}
    results = {s: d.cli_json("emails", "show", i)["authentication_results"] for s, i in by_subject.items()}
    assert d.raw(by_subject["Signed"]) == good and d.raw(by_subject["Tampered"]) == tampered

    passed = results["Signed"]
    assert passed.startswith("mx.test;"), passed
    assert "dkim=pass" in passed and "header.d=signer.test" in passed and "header.s=sel" in passed
    assert "spf=pass smtp.mailfrom=signer.test" in passed and "dmarc=pass" in passed
    failed = results["Tampered"]
    assert "dkim=fail" in failed and "dkim=pass" not in failed, failed
    assert "dmarc=fail" in failed, failed
    assert "dkim=pass" not in results["Unknown selector"] and "dkim=" in results["Unknown selector"]


# --- 5. STARTTLS ------------------------------------------------------------------------------


def test_starttls_with_a_throwaway_certificate(alive: MailDaemon, tls_files: tuple[Path, Path] | None) -> None:
    if tls_files is None:
        pytest.skip("the openssl command is not installed, so no certificate for STARTTLS can be made")
    d = alive
    assert d.starttls, "the daemon was given a certificate but logged 'STARTTLS off'"
    sid, address = d.new_address()
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    context.check_hostname = False  # the certificate names localhost; we connect to 127.0.0.1
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT  # a bare `openssl req -x509` certificate
    raw = message(address, "Over TLS")
    with d.smtp() as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, _ = c.starttls(context=context)
        assert code == 220
        assert isinstance(c.sock, ssl.SSLSocket) and c.sock.version() in ("TLSv1.2", "TLSv1.3")
        c.ehlo()
        assert not c.has_extn("starttls")  # not offered twice
        assert d.send([address], raw, client=c) == (250, b"2.0.0 Message accepted")
    [email] = d.emails(sid)
    assert email["subject"] == "Over TLS" and d.raw(email["id"]) == raw

    # STARTTLS command injection (CVE-2011-0411 style): a command pipelined after STARTTLS in
    # plain text must be thrown away, not answered inside the TLS session
    conn = RawSmtp(d.port)
    try:
        assert conn.reply()[0] == 220 and conn.cmd(b"EHLO client.test")[0] == 250
        conn.sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        assert conn.reply()[0] == 220
        tls = context.wrap_socket(conn.sock, server_hostname="localhost")
        try:
            tls_file = tls.makefile("rb")
            tls.sendall(b"EHLO client.test\r\n")
            first = tls_file.readline()
            assert first.startswith(b"250"), first  # the reply to EHLO, not to the injected MAIL
            while first[3:4] == b"-":
                first = tls_file.readline()
            tls.sendall(b"RCPT TO:<" + address.encode() + b">\r\n")
            reply = tls_file.readline()
            assert reply.startswith(b"503"), reply  # no MAIL FROM in this session: it was injected
            tls_file.close()
        finally:
            tls.close()
    finally:
        conn.close()

    # a certificate we do not trust is refused by the client, and the daemon does not mind
    with d.smtp() as c, pytest.raises(ssl.SSLCertVerificationError):
        c.starttls(context=ssl.create_default_context())


# --- 6. corpus and adversarial messages -------------------------------------------------------


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"the e-mail corpus is not at {CORPUS}")
    files = sorted(
        p for folder in CORPUS_FOLDERS if (CORPUS / folder).is_dir()
        for p in (CORPUS / folder).rglob("*")
        if p.is_file() and (p.suffix == ".eml" or not p.name.upper().startswith(("COPYING", "LICENSE", "README")))
    )
    if not files:
        pytest.skip(f"no messages in the e-mail corpus at {CORPUS}")
    return files


def check_stored_exactly(d: MailDaemon, sid: str, sent: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every message in ``sent`` is stored once in the session, raw bytes intact; show works on each."""
    stored = d.emails(sid)
    distinct = set(sent.values())
    assert len(stored) == len(distinct), (len(stored), len(distinct))
    ids = [e["id"] for e in stored]
    results = cli_batch(d, [a for i in ids for a in (["emails", "show", i, "--raw"], ["emails", "show", i])])
    failed = [(i, rc, err[-1000:]) for i, (rc, _, err) in zip([i for i in ids for _ in (0, 1)], results, strict=True) if rc]
    assert not failed, failed
    raws = [out for _, out, _ in results[0::2]]
    missing = [name for name, data in sent.items() if data not in raws]
    assert not missing, f"stored raw bytes differ from what was sent for {missing}"
    assert Counter(raws) == Counter(distinct)
    for email, raw in list(zip(stored, raws, strict=True))[:2]:  # the batch agrees with the real command
        assert d.raw(email["id"]) == raw
    return stored


def test_corpus_is_accepted_and_stored_byte_for_byte(alive: MailDaemon) -> None:
    d = alive
    files = corpus_files()
    sid, address = d.new_address()
    sent = {str(path.relative_to(CORPUS)): crlf(path.read_bytes()) for path in files}
    replies = {}
    with d.smtp() as c:
        for name, data in sent.items():
            replies[name] = d.send([address], data, client=c)
    refused = {name: reply for name, reply in replies.items() if reply[0] != 250}
    assert not refused, refused
    check_stored_exactly(d, sid, sent)
    assert "Traceback" not in d.log()


def mime_parts(n: int) -> bytes:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(n))
    return b"This is a multipart message.\r\n" + parts + b"--b--\r\n"


def nested(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\nthe bottom\r\n"
    for level in reversed(range(depth)):
        body = (b"Content-Type: multipart/mixed; boundary=\"n%d\"\r\n\r\n--n%d\r\n" % (level, level)
                + body + b"--n%d--\r\n" % level)
    return body


def adversarial(to: str) -> dict[str, bytes]:
    filler = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 90) for i in range(3_100))
    head = (f"From: Sender <{SENDER}>\r\nTo: {to}\r\nMIME-Version: 1.0\r\n"
            f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\n").encode()

    def mid() -> bytes:
        return f"Message-ID: <{uuid.uuid4().hex}@elsewhere.test>\r\n".encode()

    msgs = {
        "300 KB header block": head + mid() + b"Subject: huge header\r\n" + filler + b"\r\nbody\r\n",
        "5000 MIME parts": head + mid() + b"Subject: many parts\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        + mime_parts(5_000),
        "nesting depth 200": head + mid() + b"Subject: deep\r\n" + nested(200),
        "NUL bytes": head + mid() + b"Subject: nul\r\n\r\nbefore\x00after\r\n\x00\x00\x00\r\nend\r\n",
        "8-bit headers": head + mid() + "Subject: Grüße aus Köln – 日本語\r\n".encode()
        + b"X-Latin1: caf\xe9 cr\xe8me br\xfbl\xe9e\r\nComments: \xff\xfe\xfd\r\n"
        + "Content-Type: text/plain; charset=utf-8\r\n\r\nKörper\r\n".encode(),
        "no From": (f"To: {to}\r\nSubject: anonymous\r\n").encode() + mid() + b"\r\nno sender here\r\n",
        "bare CR and long line": head + mid() + b"Subject: cr\r\n\r\na\rb\rc\r\n" + b"z" * 60_000 + b"\r\n",
        "headers only": head + mid() + b"Subject: no body\r\n",
        "empty": b"\r\n",
    }
    header_block = msgs["300 KB header block"].partition(b"\r\n\r\n")[0]
    assert len(header_block) > 300_000
    assert all(len(m) < MAX_MESSAGE_SIZE for m in msgs.values())
    return msgs


def test_adversarial_messages_are_accepted_and_kept_intact(alive: MailDaemon) -> None:
    d = alive
    sid, address = d.new_address()
    sent = {name: crlf(data) for name, data in adversarial(address).items()}
    with d.smtp() as c:
        for name, data in sent.items():
            code, text = d.send([address], data, client=c)
            assert code == 250, (name, code, text)
    stored = check_stored_exactly(d, sid, sent)
    by_subject = {e["subject"]: e["id"] for e in stored}
    many = d.cli_json("emails", "show", by_subject["many parts"])
    assert any("part limit" in defect for defect in many["defects"]), many["defects"]
    deep = d.cli_json("emails", "show", by_subject["deep"])
    assert any("depth limit" in defect for defect in deep["defects"]), deep["defects"]
    anonymous = d.cli_json("emails", "show", by_subject["anonymous"])
    assert anonymous["from"] is None and "missing From header" in anonymous["defects"]
    eight_bit = d.cli_json("emails", "show", by_subject["Grüße aus Köln – 日本語"])
    assert eight_bit["body_text"].strip() == "Körper"
    assert "Traceback" not in d.log()


CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")  # C0 but TAB/LF, DEL, C1 (UTF-8)


def test_cli_tables_do_not_pass_control_characters_from_mail_to_the_terminal(alive: MailDaemon) -> None:
    """Whoever can send mail to a session address must not be able to write escape sequences
    (screen clearing, title setting, fake lines) to an operator's terminal via the CLI tables."""
    d = alive
    sid, address = d.new_address()
    raw = (
        b"From: =?utf-8?q?Evil=1B=5B2J=1B=5D0=3Bpwned=07?= <evil@elsewhere.test>\r\n"
        b"To: " + address.encode() + b"\r\n"
        b"Subject: =?utf-8?q?Hi=1B=5B31mRED=C2=9B1m=0D=0Afake_row_of_the_table?=\r\n"
        b"X-Raw: raw\x1b[1mbold\x07\r\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@elsewhere.test>\r\n\r\nbody\r\n"
    )
    assert d.send([address], raw)[0] == 250
    [email] = d.emails(sid)
    assert email["subject"].startswith("Hi") and d.raw(email["id"]) == raw  # JSON and --raw: exact
    outputs = {
        "emails list": d.cli_bytes("emails", "list", "--session", sid).stdout,
        "emails show": d.cli_bytes("emails", "show", email["id"]).stdout,
        "emails show --headers": d.cli_bytes("emails", "show", email["id"], "--headers").stdout,
    }
    leaks = {name: sorted({m.group() for m in CONTROL.finditer(out)}) for name, out in outputs.items()}
    assert not any(leaks.values()), f"control characters printed as they are: {leaks}"
    assert len(outputs["emails list"].splitlines()) == 2, outputs["emails list"]  # header + one row


# --- 7. kill -9 under load --------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_under_load_loses_no_acknowledged_message(tmp_path: Path, dns: FakeDns) -> None:
    total, threads, kill_after = 1_000, 8, 200
    d = MailDaemon(tmp_path, dns)
    try:
        d.cli("db", "migrate")  # the CLI opens an existing store only
        sid, address = d.new_address()  # before the daemon runs: the CLI works on the file alone
        d.serve()
        run = uuid.uuid4().hex[:8]
        mids = [f"crash-{run}-{i:04d}@client.test" for i in range(total)]
        raws = [message(address, f"crash {i}", message_id=mid) for i, mid in enumerate(mids)]
        lock = threading.Lock()
        todo = list(range(total - 1, -1, -1))
        acked: Counter[int] = Counter()
        unexpected: list[tuple[int, int, bytes]] = []
        errors: list[str] = []
        resent: list[int] = []  # stored before the kill, acknowledged only when sent again
        stop = threading.Event()

        def take() -> int | None:
            with lock:
                return todo.pop() if todo else None

        def worker() -> None:
            client: smtplib.SMTP | None = None
            try:
                while not stop.is_set():
                    i = take()
                    if i is None:
                        with lock:
                            if len(acked) >= total or unexpected:
                                return
                        time.sleep(0.01)  # another thread may still put a failed message back
                        continue
                    try:
                        if client is None:
                            client = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=10)
                            client.ehlo()
                        code, text = client.mail(SENDER)
                        if code == 250:
                            code, text = client.rcpt(address)
                        if code == 250:
                            code, text = client.data(raws[i])
                    except (OSError, smtplib.SMTPException) as exc:  # the daemon is gone: retry later
                        with lock:
                            todo.append(i)
                            errors.append(type(exc).__name__)
                        if client is not None:
                            client.close()
                        client = None
                        time.sleep(0.02)
                        continue
                    with lock:
                        if code == 250:
                            acked[i] += 1
                            if text.startswith(b"2.0.0 Message already received"):
                                resent.append(i)
                        elif code in (421, 451):
                            todo.append(i)
                        else:
                            unexpected.append((i, code, text))
                    if code != 250 and client is not None:
                        client.rset()
            finally:
                if client is not None:
                    client.close()

        pool = [threading.Thread(target=worker, name=f"smtp-client-{n}") for n in range(threads)]
        for t in pool:
            t.start()
        try:
            wait_for(lambda: len(acked) >= kill_after or bool(unexpected), 60, f"{kill_after} acknowledged messages")
            assert not unexpected, unexpected[:5]
            d.proc.kill()  # SIGKILL: no cleanup at all
            d.proc.wait(10)
            with lock:
                acked_at_kill = set(acked)
            assert len(acked_at_kill) < total, "every message was sent before the kill; nothing was tested"
            # every message acknowledged so far is on disk, before anything else touches the file
            with sqlite3.connect(d.db, timeout=10) as conn:
                on_disk = {m for (m,) in conn.execute("SELECT message_id FROM emails")}
                queued = [bytes(r) for (r,) in conn.execute("SELECT raw FROM inbound_raw")]
            conn.close()
            lost = sorted(mids[i] for i in acked_at_kill if f"<{mids[i]}>" not in on_disk
                          and not any(raws[i] == raw for raw in queued))
            assert not lost, f"{len(lost)} acknowledged messages were lost by kill -9: {lost[:5]}"

            d.serve()  # the clients retry what got no 250, like a real MTA
            wait_for(lambda: len(acked) >= total or bool(unexpected), 120, "every message acknowledged after the restart")
        finally:
            stop.set()
            for t in pool:
                t.join(30)
        assert not unexpected, unexpected[:5]
        assert errors, "the clients should have seen the daemon die"
        print(f"acknowledged before kill -9: {len(acked_at_kill)}; client errors: {Counter(errors)}; "
              f"stored before the kill but acknowledged only on the retry: {len(resent)}")
        assert set(acked.values()) == {1}
        d.assert_alive()
        d.processed()

        with sqlite3.connect(d.db, timeout=10) as conn:
            rows = conn.execute("SELECT message_id, COUNT(*) FROM emails WHERE session_id = ? GROUP BY message_id",
                                (sid,)).fetchall()
        conn.close()
        counts = {m: n for m, n in rows}
        assert all(m.startswith("<") and m.endswith(">") for m in counts)  # the parser keeps the brackets
        twice = {m: n for m, n in counts.items() if n != 1}
        assert not twice, f"stored more than once: {list(twice.items())[:5]}"
        assert set(counts) == {f"<{m}>" for m in mids}
        assert len(d.emails(sid)) == total
        assert d.cli_json("mailboxes", "list", "--session", sid)[0]["emails"] == total
    finally:
        d.close()
