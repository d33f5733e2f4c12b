"""Peak memory of a real parse worker process for big messages, against issue 14's goals: at most 2x
the message for a big message with an attachment, at most 3x for a message of empty lines (CRLF only),
which cost 6x when the body travelled back as JSON text. The figure is the worker's peak resident size
during the call (VmHWM, reset just before) over its resident size before it, as
``bench/mail_memory.py`` measures it."""

from __future__ import annotations

import email.policy
import json
import os
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailgate.core.inbound import PreparedMessage, prepare_message, warm_worker
from mailgate.mail.parse import ParseLimits
from mailgate.mail.workers import WorkerPool

pytestmark = pytest.mark.asyncio
SIZE = 16 * 2**20


def _status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}


def _reset_peak(pid: int) -> int:
    """Make ``pid``'s VmHWM start again from its current RSS (Linux 4.0+); that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


async def worker_peak(raw: bytes) -> tuple[float, PreparedMessage]:
    """(peak RSS of a fresh worker during ``prepare_message(raw)`` over its RSS before, the answer)."""
    pool = WorkerPool(1, warm_up=warm_worker, memory_limit=1 << 30)
    try:
        await pool.run(int, "0")  # started and warmed up, as in the daemon
        pid = pool._workers[0].process.pid
        assert pid is not None
        before = _reset_peak(pid)
        prepared = await pool.run(prepare_message, raw, ParseLimits(), {})
        return (_status(pid)["VmHWM"] - before) / len(raw), prepared
    finally:
        pool.close()


@pytest.mark.parametrize("shape", ["one part", "in a multipart"])
async def test_a_message_of_empty_lines_costs_the_worker_at_most_3x(shape: str) -> None:
    if shape == "one part":
        raw = b"From: a@example.com\r\nSubject: x\r\n\r\n" + b"\r\n" * (SIZE // 2)
    else:
        raw = (b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
               b"Content-Type: text/plain\r\n\r\n" + b"\r\n" * (SIZE // 2) + b"--b--\r\n")
    ratio, prepared = await worker_peak(raw)
    assert ratio <= 3.0, f"worker peak +{ratio:.2f}x the message"
    stored = json.loads(prepared.parsed.json)
    assert stored["body_text"] is None and stored["body_text_at"] is not None  # parsed, its body left in the message


async def test_a_big_message_with_an_attachment_costs_the_worker_at_most_2x() -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.org", "big"
    msg.set_content("hello\n" * 1000)
    msg.add_attachment(os.urandom(SIZE * 3 // 4), maintype="application", subtype="octet-stream", filename="a.bin")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    ratio, prepared = await worker_peak(raw)
    assert ratio <= 2.0, f"worker peak +{ratio:.2f}x the message"
    stored = json.loads(prepared.parsed.json)
    assert stored["attachments"][0]["size"] == SIZE * 3 // 4 and stored["body_text"] == "hello\r\n" * 1000
