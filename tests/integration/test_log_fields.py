"""Logs (issue 16, finding 6): structured fields on the lines an operator searches, MAIL FROM and
Message-ID on accepted mail, and an access log that keeps credentials out."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.daemon.logs import JsonFormatter
from tests.helpers import make_config, runtime_of, wait_until

pytestmark = pytest.mark.asyncio
KEY = "test-api-key-123"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, web={"port": 0, "api_key": KEY, "access_log": True}, smtp={"port": 0})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker", "smtp", "web")


def json_line(caplog: pytest.LogCaptureFixture, event: str) -> dict[str, object]:
    records = [r for r in caplog.records if getattr(r, "event", None) == event]
    assert records, f"no {event} line"
    return dict(json.loads(JsonFormatter(with_time=False).format(records[-1])))


async def test_accepted_mail_and_task_lines_carry_their_fields(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rt = runtime_of(daemon)
    assert daemon.smtp is not None
    session = await rt.create_session("email-to-case", {})
    assert daemon.web is not None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(f"http://127.0.0.1:{daemon.web.port}/api/sessions/{session.id}/address", json={}) as r:
            address = str((await r.json())["address"])
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "x@elsewhere.test", address, "Hi", "<abc.1@elsewhere.test>"
    msg.set_content("hello")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", daemon.smtp.port) as client:  # type: ignore[union-attr]
            client.send_message(msg, from_addr="bounce@elsewhere.test")

    await asyncio.to_thread(send)
    line = json_line(caplog, "smtp.accepted")
    local = address.partition("@")[0]
    assert line["peer"] == "127.0.0.1" and line["mailbox"] == local and line["size"] == len(msg.as_bytes().replace(b"\n", b"\r\n"))
    assert line["mail_from"] == "bounce@elsewhere.test" and line["message_id"] == "<abc.1@elsewhere.test>"
    assert "from=<bounce@elsewhere.test>" in str(line["message"]) and "message-id=<abc.1@elsewhere.test>" in str(line["message"])

    other = await rt.create_session("testing", {})
    task = await rt.start_background_action(other.id, "fails")
    await wait_until(lambda: any(getattr(r, "event", None) == "task.failed" for r in caplog.records),
                     what="the task.failed line")
    failed = json_line(caplog, "task.failed")
    assert failed["task"] == task.id and failed["session"] == other.id


async def test_the_access_log_keeps_tokens_out(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert daemon.web is not None
    base = f"http://127.0.0.1:{daemon.web.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/run/SECRET-TOKEN-1") as r:
            assert r.status == 403
        async with http.get(f"{base}/file/SECRET-TOKEN-3") as r:  # an e-mail part's url_for(): the token opens it
            assert r.status == 403
        async with http.get(f"{base}/healthz?token=SECRET-TOKEN-2") as r:
            assert r.status == 200
    await wait_until(lambda: sum(getattr(r, "event", None) == "http.access" for r in caplog.records) >= 3,
                     what="three access lines")
    lines = [json.loads(JsonFormatter(with_time=False).format(r)) for r in caplog.records if getattr(r, "event", None) == "http.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines[-3:]] == [
        ("GET", "/run/-", 403), ("GET", "/file/-", 403), ("GET", "/healthz", 200)]
    assert lines[-1]["peer"] == "127.0.0.1" and lines[-1]["bytes"] > 0
    assert "SECRET" not in caplog.text and all("SECRET" not in json.dumps(x) for x in lines)
