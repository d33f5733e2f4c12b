"""Several daemons on one PostgreSQL database (issue 13, "Must show"), end to end.

Real daemon subprocesses (``python -m mailgate serve --roles ...``, SMTP and web on port 0, JSON
logs), real SMTP clients (smtplib), real WebSocket clients (aiohttp), real PostgreSQL: every test
gets a fresh database on the machine's server (``tests/pg.py``), except the restart test, which
stops and starts a server of its own (:func:`tests.pg.private_cluster`), never the shared one.

The interview (``tests/interviews/nodes.py``) records in each result the pid of the process that
ran the handler, so a test can tell which daemon did the work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import smtplib
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from mailgate.store.postgres.backend import PgStore
from tests.e2e.dnsfake import FakeDns
from tests.helpers import (
    INTERVIEWS,
    config_toml,
    kill_process,
    make_config,
    start_mailgate,
    subprocess_env,
    wait_for,
    wait_for_log,
    wait_until,
)
from tests.pg import PrivateCluster, create_database, drop_database, private_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]
KEY = "nodes-e2e-key"
DOMAIN = "nodes.test"
POLL = 30.0  # [web] event_poll_interval: only the NOTIFY doorbell brings another node's event sooner
LEASE = 2.0  # [tasks] lease: a dead node's task is claimed again this long after its last heartbeat
WORKER_PID = re.compile(r":(\d+):")  # a worker is named "host:pid:random"


def pid_of(worker: str | None) -> int | None:
    match = WORKER_PID.search(worker or "")
    return int(match.group(1)) if match else None


class Node:
    """One daemon subprocess and its log (JSON lines)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    def __repr__(self) -> str:
        return f"node {self.name} (pid {self.pid})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_log(self, pattern: str, what: str, timeout: float = 30) -> re.Match[str]:
        return wait_for_log(self.proc, self.log, pattern, timeout, f"{what} on {self}")

    @property
    def url(self) -> str:
        port = self.wait_log(r"web listening on [\d.]+:(\d+)", "the web port").group(1)
        return f"http://127.0.0.1:{port}"

    @property
    def smtp_port(self) -> int:
        return int(self.wait_log(r"smtp listening on 127\.0\.0\.1:(\d+)", "the SMTP port").group(1))

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"message": line})  # a traceback or other raw output
        return out

    def events(self, *names: str) -> list[dict[str, Any]]:
        """The log lines whose ``event`` field is one of ``names``, in order."""
        return [line for line in self.lines() if line.get("event") in names]

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)


class Nodes:
    """Daemons that share one PostgreSQL database, each with a config file of its own."""

    def __init__(self, tmp_path: Path, dsn: str, dns: FakeDns) -> None:
        self.tmp_path = tmp_path
        self.dsn = dsn
        self.dns = dns
        self.nodes: list[Node] = []

    def start(self, name: str, roles: str, **tables: Any) -> Node:
        """Start a daemon with ``roles``; ``tables`` change its config (``tasks={"workers": 1}``)."""
        base: dict[str, dict[str, Any]] = {
            "daemon": {"log_format": "json", "grace_period": 2.0},
            "interviews": {"modules": (), "paths": (str(INTERVIEWS / "nodes.py"),)},
            "mail": {"domains": (DOMAIN,)},
            "smtp": {"port": 0, "hostname": "mx.nodes.test", "dns_servers": (self.dns.address,), "dns_timeout": 2.0,
                     "queue_lease": 3.0},  # a message claimed when the database went away is taken up again soon
            "web": {"port": 0, "api_key": KEY, "event_poll_interval": POLL},
            "tasks": {"lease": LEASE, "poll_interval": 0.05, "workers": 4},
            "sessions": {"lock_timeout": 4.0},  # the shipped default
        }
        for table, values in tables.items():
            base[table] = {**base.get(table, {}), **values}
        config = self.tmp_path / f"{name}.toml"
        config.write_text(config_toml(make_config(self.tmp_path, store_dsn=self.dsn, **base)))
        log = self.tmp_path / f"{name}.log"
        node = Node(name, start_mailgate("serve", "--roles", roles, env=subprocess_env(config), log=log), log)
        self.nodes.append(node)
        return node

    def serve(self, name: str, roles: str, **tables: Any) -> Node:
        """Start a daemon and wait until it serves."""
        node = self.start(name, roles, **tables)
        node.wait_log(r"mailgate started", "start-up")
        return node

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def close(self) -> None:
        for node in self.nodes:
            kill_process(node.proc)
        for node in self.nodes:  # shown by pytest when the test failed
            print(f"--- {node.log.name} (pid {node.pid}) ---\n{node.log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDns]:
    """Answers the daemons' DKIM/SPF/DMARC lookups at once (NXDOMAIN): no real DNS, no timeouts."""
    server = FakeDns()
    yield server
    server.close()


@pytest.fixture
def nodes(tmp_path: Path, dns: FakeDns) -> Iterator[Nodes]:
    """Daemons on a fresh database of the machine's PostgreSQL server, dropped at the end."""
    dsn = create_database()
    cluster = Nodes(tmp_path, dsn, dns)
    try:
        yield cluster
    finally:
        cluster.close()
        drop_database(dsn)


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    with private_cluster() as cluster:
        yield cluster


# -- clients -------------------------------------------------------------------------------------

@asynccontextmanager
async def client(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


async def api(http: aiohttp.ClientSession, method: str, path: str, expect: int, **kw: Any) -> Any:
    async with http.request(method, path, **kw) as r:
        text = await r.text()
        assert r.status == expect, (method, path, r.status, text)
        return json.loads(text)


async def new_session(http: aiohttp.ClientSession, **answers: Any) -> str:
    rec = await api(http, "POST", "/api/sessions", 201, json={"interview": "nodes", "answers": answers})
    return str(rec["id"])


class Page:
    """An open page of a session on one node: the events it received, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, sid: str) -> Page:
        token = (await api(http, "POST", f"/api/sessions/{sid}/token", 201, json={}))["token"]
        ws = await http.ws_connect(f"/ws?token={token}")
        welcome = json.loads((await ws.receive(timeout=10)).data)
        assert welcome["type"] == "welcome", welcome
        return cls(ws)

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Read events until one matches ``predicate``; fail after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self.ws.receive()
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    data = json.loads(msg.data)
                    if data["type"] == "event":
                        self.events.append(data)
                        if predicate(data):
                            return data
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout:g} s; the page got {self.events}") from None


def message(to: str, subject: str, message_id: str) -> bytes:
    return (f"From: Sender <sender@elsewhere.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nHello from the multi-node test.\r\n").encode()


def send_one(port: int, to: str, subject: str, message_id: str) -> tuple[int, bytes]:
    """One message on its own connection: the reply to RCPT if not 250, else the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        code, text = smtp.mail("sender@elsewhere.test")
        if code != 250:
            return code, text
        code, text = smtp.rcpt(to)
        if code != 250:
            return code, text
        return smtp.data(message(to, subject, message_id))


# -- 1. mail in on A, its task on B, the flash back on A's page ------------------------------------

async def test_mail_on_node_a_runs_on_node_b_and_the_flash_reaches_a_page_on_a_by_notify(nodes: Nodes) -> None:
    a = nodes.serve("a", "smtp,web")  # no worker: the incoming_email task cannot run here
    b = nodes.serve("b", "worker")
    async with client(a) as http:
        sid = await new_session(http)
        address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={}))["address"]
        page = await Page.open(http, sid)
        try:
            subject = f"hello {uuid.uuid4().hex[:8]}"
            code, text = await asyncio.to_thread(send_one, a.smtp_port, address, subject, f"{uuid.uuid4().hex}@elsewhere.test")
            accepted = time.monotonic()
            assert code == 250, text
            flash = await page.until(lambda e: e["kind"] == "command", POLL / 3, "flash")
            arrived = time.monotonic() - accepted
        finally:
            await page.ws.close()
    assert flash["data"] == {"command": "flash", "message": f"Mail for nodes: {subject} (pid {b.pid})"}
    # The page's feed polls every 30 s; B's commits reach A's page this fast only through NOTIFY.
    assert arrived < POLL / 6, f"the flash took {arrived:.1f} s: the doorbell did not ring"
    seen = [(e["kind"], e["data"].get("action") or e["data"].get("command"), e["data"].get("state")) for e in page.events]
    assert seen == [("email", None, None), ("task", "incoming_email", "succeeded"), ("task", "announce", "succeeded"),
                    ("command", "flash", None)]
    tasks = await nodes.query("SELECT action, state, worker FROM tasks ORDER BY seq")
    assert [(t["action"], t["state"], pid_of(t["worker"])) for t in tasks] == [
        ("incoming_email", "succeeded", b.pid), ("announce", "succeeded", b.pid)]


# -- 1b. a mailbox deleted on one node is refused on another, at DATA and at RCPT (issue 14) ---------

async def test_a_mailbox_deleted_through_node_b_is_refused_by_node_a_at_data_and_at_rcpt(nodes: Nodes) -> None:
    """Node A answers RCPT from its mailbox cache (no round trip): B's deletion must still be refused
    on A, at DATA at once (the check is in the enqueue's transaction) and at RCPT once A's doorbell
    has rung (a moment after the commit)."""
    a = nodes.serve("a", "smtp")
    b = nodes.serve("b", "web")
    async with client(b) as http:
        sid = await new_session(http)
        address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={}))["address"]

        def rcpt_code() -> int:
            with smtplib.SMTP("127.0.0.1", a.smtp_port, local_hostname="client.test", timeout=30) as smtp:
                smtp.ehlo()
                smtp.mail("sender@elsewhere.test")
                return int(smtp.rcpt(address)[0])

        code, text = await asyncio.to_thread(send_one, a.smtp_port, address, "before", f"{uuid.uuid4().hex}@x.test")
        assert code == 250, text  # A has looked the mailbox up: it is in A's cache now
        assert await asyncio.to_thread(rcpt_code) == 250
        smtp = smtplib.SMTP("127.0.0.1", a.smtp_port, local_hostname="client.test", timeout=30)
        try:
            smtp.ehlo()
            assert smtp.mail("sender@elsewhere.test")[0] == 250
            assert smtp.rcpt(address)[0] == 250
            async with http.delete(f"/api/sessions/{sid}") as r:  # through B
                assert r.status == 204, await r.text()
            code, text = await asyncio.to_thread(smtp.data, message(address, "too late", f"{uuid.uuid4().hex}@x.test"))
            assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        finally:
            smtp.close()

    async def refused_at_rcpt() -> bool:
        return await asyncio.to_thread(rcpt_code) == 550

    await wait_until(refused_at_rcpt, 5, "node A refusing the deleted mailbox at RCPT")
    gone = a.events("smtp.mailbox_gone")
    assert len(gone) == 1 and gone[0]["peer"] == "127.0.0.1", gone


# -- 2. kill -9 of the node running a task -----------------------------------------------------------

@pytest.mark.slow
async def test_kill_9_of_the_node_running_a_task_and_the_other_node_finishes_it(nodes: Nodes, tmp_path: Path) -> None:
    a = nodes.serve("a", "web,worker")
    b = nodes.serve("b", "web,worker")
    release = tmp_path / "release"  # the task runs until this file exists
    async with client(a) as http_a, client(b) as http_b:
        sid = await new_session(http_a)
        pages = {a.name: await Page.open(http_a, sid), b.name: await Page.open(http_b, sid)}
        try:
            task = await api(http_a, "POST", f"/api/sessions/{sid}/tasks", 202, json={
                "action": "hold", "ui_notification": "flash", "arguments": {"release": str(release)}})
            holders: list[int | None] = []

            async def running() -> bool:
                (row,) = await nodes.query("SELECT state, worker FROM tasks WHERE id = $1", task["id"])
                holders.append(pid_of(row["worker"]))
                return bool(row["state"] == "running")

            await wait_until(running, 30, "a node to claim the task")
            victim, survivor = (a, b) if holders[-1] == a.pid else (b, a)
            assert holders[-1] == victim.pid, (holders[-1], a.pid, b.pid)
            victim.kill()
            killed = time.monotonic()
            release.touch()  # the victim's run can no longer finish; the survivor's ends at once
            page = pages[survivor.name]
            flash = await page.until(lambda e: e["kind"] == "command", LEASE + 20, "flash of the rerun task")
            took = time.monotonic() - killed
            done = await api(http_a if survivor is a else http_b, "GET", f"/api/tasks/{task['id']}", 200)
        finally:
            for p in pages.values():
                await p.ws.close()
    assert flash["data"] == {"command": "flash", "message": f"held by pid {survivor.pid}"}
    assert (done["state"], done["attempts"], done["value"]) == ("succeeded", 2, f"held by pid {survivor.pid}")
    (row,) = await nodes.query("SELECT worker FROM tasks WHERE id = $1", task["id"])
    assert pid_of(row["worker"]) == survivor.pid
    # heartbeats every LEASE/3 kept the victim's claim until at least 2/3 LEASE after its death
    assert took > LEASE / 2, f"the survivor took the task {took:.1f} s after the kill: before its lease ran out"
    task_events = [e["data"] for e in page.events if e["kind"] == "task"]
    assert task_events == [{"task": task["id"], "action": "hold", "state": "succeeded", "error_type": None}]


# -- 3. cron_daily once across two schedulers ------------------------------------------------------------

async def test_cron_daily_fires_once_across_two_scheduler_nodes(nodes: Nodes) -> None:
    """Both schedulers catch up the missed cron_daily at start-up and claim its period at the same
    moment: a table lock that lets them read but not write holds both at the claim, then lets them
    go together; the period's unique key lets exactly one of them run it."""
    store = PgStore(nodes.dsn, pool_size=1)
    await store.open()
    try:
        await store.migrate()
    finally:
        await store.close()
    # cron_daily ran before (on 2000-01-01): so a starting scheduler catches up today's period
    await nodes.query("INSERT INTO cron_periods VALUES ('cron_daily', '2000-01-01', 'a daemon long gone', 0)")
    gate = await asyncpg.connect(nodes.dsn)
    try:
        held = gate.transaction()
        await held.start()
        await gate.execute("LOCK TABLE cron_periods IN SHARE MODE")  # reads pass, inserts wait
        a = nodes.start("a", "web,scheduler")
        b = nodes.start("b", "web,scheduler")
        for node in (a, b):
            node.wait_log(r"mailgate started", "start-up")
        async with client(a) as http:
            sids = [await new_session(http, allow_cron=True) for _ in range(3)]

        async def both_waiting() -> bool:
            waiting = await gate.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'cron_periods'::regclass AND NOT granted")
            return bool(waiting == 2)

        await wait_until(both_waiting, 30, "both schedulers to claim the period")
        await held.rollback()
    finally:
        await gate.close()

    outcomes: dict[str, list[str]] = {}

    def settled() -> bool:
        for node in (a, b):
            outcomes[node.name] = [e["event"] for e in node.events("cron.catch_up", "cron.ran", "cron.already_ran")]
        return all(len(events) >= 2 for events in outcomes.values())

    wait_for(settled, 30, "both schedulers to fire cron_daily")
    assert sorted(outcomes.values()) == [["cron.catch_up", "cron.already_ran"], ["cron.catch_up", "cron.ran"]], outcomes
    winner = a if outcomes["a"][-1] == "cron.ran" else b
    (ran,) = winner.events("cron.ran")
    assert re.match(r"cron_daily \d{4}-\d\d-\d\d: 3 sessions, 3 saved, 0 exited, 0 errors", ran["message"]), ran
    async with client(b) as http:
        for sid in sids:
            answers = (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"]
            assert answers["daily_runs"] == [winner.pid], (sid, answers)
    periods = await nodes.query("SELECT period, holder FROM cron_periods WHERE period <> '2000-01-01'")
    assert [pid_of(p["holder"]) for p in periods] == [winner.pid]


# -- 4. one session edited through both nodes at once ----------------------------------------------------

async def test_one_session_edited_through_both_nodes_at_once_loses_no_update(nodes: Nodes) -> None:
    a = nodes.serve("a", "web")
    b = nodes.serve("b", "web")
    async with client(a) as http_a, client(b) as http_b:
        sid = await new_session(http_a)

        async def incr(http: aiohttp.ClientSession) -> tuple[int, Any]:
            async with http.post(f"/api/sessions/{sid}/actions/incr", json={}) as r:
                return r.status, await r.json()

        started = time.monotonic()
        results = await asyncio.gather(*(incr(http_a if i % 2 else http_b) for i in range(50)))
        took = time.monotonic() - started
        answers = (await api(http_b, "GET", f"/api/sessions/{sid}", 200))["answers"]
    by_node = {a.pid: [r for i, r in enumerate(results) if i % 2], b.pid: [r for i, r in enumerate(results) if not i % 2]}
    refused = [r for r in results if r[0] != 200]
    for status, body in refused:  # a refusal must be one a client can retry, saying so
        assert status in (409, 503) and "try again" in body["error"], (status, body)
    succeeded = {pid: sum(1 for status, _ in rs if status == 200) for pid, rs in by_node.items()}
    assert answers["counter"] == sum(succeeded.values())
    assert Counter(answers["by"]) == {pid: n for pid, n in succeeded.items() if n}
    assert not refused, f"{len(refused)} of 50 refused in {took:.1f} s: {refused[:3]}"


# -- 5. PostgreSQL restart during an SMTP load ----------------------------------------------------------------

class SmtpLoad:
    """Senders that each keep one SMTP connection and send unique messages until stopped, noting
    every message's final reply (to RCPT if it was refused, else to DATA). A refused message is not
    retried here; after a 4xx a sender pauses a little, as a real MTA backs off."""

    def __init__(self, port: int, to: str, senders: int) -> None:
        self.port = port
        self.to = to
        self.results: list[tuple[str, int, bytes | str]] = []  # (message id, reply code, reply text)
        self.errors: list[str] = []  # what went wrong outside SMTP replies (a dropped connection...)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), name=f"smtp-load-{n}") for n in range(senders)]

    def __enter__(self) -> SmtpLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def count(self, predicate: Callable[[int], bool]) -> int:
        return sum(1 for _, code, _ in list(self.results) if predicate(code))

    def _run(self, n: int) -> None:
        smtp: smtplib.SMTP | None = None
        i = 0
        while not self._stop.is_set():
            message_id = f"load-{n}-{i}-{uuid.uuid4().hex[:6]}@elsewhere.test"
            i += 1
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30)
                    smtp.ehlo()
                code, text = smtp.mail("sender@elsewhere.test")
                if code == 250:
                    code, text = smtp.rcpt(self.to)
                    if code == 250:
                        code, text = smtp.data(message(self.to, f"load {message_id}", message_id))
                    else:
                        smtp.rset()
                else:
                    smtp.rset()
                self.results.append((message_id, code, text))
            except smtplib.SMTPResponseException as exc:
                self.results.append((message_id, exc.smtp_code, exc.smtp_error))
            except (OSError, smtplib.SMTPException) as exc:
                self.errors.append(f"{message_id}: {exc!r}")
                smtp = None
                continue
            if not 200 <= self.results[-1][1] < 300:
                self._stop.wait(0.05)  # back off after a refusal (a sender's pace, not synchronisation)
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass


@pytest.mark.slow
async def test_postgres_restart_during_smtp_load_answers_4xx_and_stores_every_250_once(
        tmp_path: Path, dns: FakeDns, private_pg: PrivateCluster) -> None:
    nodes = Nodes(tmp_path, private_pg.dsn, dns)
    try:
        await restart_under_load(nodes, private_pg)
    finally:
        nodes.close()


async def restart_under_load(nodes: Nodes, pg: PrivateCluster) -> None:
    mx = nodes.serve("mx", "smtp,web")
    async with client(mx) as http:
        sid = await new_session(http)
        address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={}))["address"]
    port = mx.smtp_port
    with SmtpLoad(port, address, senders=4) as load:
        await wait_until(lambda: load.count(lambda c: c == 250) >= 20, 30, "20 messages accepted before the restart")
        await asyncio.to_thread(pg.stop)
        await wait_until(lambda: bool(mx.events("store.unavailable")) and load.count(lambda c: c != 250) >= 3, 30,
                         "the daemon to notice the outage and refuse mail")
        await asyncio.to_thread(pg.start)
        await wait_until(lambda: bool(mx.events("store.available")), 30, "the daemon to notice the database is back")
        accepted = load.count(lambda c: c == 250)
        await wait_until(lambda: load.count(lambda c: c == 250) >= accepted + 20, 30,
                         "20 messages accepted after the restart")
    assert not load.errors, load.errors[:5]
    codes = Counter(code for _, code, _ in load.results)
    assert all(code == 250 or 400 <= code < 500 for code in codes), codes  # never a 5xx
    refused = [(mid, code, text) for mid, code, text in load.results if code != 250]
    assert refused, codes

    async def stored() -> Counter[str]:
        rows = await nodes.query("SELECT message_id FROM emails WHERE session_id = $1", sid)
        return Counter(str(r["message_id"]).strip("<>") for r in rows)

    async def processed() -> bool:
        return (await nodes.query("SELECT COUNT(*) FROM inbound_queue"))[0][0] == 0

    await wait_until(processed, 60, "every queued message processed")
    copies = await stored()
    for mid, code, text in load.results:
        if code == 250:
            assert copies[mid] == 1, (mid, code, text, copies[mid])
        else:  # refused: stored at most once (a commit whose answer was lost may have landed)
            assert copies[mid] <= 1, (mid, code, text, copies[mid])
    assert set(copies) <= {mid for mid, _, _ in load.results}
    # The senders retry what was refused, as MTAs do: each is accepted and then stored exactly once.
    for mid, _, _ in refused:
        code, text = await asyncio.to_thread(send_one, port, address, f"load {mid}", mid)  # the same bytes
        assert code == 250, (mid, code, text)
    await wait_until(processed, 60, "the retried messages processed")
    after = await stored()
    assert set(after.values()) == {1} and set(after) == {mid for mid, _, _ in load.results}, after.most_common(3)
    # one line when the database went away, one when it came back; and the daemon still serves
    outage = [(e["event"], e["level"]) for e in mx.events("store.unavailable", "store.available")]
    assert outage == [("store.unavailable", "error"), ("store.available", "warning")], outage
    assert mx.proc.poll() is None
    fresh = f"{uuid.uuid4().hex}@elsewhere.test"
    code, text = await asyncio.to_thread(send_one, port, address, "after the restart", fresh)
    assert code == 250, text
    await wait_until(processed, 60, "the last message processed")
    assert (await stored())[fresh] == 1
