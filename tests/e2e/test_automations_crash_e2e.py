"""Crash and concurrency of the automations runner (AUTOMATIONS.md §5 9, 10, 11, 12): the real daemon
as a subprocess on a real SQLite file, ``kill -9``, a real SMTP relay that counts what it got.

Contrast (AUTOMATIONS.md §2.2-2.3): Django Automations ran 96 of 500 steps twice with two
overlapping ``automation_step`` runs, and an automation killed mid-step stayed locked forever.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller

from mailgate.config import load_config
from mailgate.daemon.lifecycle import Daemon
from tests.helpers import kill_process, start_mailgate, subprocess_env, wait_for, wait_for_log
from tests.helpers import runtime_of as rt
from tests.pg import create_database, drop_database, run_async

AUTOMATIONS = Path(__file__).parent.parent / "interviews" / "automations.py"
DOMAIN = "mg.test"


class Relay:
    """An SMTP relay that keeps every message it accepted."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content or envelope.content)
        return "250 2.0.0 Ok"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, int]]:
    handler = Relay()
    with socket.socket() as probe:  # aiosmtpd's Controller cannot bind port 0 itself
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


class Node:
    def __init__(self, tmp_path: Path, relay_port: int, dsn: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "mailgate.sqlite3"
        self.dsn = dsn
        self.relay_port = relay_port
        store = [f'path = "{self.db}"'] if dsn is None else ['backend = "postgres"', f'dsn = "{dsn}"']
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.config = tmp_path / "mailgate.toml"
        self.config.write_text("\n".join([
            "[store]", *store,
            "[interviews]", f'paths = ["{AUTOMATIONS}"]',
            "[daemon]", 'roles = ["worker"]', "grace_period = 1",
            "[tasks]", "poll_interval = 0.05",
            "[mail]", f'domains = ["{DOMAIN}"]',
            "[smtp]", "port = 0", "parse_processes = 0", "queue_lease = 2.0",
            "[automations]", "claim_lease = 2.0", "timer_poll = 0.1",
            "[outbound]", 'relay_host = "127.0.0.1"', f"relay_port = {relay_port}", 'tls = "none"',
            'default_sender = "office@mg.test"', "timeout = 5.0",
        ]) + "\n")

    def serve(self, *roles: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = self.tmp_path / f"daemon-{n}.log"
        env = subprocess_env(self.config)
        env["MAILGATE_DAEMON_ROLES"] = ",".join(roles or ("worker",))
        proc = start_mailgate("serve", env=env, log=log)
        self.procs.append(proc)
        self.logs.append(log)
        wait_for_log(proc, log, r"mailgate started", 60, "start-up")
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def query(self, sql: str, *params: Any) -> list[Any]:
        if self.dsn is not None:
            return run_async(self._pg_query(sql, params))
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def _pg_query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        parts = sql.split("?")
        sql = "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))
        conn = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    def start(self, cls: str, count: int = 1, **data: Any) -> list[str]:
        """Create automations through the author API, in this (test) process, on the same file."""
        async def go() -> list[str]:
            config = load_config(self.config)
            async with Daemon(config, roles=(), one_shot=True) as d:
                klass = rt(d).automation_classes.resolve(cls)
                made = [await klass.start_async(**data) for _ in range(count)]
                return [m.id for m, _ in made]

        return asyncio.run(go())


@pytest.fixture(params=["sqlite", "postgres"])
def node(request: pytest.FixtureRequest, tmp_path: Path, relay: tuple[Relay, int]) -> Iterator[Node]:
    dsn = create_database() if request.param == "postgres" else None
    n = Node(tmp_path, relay[1], dsn)
    try:
        yield n
    finally:
        for proc in n.procs:
            kill_process(proc)
        for log in n.logs:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        if dsn is not None:
            drop_database(dsn)


@pytest.fixture
def sqlite_node(tmp_path: Path, relay: tuple[Relay, int]) -> Iterator[Node]:
    n = Node(tmp_path, relay[1])
    yield n
    for proc in n.procs:
        kill_process(proc)
    for log in n.logs:
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


def states(node: Node) -> collections.Counter[str]:
    return collections.Counter(state for (state,) in node.query("SELECT state FROM automations"))


def test_kill_during_a_step_after_send_email_reruns_it_without_a_second_mail(node: Node, relay: tuple[Relay, int]) -> None:
    """§5.9: kill -9 while the step's code sleeps after send_email; after restart the step runs again
    (attempt 2 in its history), the relay got one message, the automation ends once."""
    sink = relay[0]
    flag = node.tmp_path / "flag"
    (aid,) = node.start("MailThenSleep", flag=str(flag))
    proc = node.serve()
    wait_for(lambda: flag.exists(), 20, "the step to send its mail and sleep")
    assert len(sink.messages) == 1
    node.kill(proc)
    node.serve()
    wait_for(lambda: node.query("SELECT state FROM automations WHERE id = ?", aid) == [("finished",)], 30,
             "the automation to finish after the restart")
    assert len(sink.messages) == 1  # the journal answered the re-run: no second mail
    (mail,) = node.query("SELECT state, attempts FROM automation_steps WHERE automation_id = ? AND node = 'mail'", aid)
    assert mail == ("done", 2)
    (journal,) = node.query("SELECT call_index, kind FROM automation_journal")
    assert journal == (0, "send_email")
    message_id = node.query("SELECT result FROM automation_journal")[0][0]
    assert message_id.split('"message_id":')[1].strip(' "}').encode() in sink.messages[0]


def test_kill_right_after_a_step_commit_runs_the_next_step_and_never_the_committed_one(node: Node) -> None:
    """§5.9, second half: kill -9 right after the commit of a step (``first``; ``second`` waits 3 s);
    after the restart ``second`` runs once and ``first`` never again."""
    log = node.tmp_path / "steps.log"
    ids = node.start("TwoSteps", 5, gap=3, log=str(log))
    proc = node.serve()

    def committed() -> bool:
        return node.query("SELECT COUNT(*) FROM automation_steps WHERE node = 'first' AND state = 'done'") == [(5,)]

    wait_for(committed, 30, "the first steps to commit")
    node.kill(proc)
    assert node.query("SELECT COUNT(*) FROM automation_steps WHERE node = 'second' AND state = 'done'") == [(0,)]
    assert log.read_text().splitlines() == ["first 1"] * 5
    node.serve()
    wait_for(lambda: states(node)["finished"] == 5, 30, "every automation to finish after the restart")
    assert sorted(log.read_text().splitlines()) == ["first 1"] * 5 + ["second 1"] * 5
    for aid in ids:
        rows = node.query("SELECT node, state, attempts FROM automation_steps WHERE automation_id = ? ORDER BY seq", aid)
        assert rows == [("first", "done", 1), ("second", "done", 1), ("end", "done", 0)]


def test_a_thousand_due_timers_with_a_kill_mid_drain_each_commit_once(node: Node) -> None:
    """§5.10: 1,000 timers due at once, kill -9 while the runner drains them, restart: every
    automation's ``fire`` step committed exactly once; its code ran again only for the runs in flight
    when the runner died (at most ``concurrency``)."""
    log = node.tmp_path / "fired.log"
    ids = node.start("Timer", 1000, delay=3, log=str(log))
    proc = node.serve()

    def fired(n: int) -> bool:
        return log.exists() and log.read_text().count("\n") >= n

    wait_for(lambda: fired(150), 60, "the drain to be under way")
    node.kill(proc)
    assert states(node)["running"] > 0  # killed mid-drain
    node.serve()
    wait_for(lambda: states(node)["finished"] == 1000, 120, "every timer to finish")
    fires = node.query("SELECT automation_id, COUNT(*) FROM automation_steps WHERE node = 'fire' AND state = 'done' "
                       "GROUP BY automation_id")
    assert sorted(a for a, _ in fires) == sorted(ids)
    assert {n for _, n in fires} == {1}  # each step's outcome committed exactly once (G1)
    runs = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
    assert set(runs) == set(ids)
    again = [a for a, n in runs.items() if n > 1]
    assert all(n <= 2 for n in runs.values())
    assert len(again) <= 16, again  # only runs in flight at the kill ran their code again (G2)


def test_three_runners_over_due_automations_and_messages_nothing_twice_nothing_lost(node: Node) -> None:
    """§5.11: three daemons on one store drain 5,000 due automations and 1,000 messages; every timer
    fires once, every message is delivered once, in order."""
    log = node.tmp_path / "fired.log"
    ids = node.start("Timer", 5000, delay=4, log=str(log))
    inboxes = node.start("Inbox", 10)

    async def send() -> None:
        config = load_config(node.config)
        async with Daemon(config, roles=(), one_shot=True) as d:
            klass = rt(d).automation_classes.resolve("Inbox")
            for i in range(100):
                for aid in inboxes:
                    await klass(automation_id=aid).send_message_async("ping", token=str(i))

    for _ in range(3):
        node.serve()
    asyncio.run(send())
    wait_for(lambda: states(node)["finished"] == 5000, 300, "every timer to finish")
    wait_for(lambda: node.query("SELECT COUNT(*) FROM automation_messages WHERE state = 'delivered'") == [(1000,)], 120,
             "every message to be delivered")
    runs = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
    assert set(runs) == set(ids) and set(runs.values()) == {1}
    pids = {line.split()[1] for line in log.read_text().splitlines()}
    assert len(pids) >= 2  # the runners shared the work
    from mailgate.core import answers as codec

    for aid in inboxes:
        (data,) = node.query("SELECT data FROM automations WHERE id = ?", aid)[0]
        assert codec.decode(data)["tokens"] == [str(i) for i in range(100)]  # each once, in commit order


def reply(port: int, to: str) -> None:
    msg = EmailMessage()
    msg["From"] = "client@example.org"
    msg["To"] = to
    msg["Subject"] = "Re: Your documents"
    msg.set_content("Here they are.")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(msg)


def test_mail_accepted_then_kill_delivers_the_email_message_once(sqlite_node: Node, relay: tuple[Relay, int]) -> None:
    """§5.12: mail answered 250 while no runner runs, the daemon killed; after a restart with the
    runner the ``email`` message is delivered once and advances the automation."""
    node = sqlite_node
    sink = relay[0]

    async def start() -> str:
        async with Daemon(load_config(node.config), roles=(), one_shot=True) as d:
            sid = (await rt(d).create_session("autotest")).id
            await rt(d).run_action(sid, "start_reply", {"to": "client@example.org"})
            return str((await rt(d).get_answers(sid))["automation"])

    aid = asyncio.run(start())
    worker = node.serve("worker")
    wait_for(lambda: len(sink.messages) == 1, 20, "the first mail")
    stop = worker
    os.kill(stop.pid, signal.SIGTERM)
    stop.wait(20)
    address = node.query("SELECT local_part FROM mailboxes")[0][0] + "@" + DOMAIN
    smtp = node.serve("smtp")
    port = int(wait_for_log(smtp, node.logs[-1], r"smtp listening on [\d.]+:(\d+)", 30, "smtp").group(1))
    reply(port, address)
    wait_for(lambda: node.query("SELECT COUNT(*) FROM automation_messages WHERE state = 'queued'") == [(1,)], 20,
             "the e-mail's message queued with the delivery")
    node.kill(smtp)
    node.serve("worker")
    wait_for(lambda: node.query("SELECT state FROM automations WHERE id = ?", aid) == [("finished",)], 30,
             "the automation to finish")
    assert node.query("SELECT message, state FROM automation_messages") == [("email", "delivered")]
    subjects = [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages]
    assert subjects == [b"Your documents", b"Thank you"]


def test_a_stopped_runner_past_its_lease_has_its_late_commit_refused(node: Node) -> None:
    """§5.11: SIGSTOP a runner inside a step past ``claim_lease``; another takes the automation over
    and commits it; SIGCONT: the stopped runner's commit is refused, nothing applied twice."""
    log = node.tmp_path / "fired.log"
    (aid,) = node.start("Timer", 1, delay=0, log=str(log), sleep=1.0)
    first = node.serve()
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 1, 20, "the first runner inside the step")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        node.serve()
        wait_for(lambda: node.query("SELECT state FROM automations WHERE id = ?", aid) == [("finished",)], 30,
                 "the second runner to take over and finish it")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    wait_for_log(first, node.logs[0], r"refused at commit|could not record its failure", 30, "the late commit refused")
    assert node.query("SELECT COUNT(*) FROM automation_steps WHERE automation_id = ? AND node = 'fire' AND state = 'done'",
                      aid) == [(1,)]
    assert node.query("SELECT state FROM automations WHERE id = ?", aid) == [("finished",)]
    pids = [line.split()[1] for line in log.read_text().splitlines()]
    assert len(pids) == 2 and len(set(pids)) == 2  # ran in both, committed by one


RACE = """
import asyncio, json, sys
from mailgate.config import load_config
from mailgate.daemon.lifecycle import Daemon

async def main():
    async with Daemon(load_config(sys.argv[1]), roles=(), one_shot=True) as d:
        cls = d.runtime.automation_classes.resolve("Single")
        made = await asyncio.gather(*(cls.start_async() for _ in range(10)))
        print(json.dumps([[m.id, created] for m, created in made]))

asyncio.run(main())
"""


def test_twenty_racing_starts_of_a_unique_class_from_two_processes_make_one(node: Node) -> None:
    """§5.4: ``unique = True``, 10 concurrent ``start_async`` in each of two processes: one row, and
    every caller got that one (created once)."""
    env = subprocess_env(node.config)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(node.config)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results += json.loads(out.decode().strip().splitlines()[-1])
    assert len(results) == 20
    assert len({aid for aid, _ in results}) == 1
    assert sum(1 for _, created in results if created) == 1
    assert node.query("SELECT COUNT(*) FROM automations") == [(1,)]
