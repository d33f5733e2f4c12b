"""Peak memory of a parse worker process for one big message, as a ratio to the message's size.

Each message goes to a fresh worker (the daemon's own `WorkerPool`, warmed up as in production);
the figure is the worker's peak resident size (VmHWM) after the call minus its resident size
before it, over the message's size. Messages: 33 MiB of empty lines (one part), the same in a
multipart part, and a 25 MiB message with an 18 MiB attachment. The daemon process's own memory
for a 25 MiB message is measured by ``bench/smtp_ingest.py``.

``--daemon`` measures every process of a real daemon instead (``bench/smtp_ingest.py``'s server, on
SQLite, fresh for each message): the message is sent over SMTP, and once it is stored as an e-mail
(it is parsed after the 250: the server's ``drained`` command returns when the queue is empty) the
daemon's peak RSS (VmHWM reset just before) is given over the message's size, for the whole and for
each phase: up to the 250 (receiving and queueing) and after it (claim, parse in the worker,
delivery), with what the daemon still held at the 250; and so is that of each of its descendants
(the forkserver and the parse workers, sampled every 20 ms, their VmHWM reset too). Messages: the 25
MiB DKIM-signed one of ``smtp_ingest.py --big-mib 25``, and 33 MB of empty lines (under the 32 MiB
``max_message_size``).

    python bench/mail_memory.py [--memory-limit BYTES] [--daemon]
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import shutil
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

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


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _sample(pid: int, peaks: dict[int, int], done: threading.Event) -> None:
    """Keep the highest VmHWM of each descendant of ``pid`` in ``peaks`` until ``done``."""
    while not done.wait(0.02):
        for kid in _descendants(pid):
            hwm = _status(kid).get("VmHWM")
            if hwm is not None:
                peaks[kid] = max(peaks.get(kid, 0), hwm)


def measure_daemon() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import smtp_ingest as bench

    folder = Path(tempfile.mkdtemp(prefix="mailgate-mem-"))
    try:
        key, record = bench.new_key(folder)
        for name in ("25 MiB, DKIM-signed, with an attachment", "33 MB of empty lines"):
            server = bench.Server("mailgate", folder, record, 1)
            try:
                rcpt = server.addresses[0]
                small, big = bench.make_messages(key, [("warm", rcpt, 5200), ("big", rcpt, int((25 * 2**20 - 4000) * 3 / 4 * 76 / 78))])
                if name.startswith("33"):
                    head = f"From: {bench.MAIL_FROM}\r\nTo: {rcpt}\r\nSubject: empty lines\r\n\r\n".encode()
                    big = head + b"\r\n" * ((33_000_000 - len(head)) // 2)
                bench.blast(server.port, [(rcpt, small)], 1)
                server.call("drained")  # the parse worker has started
                kids = {pid: _status(pid).get("VmRSS", 0) for pid in _descendants(server.proc.pid)}
                for pid in kids:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                peaks: dict[int, int] = {}
                done = threading.Event()
                sampler = threading.Thread(target=_sample, args=(server.proc.pid, peaks, done))
                sampler.start()
                server.call("reset_peak")
                idle = server.call("memory")["VmRSS"]
                started = time.perf_counter()
                bench.blast(server.port, [(rcpt, big)], 1)
                elapsed = time.perf_counter() - started
                accepted = server.call("memory")["VmHWM"] - idle  # receiving and queueing (it may have been processed in part)
                server.call("reset_peak")
                held = server.call("memory")["VmRSS"]
                server.call("drained")  # the message is parsed and stored
                processed = time.perf_counter() - started
                processing = server.call("memory")["VmHWM"] - idle
                daemon = max(accepted, processing)
                time.sleep(0.1)
                done.set()
                sampler.join()
                print(f"{name} ({len(big) / 2**20:.1f} MiB), 250 after {elapsed:.2f} s, stored as an e-mail after {processed:.2f} s: "
                      f"daemon peak RSS +{daemon / len(big):.2f}x (up to the 250: +{accepted / len(big):.2f}x; after it: "
                      f"+{processing / len(big):.2f}x, of which +{(held - idle) / len(big):.2f}x held at the 250)")
                for pid, peak in sorted(peaks.items()):
                    base = kids.get(pid)
                    what = f"+{(peak - base) / len(big):.2f}x over its idle RSS" if base is not None else \
                        f"{peak / len(big):.2f}x in all (started during the message)"
                    print(f"    descendant {pid}: peak RSS {what}")
            finally:
                server.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory-limit", type=int, default=1 << 30, help="RLIMIT_DATA of the worker (0: none)")
    parser.add_argument("--daemon", action="store_true", help="every process of a real daemon, messages sent over SMTP")
    args = parser.parse_args()
    if args.daemon:
        measure_daemon()
        return
    for name, raw in messages().items():
        ratio, elapsed, outcome = asyncio.run(measure(raw, args.memory_limit))
        print(f"{name} ({len(raw) / 2**20:.1f} MiB): worker peak RSS +{ratio:.2f}x the message, {elapsed:.2f} s, {outcome}")


if __name__ == "__main__":
    main()
