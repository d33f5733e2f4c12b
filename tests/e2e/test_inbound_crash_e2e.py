"""The inbound queue survives kill -9: every message that got 250 becomes its e-mail once, its
``incoming_email`` task runs once, and its ``email`` event reaches a page that was open all along.

The real daemon as a subprocess (smtp, worker and web roles) on a real SQLite file, smtplib clients in
threads, a real WebSocket page that reconnects after the kill with the last event id it saw. DNS goes
to the fake server of :mod:`tests.e2e.dnsfake`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.dnsfake import FakeDns
from tests.helpers import kill_process, start_mailgate, subprocess_env, wait_for_log, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]
KEY = "crash-e2e-key"
DOMAIN = "mail.test"
SENDER = "sender@elsewhere.test"


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDns]:
    server = FakeDns()
    try:
        yield server
    finally:
        server.close()


class Node:
    """A config file on one SQLite file and the daemons started on it, one after the other."""

    def __init__(self, tmp_path: Path, dns: FakeDns) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "mailgate.sqlite3"
        self.dns = dns
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.smtp_port = 0
        self.web = ""

    def serve(self, *, process_queue: bool = True, lease: float = 3.0, dns_timeout: float = 2.0) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        config = self.tmp_path / f"daemon-{n}.toml"
        config.write_text("\n".join([
            "[store]", f'path = "{self.db}"',
            "[web]", "port = 0", f'api_key = "{KEY}"', "event_history = 5000", "send_queue = 8192",
            "[interviews]", 'modules = ["mailgate.demo.email"]',
            "[daemon]", 'roles = ["smtp", "worker", "web"]', "grace_period = 2",
            "[tasks]", "workers = 4", "poll_interval = 0.05",
            "[mail]", f'domains = ["{DOMAIN}"]',
            "[smtp]", "port = 0", 'hostname = "mx.test"', f'dns_servers = ["{self.dns.address}"]', f"dns_timeout = {dns_timeout}",
            f"process_queue = {'true' if process_queue else 'false'}", f"queue_lease = {lease}",
        ]) + "\n")
        log = self.tmp_path / f"daemon-{n}.log"
        proc = start_mailgate("serve", env=subprocess_env(config), log=log)
        self.procs.append(proc)
        self.logs.append(log)
        self.smtp_port = int(wait_for_log(proc, log, r"smtp listening on [\d.]+:(\d+)", 60, "smtp").group(1))
        self.web = "http://127.0.0.1:" + wait_for_log(proc, log, r"web listening on [\d.]+:(\d+)", 60, "web").group(1)
        wait_for_log(proc, log, r"mailgate started", 60, "start-up")
        return proc

    def kill(self) -> None:
        proc = self.procs[-1]
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup at all
        proc.wait(10)

    def query(self, sql: str, *params: Any) -> list[Any]:
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
def node(tmp_path: Path, dns: FakeDns) -> Iterator[Node]:
    n = Node(tmp_path, dns)
    yield n
    for proc in n.procs:
        kill_process(proc)
    for log in n.logs:  # shown by pytest when the test failed
        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-20000:]}")


class Page:
    """A page of one session: every event it received, across reconnects (``last`` resumes)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.events: dict[int, dict[str, Any]] = {}
        self.repeated = 0
        self.drops: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def open(self, base: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read(base))

    async def _read(self, base: str) -> None:
        """Like the browser client: when the socket drops, open it again with the last id seen."""
        while True:
            try:
                await self._read_once(base)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.drops.append(repr(exc))
            else:
                self.drops.append("closed")
            await asyncio.sleep(0.2)  # the page's reconnect back-off, not synchronisation

    async def _read_once(self, base: str) -> None:
        async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {KEY}"}) as http:
            async with http.post(f"/api/sessions/{self.sid}/token", json={}) as r:
                assert r.status == 201, await r.text()
                token = (await r.json())["token"]
            last = max(self.events, default=0)
            async with http.ws_connect(f"/ws?token={token}&last={last}") as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(msg.data)
                    if data["type"] == "event":
                        if data["id"] in self.events:
                            self.repeated += 1
                        self.events[data["id"]] = data

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def emails(self) -> Counter[str]:
        return Counter(e["data"]["email"] for e in self.events.values() if e["kind"] == "email")


def message(to: str, mid: str) -> bytes:
    return (f"From: Sender <{SENDER}>\r\nTo: {to}\r\nSubject: crash {mid}\r\nMessage-ID: <{mid}>\r\n"
            "Date: Tue, 02 Jan 2024 10:00:00 +0000\r\n\r\nHello from the crash test.\r\n").encode()


class Load:
    """Client threads that send each message until it gets 250, reconnecting when the daemon is gone."""

    def __init__(self, node: Node, rcpts: list[str], raws: list[bytes], threads: int) -> None:
        self.node = node
        self.rcpts = rcpts
        self.raws = raws
        self.lock = threading.Lock()
        self.todo = list(range(len(raws) - 1, -1, -1))
        self.acked: Counter[int] = Counter()
        self.unexpected: list[tuple[int, int, bytes]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, name=f"smtp-client-{n}") for n in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def done(self) -> bool:
        with self.lock:
            return len(self.acked) >= len(self.raws) or bool(self.unexpected)

    def _run(self) -> None:
        client: smtplib.SMTP | None = None
        try:
            while not self.stop.is_set():
                with self.lock:
                    i = self.todo.pop() if self.todo else None
                if i is None:
                    if self.done():
                        return
                    time.sleep(0.01)  # another thread may still put a failed message back
                    continue
                try:
                    if client is None:
                        client = smtplib.SMTP("127.0.0.1", self.node.smtp_port, local_hostname="client.test", timeout=10)
                        client.ehlo()
                    code, text = client.mail(SENDER)
                    if code == 250:
                        code, text = client.rcpt(self.rcpts[i])
                    if code == 250:
                        code, text = client.data(self.raws[i])
                except (OSError, smtplib.SMTPException) as exc:  # the daemon is gone: retry later, as an MTA does
                    with self.lock:
                        self.todo.append(i)
                        self.errors.append(type(exc).__name__)
                    if client is not None:
                        client.close()
                    client = None
                    time.sleep(0.02)
                    continue
                with self.lock:
                    if code == 250:
                        self.acked[i] += 1
                    elif code in (421, 451):
                        self.todo.append(i)
                    else:
                        self.unexpected.append((i, code, text))
                if code != 250:
                    client.rset()
        finally:
            if client is not None:
                client.close()


async def new_sessions(node: Node, n: int) -> list[tuple[str, str]]:
    return [await new_session(node) for _ in range(n)]


async def new_session(node: Node) -> tuple[str, str]:
    async with aiohttp.ClientSession(node.web, headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post("/api/sessions", json={"interview": "email-to-case"}) as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["id"]
        async with http.post(f"/api/sessions/{sid}/address", json={}) as r:
            assert r.status == 200, await r.text()
            return sid, (await r.json())["address"]


async def check_all(node: Node, sessions: list[tuple[str, str]], mids: list[str], pages: list[Page]) -> None:
    for k, ((sid, _), page) in enumerate(zip(sessions, pages, strict=True)):
        await check_exactly_once(node, sid, mids[k::len(sessions)], page)


async def check_exactly_once(node: Node, sid: str, mids: list[str], page: Page) -> None:
    """Each message stored once; its incoming_email task ran once (the callback it queues appends
    the e-mail to the answers: once each); its email event reached the page (once each)."""
    async def settled() -> bool:
        queued = node.query("SELECT COUNT(*) FROM inbound_queue")[0][0]
        busy = node.query("SELECT COUNT(*) FROM tasks WHERE session_id = ? AND state IN ('queued', 'running')", sid)[0][0]
        return queued == 0 and busy == 0

    await wait_until(settled, 180, "the queue processed and every task finished")
    counts = dict(node.query("SELECT message_id, COUNT(*) FROM emails WHERE session_id = ? GROUP BY message_id", sid))
    assert {m: n for m, n in counts.items() if n != 1} == {}, "stored more than once"
    assert set(counts) == {f"<{m}>" for m in mids}
    email_ids = {e for (e,) in node.query("SELECT id FROM emails WHERE session_id = ?", sid)}
    tasks = node.query("SELECT arguments, state FROM tasks WHERE session_id = ? AND action = 'incoming_email'", sid)
    failed = node.query("SELECT error_type, error_message, attempts FROM tasks WHERE session_id = ? AND state = 'failed'", sid)
    assert not failed, failed[:3]
    per_email = Counter(e for args, _ in tasks for e in email_ids if e in args)
    assert len(tasks) == len(mids) and set(per_email.values()) == {1} and set(per_email) == email_ids
    assert {state for _, state in tasks} == {"succeeded"}
    [(answers,)] = node.query("SELECT answers FROM sessions WHERE id = ?", sid)
    saved = Counter(e for e in json.dumps(json.loads(answers)["emails"]).split('"') if e in email_ids)
    assert set(saved) == email_ids and set(saved.values()) == {1}, "an incoming_email callback ran twice or never"

    async def all_pushed() -> bool:
        return set(page.emails()) >= email_ids

    try:
        await wait_until(all_pushed, 60, "every email event on the page")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(email_ids - set(page.emails()))} missing; the page's drops: "
                             f"{page.drops[-5:]}") from None
    assert set(page.emails()) == email_ids and set(page.emails().values()) == {1} and page.repeated == 0


class Mail:
    """Messages spread over several sessions (one page open on each): the load of one MX."""

    def __init__(self, sessions: list[tuple[str, str]], total: int, tag: str) -> None:
        self.sessions = sessions
        run = uuid.uuid4().hex[:8]
        self.mids = [f"{tag}-{run}-{i:04d}@client.test" for i in range(total)]
        self.rcpts = [sessions[i % len(sessions)][1] for i in range(total)]
        self.raws = [message(to, mid) for to, mid in zip(self.rcpts, self.mids, strict=True)]


def open_pages(node: Node, sessions: list[tuple[str, str]], pages: list[Page] | None = None) -> list[Page]:
    pages = pages or [Page(sid) for sid, _ in sessions]
    for page in pages:
        page.open(node.web)
    return pages


async def close_pages(pages: list[Page]) -> None:
    for page in pages:
        await page.close()


@pytest.mark.slow
async def test_kill_9_under_load_every_acknowledged_message_is_delivered_once(node: Node) -> None:
    total, kill_after = 1_200, 300
    node.serve()
    sessions = await new_sessions(node, 12)
    pages = open_pages(node, sessions)
    mail = Mail(sessions, total, "crash")
    load = Load(node, mail.rcpts, mail.raws, threads=8)
    load.start()
    try:
        await wait_until(lambda: len(load.acked) >= kill_after or bool(load.unexpected), 120,
                         f"{kill_after} acknowledged messages")
        node.kill()
        with load.lock:
            acked_at_kill = set(load.acked)
        assert len(acked_at_kill) < total, "every message was sent before the kill; nothing was tested"
        # every message acknowledged so far is on disk: as an e-mail, or still queued
        stored = {m for (m,) in node.query("SELECT message_id FROM emails")}
        queued = {bytes(r) for (r,) in node.query("SELECT raw FROM inbound_raw")}
        lost = [mail.mids[i] for i in acked_at_kill if f"<{mail.mids[i]}>" not in stored and mail.raws[i] not in queued]
        assert not lost, f"{len(lost)} acknowledged messages were lost by kill -9: {lost[:5]}"
        print(f"at the kill: {len(acked_at_kill)} acknowledged, {len(stored)} stored, {len(queued)} still queued")
        await close_pages(pages)
        node.serve()
        open_pages(node, sessions, pages)
        await wait_until(load.done, 180, "every message acknowledged after the restart")
    finally:
        await asyncio.to_thread(load.join)
    assert not load.unexpected, load.unexpected[:5]
    assert load.errors, "the clients should have seen the daemon die"
    try:
        await check_all(node, sessions, mail.mids, pages)
    finally:
        await close_pages(pages)


@pytest.mark.slow
async def test_kill_9_with_queued_unprocessed_messages_then_all_are_delivered_once(node: Node) -> None:
    total = 300
    node.serve(process_queue=False)  # this daemon only queues
    sessions = await new_sessions(node, 6)
    pages = open_pages(node, sessions)
    mail = Mail(sessions, total, "held")
    load = Load(node, mail.rcpts, mail.raws, threads=6)
    load.start()
    try:
        await wait_until(load.done, 120, "every message acknowledged")
    finally:
        await asyncio.to_thread(load.join)
    assert not load.unexpected and len(load.acked) == total
    assert node.query("SELECT COUNT(*) FROM inbound_queue") == [(total,)]
    assert node.query("SELECT COUNT(*) FROM emails") == [(0,)]
    node.kill()
    await close_pages(pages)
    node.serve()  # processes what the dead daemon queued
    open_pages(node, sessions, pages)
    try:
        await check_all(node, sessions, mail.mids, pages)
    finally:
        await close_pages(pages)


async def test_kill_9_with_claimed_messages_the_next_daemon_takes_them_over_at_once(node: Node, dns: FakeDns) -> None:
    """Messages claimed by a daemon that is killed are processed by the next daemon on the host within
    seconds of its start, not after the 120 s lease; each once."""
    total, lease = 40, 120.0
    dns.silent.set()  # every lookup goes unanswered: the processor holds its claims, mid-processing
    try:
        first = node.serve(lease=lease, dns_timeout=60.0)
        sessions = await new_sessions(node, 4)
        pages = open_pages(node, sessions)
        mail = Mail(sessions, total, "claimed")
        load = Load(node, mail.rcpts, mail.raws, threads=4)
        load.start()
        try:
            await wait_until(load.done, 60, "every message acknowledged")
        finally:
            await asyncio.to_thread(load.join)
        assert not load.unexpected and len(load.acked) == total

        def all_claimed() -> bool:
            return node.query("SELECT COUNT(*) FROM inbound_queue WHERE worker IS NOT NULL") == [(total,)]

        await wait_until(all_claimed, 30, "every queued message claimed by the first daemon")
        [(holder,)] = node.query("SELECT DISTINCT worker FROM inbound_queue")
        assert f":{first.pid}:" in holder and node.query("SELECT COUNT(*) FROM emails") == [(0,)]
        node.kill()
    finally:
        dns.silent.clear()
    await close_pages(pages)
    node.serve(lease=lease, dns_timeout=60.0)
    restarted = time.monotonic()
    open_pages(node, sessions, pages)

    def queue_empty() -> bool:
        return node.query("SELECT COUNT(*) FROM inbound_queue") == [(0,)]

    await wait_until(queue_empty, 20, "the dead daemon's claimed messages processed")
    took = time.monotonic() - restarted
    assert took < lease / 4, f"took {took:.1f} s: waited for the lease"
    print(f"the dead daemon's {total} claimed messages were processed {took:.2f} s after the restart")
    assert f"took over {total} queued messages claimed by 1 dead process(es)" in node.logs[-1].read_text()
    try:
        await check_all(node, sessions, mail.mids, pages)
    finally:
        await close_pages(pages)
