"""Moving up from SQLite to PostgreSQL, end to end: ``mailgate db copy`` as a subprocess.

A daemon (in this process, its real SMTP server on port 0) fills a SQLite store: sessions with
mailboxes, mail through smtplib (one message of 25 MB), tasks that succeeded, failed, are queued and
one left running by a worker that died; then the real CLI copies it into a fresh PostgreSQL database.
The same CLI listings on a config that points at PostgreSQL must print exactly what they print on the
SQLite config, and every message's raw bytes must come back identical.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import smtplib
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mailgate.config import load_config
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import (
    config_toml,
    mailgate_cmd,
    make_config,
    runtime_of,
    subprocess_env,
    wait_until,
)
from tests.pg import create_database, drop_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOMAIN = "mail.test"
BIG = 25_000_000  # bytes of the large message, at least


def write_config(tmp_path: Path, name: str, store_dsn: str | None = None) -> Path:
    """The test's config (SQLite in ``tmp_path``, or the PostgreSQL database ``store_dsn``) as a file."""
    config = make_config(tmp_path, store_dsn=store_dsn, mail={"domains": (DOMAIN,)},
                         smtp={"port": 0, "hostname": "mx.test", "parse_processes": 0, "max_message_size": 40_000_000})
    path = tmp_path / name
    path.write_text(config_toml(config))
    return path


def message(to: str, subject: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
            extra: str = "") -> bytes:
    return (f"From: Sender <sender@elsewhere.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@elsewhere.test>\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n{extra}\r\n").encode() + body


def big_message(to: str) -> bytes:
    payload = base64.encodebytes(os.urandom(BIG * 3 // 4 + 1024)).replace(b"\n", b"\r\n")
    return message(to, "the big one", payload, "application/octet-stream",
                   "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=big.bin\r\n")


def send(port: int, to: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as client:
        client.sendmail("sender@elsewhere.test", [to], raw)


async def fill(config_path: Path) -> dict[str, bytes]:
    """Fill the SQLite store through a real daemon; returns what was sent (subject -> bytes)."""
    config = load_config(config_path)
    sent: dict[str, bytes] = {}
    async with Daemon(config, roles=("smtp", "worker"), resolver=StaticResolver({})) as daemon:
        rt = runtime_of(daemon)
        assert daemon.smtp is not None
        case = await rt.create_session("email-to-case")  # incoming_email tasks save each e-mail in the answers
        simple = await rt.create_session("email-to-case-simple")
        to_case = (await rt.run_action(case.id, "start")).text
        to_simple = (await rt.run_action(simple.id, "start")).text
        assert to_case and to_simple
        for to, subject in ((to_case, "first"), (to_simple, "hello"), (to_case, "second")):
            sent[subject] = message(to, subject, f"Body of {subject}\r\nSecond line: caf\u00e9\r\n".encode())
            await asyncio.to_thread(send, daemon.smtp.port, to, sent[subject])
        sent["the big one"] = big_message(to_case)
        await asyncio.to_thread(send, daemon.smtp.port, to_case, sent["the big one"])
        testing = await rt.create_session("testing")
        await rt.run_action(testing.id, "enable_cron")
        await rt.run_action(testing.id, "start", {"task": "no_response"})  # fails: no background response

        async def settled() -> bool:
            counts = await rt.tasks.counts()
            return counts["queued"] == counts["running"] == 0 and counts["succeeded"] == 3 and counts["failed"] == 1

        await wait_until(settled, 60, "the incoming_email tasks to succeed and one task to fail")
    async with Daemon(config, roles=(), one_shot=True) as daemon:  # no worker: these stay queued
        rt = runtime_of(daemon)
        idle = await rt.create_session("testing")
        await rt.run_action(idle.id, "start_many", {"task": "noop", "n": 3})
    with sqlite3.connect(config.store.path) as conn:  # a worker died while it ran one: its lease long expired
        conn.execute("UPDATE tasks SET state = 'running', worker = 'dead-worker', attempts = 1, started_at = 5, "
                     "lease_until = ? WHERE seq = (SELECT MAX(seq) FROM tasks)", (time.time() - 3600,))
    return sent


class Cli:
    def __init__(self, config: Path) -> None:
        self.env = subprocess_env(config)

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(mailgate_cmd(*args), capture_output=True, env=self.env, timeout=300)

    def ok(self, *args: str) -> bytes:
        res = self.run(*args)
        assert res.returncode == 0, f"mailgate {' '.join(args)} exited {res.returncode}: {res.stderr.decode()}"
        return res.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def target() -> Iterator[str]:
    dsn = create_database()
    try:
        yield dsn
    finally:
        drop_database(dsn)


def test_db_copy_moves_the_store_and_every_listing_stays_the_same(tmp_path: Path, target: str) -> None:
    sqlite_config = write_config(tmp_path, "sqlite.toml")
    pg_config = write_config(tmp_path, "pg.toml", store_dsn=target)
    sent = asyncio.run(fill(sqlite_config))
    on_sqlite, on_pg = Cli(sqlite_config), Cli(pg_config)

    res = on_sqlite.run("db", "copy", "--to", target, "--json")
    assert res.returncode == 0, res.stderr.decode()
    report = json.loads(res.stdout)
    assert report["ok"] and report["committed"] and report["target"].endswith(target.rsplit("/", 1)[1])
    rows = {t["table"]: t["target_rows"] for t in report["tables"]}
    assert rows["emails"] == rows["raw_messages"] == 4 and rows["sessions"] == 4 and rows["tasks"] == 7
    assert all(t["source_sha256"] == t["target_sha256"] and t["ok"] for t in report["tables"])
    assert report["bytes"] > BIG
    progress = res.stderr.decode()  # not a terminal: one line per table and stage
    assert "copying raw_messages: 4 rows\n" in progress and "verifying emails: 4 rows\n" in progress

    listings = [("sessions", "list"), ("tasks", "list"), ("emails", "list"), ("mailboxes", "list")]
    for args in listings:
        from_sqlite = on_sqlite.json(*args, "--limit", "1000")
        assert from_sqlite and on_pg.json(*args, "--limit", "1000") == from_sqlite, args
    tasks = on_pg.json("tasks", "list", "--limit", "1000")
    assert sorted(t["state"] for t in tasks) == ["failed", "queued", "queued", "running"] + ["succeeded"] * 3
    emails = on_pg.json("emails", "list", "--limit", "1000")
    assert sorted(e["subject"] for e in emails) == sorted(sent)
    for email in emails:
        raw = on_pg.ok("emails", "show", email["id"], "--raw")
        assert raw == on_sqlite.ok("emails", "show", email["id"], "--raw") == sent[email["subject"]]
    assert max(e["size"] for e in emails) > BIG
    for session in on_sqlite.json("sessions", "list"):
        assert on_pg.json("sessions", "show", session["id"]) == on_sqlite.json("sessions", "show", session["id"])

    table = on_sqlite.ok("db", "copy", "--verify-only", "--to", target).decode()
    assert table.splitlines()[0].split() == ["TABLE", "SOURCE", "TARGET", "CHECK", "NEXT_ID"]
    assert sum(line.split()[3] == "ok" for line in table.splitlines()[1:9]) == 8

    again = on_sqlite.run("db", "copy", "--to", target)  # the target holds data now
    assert again.returncode == 1 and again.stdout == b""
    assert again.stderr.decode().splitlines()[-1].startswith("mailgate: error: the target database already holds")
    assert b"Traceback" not in again.stderr

    asyncio.run(tamper(target))
    bad = on_sqlite.run("db", "copy", "--verify-only", "--to", target, "--json")
    assert bad.returncode == 1 and b"MISMATCH in emails" in bad.stderr
    checks = {t["table"]: t["ok"] for t in json.loads(bad.stdout)["tables"]}
    assert [name for name, ok in checks.items() if not ok] == ["emails"]


async def tamper(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE emails SET size = size + 1 WHERE seq = (SELECT MIN(seq) FROM emails)")
    finally:
        await conn.close()


def test_db_copy_errors_are_one_line(tmp_path: Path, target: str) -> None:
    config = write_config(tmp_path, "sqlite.toml")
    cli = Cli(config)
    res = cli.run("db", "copy", "--to", target)
    assert res.returncode == 1 and res.stderr.decode().startswith("mailgate: error: no SQLite store at ")
    cli.ok("db", "migrate")
    for to, expected in (("postgresql://postgres@127.0.0.1:1/x", "is unreachable"),
                         ("not a dsn", "is not a PostgreSQL connection string"),
                         (target + "_missing", "the database does not exist; create it first (createdb)")):
        res = cli.run("db", "copy", "--to", to)
        lines = res.stderr.decode().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and expected in lines[0], res.stderr
    res = cli.run("db", "copy", "--json")  # no --to and no [store] dsn
    assert res.returncode == 1 and json.loads(res.stdout)["error"].startswith("say where to copy to: --to")
