"""Peak memory of a parse worker process for one big message, as a ratio to the message's size.

Each message goes to a fresh worker (the daemon's own `WorkerPool`, warmed up as in production);
the figure is the worker's peak resident size (VmHWM) after the call minus its resident size
before it, over the message's size. Messages: 33 MiB of empty lines (one part), the same in a
multipart part, and a 25 MiB message with an 18 MiB attachment. The daemon process's own memory
for a 25 MiB message is measured by ``bench/smtp_ingest.py``.

    python bench/mail_memory.py [--memory-limit BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import time
from email.message import EmailMessage

from mailgate.core.inbound import prepare_message, warm_worker
from mailgate.mail.parse import ParseLimits
from mailgate.mail.workers import WorkerOutOfMemory, WorkerPool


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``; empty once it has ended."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}
    except FileNotFoundError:
        return {}


def messages() -> dict[str, bytes]:
    normal = EmailMessage()
    normal["From"], normal["To"], normal["Subject"] = "a@example.com", "b@example.org", "big"
    normal.set_content("hello\n" * 1000)
    normal.add_attachment(os.urandom(18 * 2**20), maintype="application", subtype="octet-stream", filename="a.bin")
    return {
        "33 MiB of empty lines": b"From: a@example.com\r\nSubject: x\r\n\r\n" + b"\r\n" * (33 * 2**19),
        "32 MiB of empty lines in a part": b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                                           b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"\r\n" * (32 * 2**19) + b"--b--\r\n",
        "25 MiB with an attachment": normal.as_bytes(policy=email.policy.SMTP),
    }


async def measure(raw: bytes, memory_limit: int) -> tuple[float, float, str]:
    pool = WorkerPool(1, warm_up=warm_worker, memory_limit=memory_limit)
    try:
        await pool.run(int, "0")
        pid = pool._workers[0].process.pid
        before = _status(pid)["VmRSS"]
        started = time.perf_counter()
        try:
            await pool.run(prepare_message, raw, ParseLimits(), {})
            outcome = "parsed"
        except WorkerOutOfMemory:
            outcome = "stored unparsed (memory limit)"
        elapsed = time.perf_counter() - started
        # a worker that ended itself is gone: its peak is at least the limit
        peak = _status(pid).get("VmHWM", before + memory_limit)  # gone: it reached its limit
        return (peak - before) / len(raw), elapsed, outcome
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory-limit", type=int, default=1 << 30, help="RLIMIT_DATA of the worker (0: none)")
    args = parser.parse_args()
    for name, raw in messages().items():
        ratio, elapsed, outcome = asyncio.run(measure(raw, args.memory_limit))
        print(f"{name} ({len(raw) / 2**20:.1f} MiB): worker peak RSS +{ratio:.2f}x the message, {elapsed:.2f} s, {outcome}")


if __name__ == "__main__":
    main()
