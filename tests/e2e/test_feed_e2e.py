"""Several daemons on one SQLite file: every event reaches every open page, whichever process committed it.

Real daemon subprocesses (``python -m mailgate serve --roles ...``, web on port 0), real WebSocket
clients (aiohttp) on the web daemon, the real store file. The web daemon's own commits wake its feed;
the other daemons' commits (with ids in between) are found by polling.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import (
    INTERVIEWS,
    kill_process,
    start_mailgate,
    subprocess_env,
    wait_for_log,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]
KEY = "feed-e2e-key"


class Cluster:
    """Daemons that share one store; each gets its own config file (roles, workers, lease)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "mailgate.sqlite3"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def serve(self, roles: str, **tasks: Any) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        tasks_table = {"workers": 4, "poll_interval": 0.05, **tasks}
        config = self.tmp_path / f"daemon-{n}.toml"
        config.write_text("\n".join([
            "[store]", f'path = "{self.db}"',
            "[web]", "port = 0", f'api_key = "{KEY}"', "event_poll_interval = 0.2", "send_queue = 2048",
            "[interviews]", 'modules = ["mailgate.demo.background"]', f'paths = ["{INTERVIEWS / "testing.py"}"]',
            "[daemon]", "grace_period = 2",
            "[tasks]", *(f"{k} = {json.dumps(v)}" for k, v in tasks_table.items()),
        ]) + "\n")
        log = self.tmp_path / f"daemon-{n}.log"
        proc = start_mailgate("serve", "--roles", roles, env=subprocess_env(config), log=log)
        self.procs.append(proc)
        self.logs.append(log)
        self.wait_log(proc, r"mailgate started", "start-up")
        return proc

    def wait_log(self, proc: subprocess.Popen[bytes], pattern: str, what: str, timeout: float = 30) -> re.Match[str]:
        return wait_for_log(proc, self.logs[self.procs.index(proc)], pattern, timeout, what)

    def web_url(self, proc: subprocess.Popen[bytes]) -> str:
        port = self.wait_log(proc, r"web listening on [\d.]+:(\d+)", "web port").group(1)
        return f"http://127.0.0.1:{port}"

    def query(self, sql: str, *params: Any) -> list[Any]:
        with sqlite3.connect(self.db, timeout=10) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    for proc in c.procs:
        kill_process(proc)
    for log in c.logs:  # shown by pytest when the test failed
        print(f"--- {log.name} ---\n{log.read_text()}")


async def api(http: aiohttp.ClientSession, method: str, path: str, expect: int, **kw: Any) -> Any:
    async with http.request(method, path, **kw) as r:
        text = await r.text()
        assert r.status == expect, (r.status, text)
        return json.loads(text)


class Page:
    """One open page of a session: the events it received, by id."""

    def __init__(self, sid: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.sid = sid
        self.ws = ws
        self.events: dict[int, dict[str, Any]] = {}
        self.duplicates = 0

    async def collect(self, want: int, timeout: float) -> None:
        """Read until ``want`` events arrived (or fail at the deadline)."""
        async with asyncio.timeout(timeout):
            while len(self.events) < want:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                data = json.loads(msg.data)
                if data["type"] == "event":
                    if data["id"] in self.events:
                        self.duplicates += 1
                    self.events[data["id"]] = data


async def open_pages(http: aiohttp.ClientSession, sids: list[str], per_session: int) -> list[Page]:
    pages = []
    for sid in sids:
        for _ in range(per_session):
            token = (await api(http, "POST", f"/api/sessions/{sid}/token", 201, json={}))["token"]
            ws = await http.ws_connect(f"/ws?token={token}")
            welcome = json.loads((await ws.receive(timeout=10)).data)
            assert welcome["type"] == "welcome"
            pages.append(Page(sid, ws))
    return pages


async def flash_everywhere(base: str, cluster: Cluster, sessions: int, pages_per_session: int,
                           tasks_per_session: int) -> None:
    """Every page of every session must receive the task and flash events of all its session's tasks."""
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {KEY}"}) as http:
        sids = [(await api(http, "POST", "/api/sessions", 201, json={"interview": "background_action_flash"}))["id"]
                for _ in range(sessions)]
        pages = await open_pages(http, sids, pages_per_session)
        try:
            await asyncio.gather(*(
                api(http, "POST", f"/api/sessions/{sid}/tasks", 202,
                    json={"action": "bg_task", "ui_notification": "flash", "arguments": {"additional": i}})
                for sid in sids for i in range(tasks_per_session)))
            want = 2 * tasks_per_session  # a task event and a flash command per task
            results = await asyncio.gather(*(p.collect(want, 60) for p in pages), return_exceptions=True)
            committed = {sid: {int(i) for (i,) in cluster.query("SELECT id FROM events WHERE session_id = ?", sid)}
                         for sid in sids}
            missing = sum(len(committed[p.sid] - set(p.events)) for p in pages)
            assert not [r for r in results if isinstance(r, BaseException)], (
                f"{missing} of {want * len(pages)} page events never arrived")
            for page in pages:
                assert set(page.events) == committed[page.sid] and page.duplicates == 0
                flashes = sorted(e["data"]["message"] for e in page.events.values() if e["kind"] == "command")
                assert flashes == sorted(f"The answer is {553 + i}." for i in range(tasks_per_session))
        finally:
            for page in pages:
                await page.ws.close()
    workers = {w for (w,) in cluster.query("SELECT DISTINCT worker FROM tasks")}
    assert len(workers) >= 2, f"only {workers} ran tasks: the test needs commits from several processes"


async def test_two_daemons_every_event_reaches_every_page(cluster: Cluster) -> None:
    web = cluster.serve("web,worker", workers=1)
    cluster.serve("worker", workers=8)
    await flash_everywhere(cluster.web_url(web), cluster, sessions=30, pages_per_session=2, tasks_per_session=4)


async def test_three_daemons_a_thousand_events(cluster: Cluster) -> None:
    web = cluster.serve("web,worker", workers=2)
    cluster.serve("worker", workers=8)
    cluster.serve("worker", workers=8)
    # 10 sessions x 50 tasks x (task event + flash) = 1,000 events, each to 2 pages
    await flash_everywhere(cluster.web_url(web), cluster, sessions=10, pages_per_session=2, tasks_per_session=50)


async def test_worker_lost_reaches_the_page_after_kill_9(cluster: Cluster) -> None:
    lease = {"lease": 1.0, "max_attempts": 1}
    web = cluster.serve("web", **lease)  # no workers: the task must run in the doomed daemon
    doomed = cluster.serve("worker", **lease)
    async with aiohttp.ClientSession(cluster.web_url(web), headers={"Authorization": f"Bearer {KEY}"}) as http:
        sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
        page = (await open_pages(http, [sid], 1))[0]
        try:
            done = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "noop"})
            await page.collect(1, 30)
            normal = next(iter(page.events.values()))
            assert normal["kind"] == "task" and normal["data"]["state"] == "succeeded"
            assert normal["data"]["task"] == done["id"]
            held = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202,
                             json={"action": "sleep_bg", "arguments": {"seconds": 120}})

            def running() -> bool:
                return cluster.query("SELECT state FROM tasks WHERE id = ?", held["id"]) == [("running",)]

            await wait_until(running, 30, "the worker daemon to claim the task")
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait(10)
            cluster.serve("worker", **lease)  # reclaims once the lease has expired: attempts are used up
            await page.collect(2, 30)
            lost = [e for e in page.events.values() if e["data"].get("task") == held["id"]]
            assert len(lost) == 1 and lost[0]["kind"] == "task"
            assert lost[0]["data"] == {"task": held["id"], "action": "sleep_bg", "state": "failed", "error_type": "WorkerLost"}
            assert set(lost[0]["data"]) == set(normal["data"])  # one payload shape for every task event
        finally:
            await page.ws.close()
