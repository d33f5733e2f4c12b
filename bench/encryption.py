"""Benchmark: what encryption at rest (``[store] encryption_key``) costs, as ratios against the same
workloads without a key, measured in the same run.

Method. Each measurement starts a fresh store in a temporary folder (SQLite by default; ``--dsn`` for
a PostgreSQL server: each measurement gets a database of its own) and a real ``Daemon`` in this
process, once without a key (the anchor) and once with one; the two alternate for ``--rounds`` rounds,
so that a change in the machine's background load hits both alike, and each rate is the mean of its
rounds. Workloads:

- ``check-in (save)``: ``--clients`` concurrent callers, each on a session of its own of the bench
  interview (bench/interviews.py), run its ``bump`` check-in (``run_action(..., browser=True)``: the
  answers change, so every call seals and saves them; the answers carry a ``--answer-kb`` KB text)
  in a closed loop for ``--duration`` seconds after ``--warmup`` seconds;
- ``check-in (no save)``: the same with ``calc``, which saves nothing (the session is read, and
  opened, each time; the SQLite backend's session cache keeps it sealed);
- ``mail``: ``--messages`` messages of about 10 KB sent over SMTP by ``--connections`` smtplib
  connections (opened before the clock starts) to the daemon's SMTP edge (roles smtp+worker, on
  port 0), addressed round robin to 50 sessions of ``email-to-case`` (whose ``incoming_email``
  task saves each e-mail into the answers); the clock stops when every message is stored and every
  task has finished: messages/s from the first send to the last task.

Also printed: the cost of the primitive itself (sealing and opening one value of the answer size, in
microseconds), which does not depend on the store, and for each workload the CPU time this process
used per operation (the daemon and the clients share it; the ratio is no key over key, so below 1
is the cost), which the machine's other load disturbs less than the rates. Every figure is the mean of
the rounds; the rates of each round are printed too, to show the noise.

    python bench/encryption.py [--rounds 2] [--clients 20] [--duration 3] [--warmup 1] [--messages 300]
                               [--connections 4] [--answer-kb 4] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.config import Config, load_config  # noqa: E402
from mailgate.daemon.lifecycle import Daemon  # noqa: E402
from mailgate.mail.auth import StaticResolver  # noqa: E402
from mailgate.store.sealing import Keyring, key_id  # noqa: E402

KEY = base64.b64encode(os.urandom(32)).decode()


def config(folder: Path, key: str, dsn: str | None) -> Config:
    store: dict[str, Any] = {"path": str(folder / "bench.sqlite3"), "encryption_key": key}
    if dsn:
        store.update(backend="postgres", dsn=dsn)
    return load_config(None).replace(
        store=store,
        interviews={"modules": ("mailgate.demo.email",), "paths": (str(ROOT / "bench" / "interviews.py"),)},
        smtp={"port": 0, "hostname": "mx.bench", "parse_processes": 0},
        mail={"domains": ("bench.test",)},
        tasks={"poll_interval": 0.05, "workers": 8},
        daemon={"log_level": "warning"},
    )


class Databases:
    """A fresh store per measurement: a temporary folder, and on PostgreSQL a database of its own."""

    def __init__(self, admin_dsn: str | None) -> None:
        self.admin = admin_dsn

    async def __call__(self, body: Callable[[Path, str | None], Awaitable[tuple[float, float]]]) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="mailgate-bench-enc-") as folder:
            if self.admin is None:
                return await body(Path(folder), None)
            import asyncpg

            name = f"mailgate_bench_{os.getpid()}_{time.monotonic_ns()}"
            conn = await asyncpg.connect(self.admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            base, _, _ = self.admin.rpartition("/")
            try:
                return await body(Path(folder), f"{base}/{name}")
            finally:
                conn = await asyncpg.connect(self.admin)
                await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                await conn.close()


async def checkins(cfg: Config, action: str, args: argparse.Namespace) -> tuple[float, float]:
    """Check-ins per second: ``args.clients`` closed loops of ``action`` on sessions of their own."""
    async with Daemon(cfg, roles=("worker",)) as d:
        rt = d.runtime
        assert rt is not None
        text = "x" * (args.answer_kb * 1024)
        sids = [(await rt.create_session("bench-web", {"text": text})).id for _ in range(args.clients)]
        count, counting, stop = 0, False, False

        async def loop(sid: str) -> None:
            nonlocal count
            n = 0
            while not stop:
                n += 1
                await rt.run_action(sid, action, {"a": n, "b": 2}, browser=True)
                if counting:
                    count += 1

        tasks = [asyncio.ensure_future(loop(sid)) for sid in sids]
        await asyncio.sleep(args.warmup)  # warm-up: load runs, nothing counted
        counting, started, cpu = True, time.perf_counter(), time.process_time()
        await asyncio.sleep(args.duration)  # the measurement window itself
        counting, elapsed, cpu = False, time.perf_counter() - started, time.process_time() - cpu
        stop = True
        await asyncio.gather(*tasks)
        return count / elapsed, cpu / max(count, 1) * 1e6


def message(to: str, n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@elsewhere.bench"
    msg["To"] = to
    msg["Subject"] = f"Bench message {n}"
    msg["Message-ID"] = f"<bench.{n}.{time.monotonic_ns()}@elsewhere.bench>"
    msg.set_content(("Line of a message body that is about sixty characters long.\n" * 160)[: 10 * 1024])
    return msg


async def mail(cfg: Config, args: argparse.Namespace) -> tuple[float, float]:
    """Messages per second: sent over SMTP, stored, and their incoming_email tasks finished."""
    async with Daemon(cfg, roles=("smtp", "worker"), resolver=StaticResolver({})) as d:
        rt, smtp = d.runtime, d.smtp
        assert rt is not None and smtp is not None
        addresses = []
        for _ in range(50):
            session = await rt.create_session("email-to-case")
            address = (await rt.run_action(session.id, "start")).text
            assert address is not None
            addresses.append(address)
        messages = [(addresses[n % len(addresses)], message(addresses[n % len(addresses)], n).as_bytes())
                    for n in range(args.messages)]
        ready = threading.Barrier(args.connections + 1)
        failures: list[BaseException] = []

        def client(part: list[tuple[str, bytes]]) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", smtp.port, timeout=60) as c:
                    c.ehlo("bench.client")
                    ready.wait()
                    for to, raw in part:
                        c.sendmail("sender@elsewhere.bench", [to], raw)
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                failures.append(exc)
                ready.abort()

        threads = [threading.Thread(target=client, args=(messages[i::args.connections],)) for i in range(args.connections)]
        for t in threads:
            t.start()
        await asyncio.to_thread(ready.wait)
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
        if failures:
            raise failures[0]
        while True:  # the queue drained, every task done: polled, this is a benchmark's end condition
            counts = await rt.store.count_tasks()
            if await rt.store.count_inbound() == 0 and counts.get("queued", 0) + counts.get("running", 0) == 0:
                break
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        stored = len(await rt.store.list_emails(limit=args.messages + 1))
        assert stored == args.messages, f"{stored} of {args.messages} messages stored"
        return args.messages / elapsed, cpu / args.messages * 1e6


def primitive(size: int, repeat: int = 2000) -> tuple[float, float]:
    key = base64.b64decode(KEY)
    ring = Keyring(key, {key_id(key): key})
    text = "y" * size
    started = time.perf_counter()
    sealed = [ring.seal_text(text, "sessions.answers\x00s") for _ in range(repeat)]
    seal_us = (time.perf_counter() - started) / repeat * 1e6
    started = time.perf_counter()
    for value in sealed:
        ring.open_text(value, "sessions.answers\x00s", "bench")
    return seal_us, (time.perf_counter() - started) / repeat * 1e6


async def main(args: argparse.Namespace) -> None:
    fresh = Databases(args.dsn)
    workloads: dict[str, Callable[[Config], Awaitable[tuple[float, float]]]] = {
        "check-in (save)": lambda c: checkins(c, "bump", args),
        "check-in (no save)": lambda c: checkins(c, "calc", args),
        "mail": lambda c: mail(c, args),
    }
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, run in workloads.items():
            for mode, key in (("plain", ""), ("sealed", KEY)):
                rate, cpu = await fresh(lambda folder, dsn, run=run, key=key: run(config(folder, key, dsn)))
                rates.setdefault((name, mode), []).append(rate)
                cpus.setdefault((name, mode), []).append(cpu)
    backend = "postgres" if args.dsn else "sqlite"
    print(f"backend {backend}; rounds {args.rounds}; clients {args.clients}; answers {args.answer_kb} KB; "
          f"messages {args.messages} over {args.connections} connections")
    print(f"{'workload':<20} {'no key /s':>10} {'key /s':>10} {'ratio':>7}   {'CPU us/op: no key':>17} {'key':>6} {'ratio':>6}")
    for name in workloads:
        plain, sealed = statistics.mean(rates[name, "plain"]), statistics.mean(rates[name, "sealed"])
        cpu_plain, cpu_sealed = statistics.mean(cpus[name, "plain"]), statistics.mean(cpus[name, "sealed"])
        spread = "  (rates per round: " + ", ".join(f"{p:.0f}/{k:.0f}" for p, k in zip(rates[name, "plain"], rates[name, "sealed"], strict=True)) + ")"
        print(f"{name:<20} {plain:>10.0f} {sealed:>10.0f} {sealed / plain:>7.2f}   {cpu_plain:>17.0f} {cpu_sealed:>6.0f} "
              f"{cpu_plain / cpu_sealed:>6.2f}{spread}")
    seal_us, open_us = primitive(args.answer_kb * 1024)
    print(f"AES-GCM on one {args.answer_kb} KB value: seal {seal_us:.1f} us, open {open_us:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--answer-kb", type=int, default=4)
    parser.add_argument("--dsn", help="PostgreSQL server to create the bench databases on (admin DSN)")
    asyncio.run(main(parser.parse_args()))
