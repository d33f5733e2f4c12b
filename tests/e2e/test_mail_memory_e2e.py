"""Peak memory of a real ``mailgate serve`` process for one big message, from the first byte over SMTP
until it is stored as an e-mail, against issue 14's goals: at most 2x the message for a big message
with an attachment, at most 3x for a message of empty lines (CRLF only). The figure is the daemon's peak
resident size (VmHWM, reset just before the message) over its resident size before it. (The parse
workers' own peaks: tests/integration/test_mail_memory.py.) Before issue 14's memory work the daemon
took 8x and 12x; now about 1.1x for both."""

from __future__ import annotations

import email.policy
import os
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.e2e.dnsfake import FakeDns
from tests.e2e.test_smtp_e2e import SENDER, MailDaemon

pytestmark = pytest.mark.e2e
SIZE = 24 * 2**20


@pytest.fixture
def dns() -> Iterator[FakeDns]:
    server = FakeDns()
    yield server
    server.close()


def _status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}


def daemon_peak(tmp_path: Path, dns: FakeDns, message: bytes) -> float:
    d = MailDaemon(tmp_path, dns, max_message_size=40 * 2**20, parse_processes=1)
    try:
        d.serve()
        _sid, address = d.new_address()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as client:
            client.sendmail(SENDER, [address], b"From: a@elsewhere.test\r\nSubject: warm\r\n\r\nwarm\r\n")
        d.processed()  # the parse worker has started; the daemon is warm
        pid = d.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS
        before = _status(pid)["VmRSS"]
        with smtplib.SMTP("127.0.0.1", d.port, timeout=120) as client:
            assert client.sendmail(SENDER, [address], message) == {}
        d.processed(120)
        assert len(d.cli_json("emails", "list", "--mailbox", address)) == 2
        d.assert_alive()
        return (_status(pid)["VmHWM"] - before) / len(message)
    finally:
        d.close()


def test_a_message_of_empty_lines_costs_the_daemon_at_most_3x(tmp_path: Path, dns: FakeDns) -> None:
    raw = b"From: a@elsewhere.test\r\nSubject: empty lines\r\n\r\n" + b"\r\n" * (SIZE // 2)
    ratio = daemon_peak(tmp_path, dns, raw)
    assert ratio <= 3.0, f"daemon peak +{ratio:.2f}x the message"


def test_a_big_message_with_an_attachment_costs_the_daemon_at_most_2x(tmp_path: Path, dns: FakeDns) -> None:
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "a@elsewhere.test", "big"
    msg.set_content("hello\n" * 1000)
    msg.add_attachment(os.urandom(SIZE * 3 // 4), maintype="application", subtype="octet-stream", filename="a.bin")
    ratio = daemon_peak(tmp_path, dns, msg.as_bytes(policy=email.policy.SMTP))
    # Measured 1.13x since the SMTP edge unstuffs DATA in its read buffer and drops it before the reply
    # (mailgate/edges/smtp/data.py, content()); 2.0-2.1x before, when it held the buffer and a copy.
    assert ratio <= 2.0, f"daemon peak +{ratio:.2f}x the message"
