"""A store that runs out of space, end to end: the real daemon, a real SMTP client, HTTP, the CLI.

The SQLite file is capped with ``[store] max_pages`` (``PRAGMA max_page_count``): SQLite then fails
exactly as on a full disk (SQLITE_FULL, "database or disk is full"), with no mount needed. While
full, every edge must say "try again later" (HTTP 503 + Retry-After, SMTP 451 4.3.0, the CLI one
line and exit 1) and the daemon must keep running; once there is room again (the daemon restarted
on the same file without the cap), the sender's retry of the refused message is accepted and
nothing accepted before is lost.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.dnsfake import FakeDns
from tests.helpers import kill_process, mailgate_cmd, start_mailgate, subprocess_env, wait_for

pytestmark = pytest.mark.e2e

DOMAIN = "mail.test"
API_KEY = "test-api-key-for-the-full-store"
MAX_PAGES = 150  # the migrated schema takes 58 pages of 4 KiB: room for a dozen and more 20 KB messages
SMTP_LISTENING = re.compile(r"smtp listening on 127\.0\.0\.1:(\d+)")
WEB_LISTENING = re.compile(r"web listening on 127\.0\.0\.1:(\d+)")


class Daemon:
    """One config file and SQLite file; daemons started on them one after another."""

    def __init__(self, tmp_path: Path, dns: FakeDns) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "mailgate.sqlite3"
        self.config = tmp_path / "mailgate.toml"
        self.dns = dns
        self.env = subprocess_env(self.config)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.smtp_port = self.web_port = 0

    def write_config(self, max_pages: int) -> None:
        tables: dict[str, dict[str, Any]] = {
            "store": {"path": str(self.db), "max_pages": max_pages},
            "interviews": {"modules": ["mailgate.demo.email"]},
            "daemon": {"roles": ["smtp", "web", "worker"], "grace_period": 3},
            "tasks": {"poll_interval": 0.05},
            "mail": {"domains": [DOMAIN]},
            "smtp": {"port": 0, "hostname": "mx.test", "dns_servers": [self.dns.address], "dns_timeout": 2.0,
                     # a full store cannot even give a claimed message back: the next daemon takes it after this
                     "queue_lease": 3.0},
            "web": {"port": 0, "api_key": API_KEY},
        }
        lines = []
        for name, table in tables.items():
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
        self.config.write_text("\n".join(lines) + "\n")

    def serve(self) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"daemon-{len(self.procs)}.log"
        proc = start_mailgate("serve", env=self.env, log=log)
        self.procs.append(proc)
        self.logs.append(log)

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            text = log.read_text(errors="replace")
            smtp, web = SMTP_LISTENING.search(text), WEB_LISTENING.search(text)
            if smtp and web:
                self.smtp_port, self.web_port = int(smtp.group(1)), int(web.group(1))
            return bool(smtp and web)

        wait_for(listening, 60, "the daemon's smtp and web 'listening' lines")
        return proc

    def stop(self) -> str:
        """SIGTERM the running daemon; its exit must be clean. Returns its log."""
        proc = self.procs[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, self.logs[-1].read_text(errors="replace")
        return self.logs[-1].read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(mailgate_cmd(*args), capture_output=True, text=True, env=self.env, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"mailgate {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def send(self, to: str, raw: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, local_hostname="client.test", timeout=30) as client:
            client.ehlo()
            assert client.mail("sender@elsewhere.test")[0] == 250
            code, text = client.rcpt(to)
            assert code == 250, (code, text)
            return client.data(raw)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    dns = FakeDns()
    d = Daemon(tmp_path, dns)
    try:
        yield d
    finally:
        for proc in d.procs:
            kill_process(proc)
        dns.close()
        for log in d.logs:  # shown by pytest when the test failed
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')}")


def message(to: str, subject: str) -> bytes:
    body = "".join(f"line {i} of {subject}: {uuid.uuid4().hex}\r\n" for i in range(400))  # ~20 KB
    return (f"From: Sender <sender@elsewhere.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@elsewhere.test>\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


def test_a_full_store_says_retry_later_everywhere_and_loses_nothing(daemon: Daemon) -> None:
    daemon.write_config(max_pages=MAX_PAGES)
    daemon.serve()
    sid = daemon.cli("sessions", "new", "email-to-case-simple").stdout.strip()
    address = daemon.cli("sessions", "run", sid, "start").stdout.strip()
    sessions_before = json.loads(daemon.cli("sessions", "list", "--json").stdout)

    # Fill the store with mail until SMTP refuses one.
    accepted: list[str] = []
    refused: bytes | None = None
    for i in range(100):
        raw = message(address, f"filler {i}")
        code, text = daemon.send(address, raw)
        if code != 250:
            refused = raw
            break
        accepted.append(f"filler {i}")
    assert refused is not None, "the store never filled up"
    assert accepted, "the cap left no room for any message"
    assert (code, text) == (451, b"4.3.0 Temporary server error; please try again later")
    assert daemon.send(address, refused)[0] == 451  # the sender's retry while still full: 451 again, never 5xx

    # HTTP: 503 with Retry-After and a JSON error that says what to do.
    status, headers, body = daemon.post("/api/sessions", {"interview": "email-to-case-simple",
                                                           "answers": {"big": "x" * 40_000}})
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0
    assert "is full" in body["error"] and "free space" in body["error"]

    # The CLI: one line, exit 1, no traceback.
    res = daemon.cli("sessions", "new", "email-to-case-simple", "--answers", json.dumps({"big": "x" * 40_000}), check=False)
    assert res.returncode == 1
    assert res.stderr.startswith("mailgate: error: the SQLite store") and "is full" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr

    assert daemon.procs[-1].poll() is None, "the daemon died of a full store"
    first_log = daemon.stop()
    assert "Traceback" not in first_log
    assert "answered 451" in first_log and "is full" in first_log  # the one log line of the refused message

    # Room again: the same file, no cap. The sender's retry of the refused message is accepted.
    daemon.write_config(max_pages=0)
    daemon.serve()
    assert daemon.send(address, refused) == (250, b"2.0.0 Message accepted")  # new, not a duplicate

    def processed() -> bool:  # every 250 is queued; its e-mail comes once processed
        return json.loads(daemon.cli("emails", "list", "--queued", "--json").stdout) == []

    wait_for(processed, 60, "the queued messages processed")
    emails = json.loads(daemon.cli("emails", "list", "--session", sid, "--limit", "1000", "--json").stdout)
    # Each once. Not necessarily in arrival order: the messages the full store would not let the first
    # daemon give back were processed after their claim's lease, behind later ones (see the README).
    subjects = sorted((e["subject"] for e in emails), key=lambda subject: int(subject.split()[-1]))
    assert subjects == [*accepted, f"filler {len(accepted)}"]
    assert json.loads(daemon.cli("sessions", "list", "--json").stdout) == sessions_before
    assert "Traceback" not in daemon.stop()
