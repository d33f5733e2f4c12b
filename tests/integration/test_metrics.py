"""Metrics (issue 16, finding 5): every metric the README lists exists after a short run with mail,
tasks, pushes, outbound mail and a cron fire; a scrape reads no table in full; ``/metrics`` and the
OpenAPI document are behind the API key, or only on ``[web] metrics_listen``.

"No table read in full" is checked on the SQLite store's reader connection, where every read of
the backend runs (``SqliteStore._read``): a trace callback records each statement a scrape runs, and
SQLite's own ``EXPLAIN QUERY PLAN`` of it may show no ``SCAN`` of a table or of a whole index, only
searches and scans of a partial index (which holds the runnable tasks only).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import smtplib
import socket
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.daemon.preflight import StartupError
from mailgate.metrics import sample
from mailgate.outbound.message import Message
from mailgate.outbound.transport import MessageRecorder
from mailgate.store.sqlite.backend import SqliteStore
from tests.helpers import make_config, runtime_of, wait_until

KEY = "test-api-key-123"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, web={"port": 0, "api_key": KEY, "metrics_listen": "127.0.0.1:0", "event_poll_interval": 0.1},
                       smtp={"port": 0})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker", "smtp", "web")


def readme_metrics() -> list[str]:
    """The names in the first column of the README's metrics table."""
    text = README.read_text()
    section = text[text.index("\n### Metrics\n"):]
    section = section[: section.index("\n#", 1)]
    names = re.findall(r"^\| `([a-z_]+)`", section, re.M)
    assert len(names) >= 20, "the README's metrics table was not found"
    return names


def full_reads(db: Path, statements: list[str]) -> list[str]:
    """The statements whose query plan reads a table, or an index that is not partial, in full."""
    with sqlite3.connect(db) as conn:
        partial = {name for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
                   if sql and " WHERE " in sql.upper()}
        bad = []
        for sql in statements:
            for *_, detail in conn.execute("EXPLAIN QUERY PLAN " + sql):
                scan = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", detail)
                # the inbound queue holds only the messages waiting to be processed (each row is
                # deleted when it is stored): reading it whole is reading pending work, like the
                # runnable-task index
                if scan and scan.group(2) not in partial and scan.group(1) != "inbound_queue":
                    bad.append(f"{sql}  ->  {detail}")
    return bad


async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str, event_kind: str | None = None) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == kind and (event_kind is None or data.get("kind") == event_kind):
            return dict(data)


def test_the_checker_sees_a_full_table_read(tmp_path: Path) -> None:
    """What the scrape did before: tasks by state, every task read."""
    db = tmp_path / "plan.sqlite3"
    sql = (Path(__file__).resolve().parents[2] / "mailgate/store/sqlite/migrations/0001_core.sql").read_text()
    with sqlite3.connect(db) as conn:
        conn.executescript(sql)
    assert full_reads(db, ["SELECT state, COUNT(*) FROM tasks GROUP BY state"])
    assert not full_reads(db, ["SELECT state, COUNT(*) FROM tasks WHERE state IN ('queued', 'running') GROUP BY state"])


@pytest.mark.asyncio
async def test_every_readme_metric_exists_after_a_short_run_and_a_scrape_reads_no_table_in_full(daemon: Daemon) -> None:
    rt = runtime_of(daemon)
    assert daemon.web is not None and daemon.smtp is not None and daemon.cron is not None
    assert isinstance(rt.store, SqliteStore)
    succeeded = sample("mailgate_tasks_finished_total", state="succeeded")
    public = f"http://127.0.0.1:{daemon.web.port}"
    operator = f"http://127.0.0.1:{daemon.web.metrics_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(f"{public}/api/sessions", json={"interview": "email-to-case"}) as r:
            sid = (await r.json())["id"]
        async with http.post(f"{public}/api/sessions/{sid}/address", json={}) as r:
            address = (await r.json())["address"]
        async with http.post(f"{public}/api/sessions/{sid}/token", json={}) as r:
            token = (await r.json())["token"]
        async with http.ws_connect(f"{public}/ws?token={token}") as ws:
            await receive(ws, "welcome")
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "a@elsewhere.test", address, "Hi", "<m1@elsewhere.test>"
            msg.set_content("hello")

            def send() -> None:
                with smtplib.SMTP("127.0.0.1", daemon.smtp.port) as client:  # type: ignore[union-attr]
                    client.send_message(msg)
                    with pytest.raises(smtplib.SMTPRecipientsRefused):  # an unknown mailbox: 550, a rejection
                        client.sendmail("a@elsewhere.test", "nobody" + address[address.index("@"):], b"Subject: x\r\n\r\nx")

            await asyncio.to_thread(send)
            await receive(ws, "event", "email")  # pushed
            await receive(ws, "event", "task")  # its incoming_email task ran
        await wait_until(lambda: sample("mailgate_tasks_finished_total", state="succeeded") > succeeded,
                         what="the incoming_email task to finish")
        with MessageRecorder() as outbox:
            result = await rt.outbound.send_one(Message(to=["b@elsewhere.test"], subject="s", body="b", sender="a@example.org"))
        assert result.accepted and len(outbox) == 1
        assert await daemon.cron.fire("cron_daily", dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)) is not None

        # the operator's paths: not on the public listener, without a key on metrics_listen
        for path in ("/metrics", "/api/openapi.json"):
            async with http.get(f"{public}{path}") as r:
                assert r.status == 404 and "metrics_listen" in (await r.json())["error"], path
        async with aiohttp.ClientSession() as anon, anon.get(f"{operator}/api/openapi.json") as r:
            assert r.status == 200 and (await r.json())["openapi"].startswith("3.")

        statements: list[str] = []
        reader = rt.store._reader
        assert reader is not None
        await reader.set_trace_callback(statements.append)
        try:
            async with aiohttp.ClientSession() as anon, anon.get(f"{operator}/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
                text = await r.text()
        finally:
            await reader.set_trace_callback(None)

    assert any("FROM tasks" in s for s in statements), statements  # the trace saw the scrape's reads
    assert full_reads(Path(rt.store.path), statements) == []

    families = list(text_string_to_metric_families(text))
    present = {f.name for f in families} | {s.name for f in families for s in f.samples}
    listed = readme_metrics()
    assert [name for name in listed if name not in present] == []
    ours = {f.name for f in families if f.name.startswith("mailgate_")}
    assert sorted(ours - {re.sub("_total$", "", n) for n in listed}) == []  # every mailgate metric is documented
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    for histogram in ("mailgate_task_start_latency_seconds", "mailgate_task_duration_seconds", "mailgate_smtp_accept_seconds",
                      "mailgate_smtp_commit_seconds", "mailgate_push_latency_seconds"):
        assert values[(f"{histogram}_count", ())] > 0, histogram
    assert values[("mailgate_smtp_replies_total", (("code", "250"),))] > 0
    assert values[("mailgate_auth_results_total", (("method", "spf"), ("result", "none")))] > 0
    assert values[("mailgate_outbound_messages_total", (("result", "sent"),))] > 0
    assert values[("mailgate_cron_last_success_timestamp_seconds", (("type", "cron_daily"),))] > 0
    assert values[("mailgate_tasks", (("state", "queued"),))] == 0
    assert values[("mailgate_task_oldest_queued_age_seconds", ())] == 0
    assert values[("process_resident_memory_bytes", ())] > 0
    assert any(k[0] == "mailgate_build_info" and v == 1 for k, v in values.items())


@pytest.mark.asyncio
async def test_a_metrics_listen_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, web={"port": 0, "metrics_listen": f"127.0.0.1:{port}"})
        with pytest.raises(StartupError, match=rf"cannot listen on 127\.0\.0\.1:{port}: the port is in use"):
            async with Daemon(config, roles=("web",)):
                pass
