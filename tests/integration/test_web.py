"""The web edge in one process: the aiohttp app under pytest-aiohttp's test server, real HTTP and WebSocket clients.

The daemon runs without its web role; the ``web`` fixture builds the web edge on the daemon's runtime
and runs its event poll and heartbeat, as the daemon does, and ``aiohttp_client`` serves its app.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.web.app import WebServer
from mailgate.mail.auth import StaticResolver
from mailgate.metrics import sample
from tests.helpers import make_config, queue_processed, runtime_of, wait_until

pytestmark = pytest.mark.asyncio
KEY = "test-api-key-123"
AiohttpClient = Callable[..., Awaitable[TestClient[aioweb.Request, aioweb.Application]]]
Http = TestClient[aioweb.Request, aioweb.Application]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, web={"port": 0, "api_key": KEY, "event_history": 5, "send_queue": 64,
                                      "max_messages_per_second": 20, "max_frame_bytes": 4096,
                                      "event_poll_interval": 0.1},
                       smtp={"port": 0})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:  # the conftest's daemon runs these; the web edge is the ``web`` fixture
    return ("worker", "smtp")


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


@asynccontextmanager
async def web_edge(daemon: Daemon) -> AsyncIterator[WebServer]:
    """The web edge on the daemon's runtime, the event feed and the heartbeat running, but no listening site."""
    server = WebServer(runtime_of(daemon), daemon.config.web, daemon.inbound)
    await daemon.start_feed()
    loops = [asyncio.create_task(server.heartbeat())]
    try:
        yield server
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await server.stop()


@pytest_asyncio.fixture
async def web(daemon: Daemon) -> AsyncIterator[WebServer]:
    async with web_edge(daemon) as server:
        yield server


@pytest_asyncio.fixture
async def http(web: WebServer, aiohttp_client: AiohttpClient) -> Http:
    return await aiohttp_client(web.app, headers={"Authorization": f"Bearer {KEY}"})


async def api(http: Http, method: str, path: str, expect: int, **kw: Any) -> Any:
    async with http.request(method, path, **kw) as r:
        text = await r.text()
        assert r.status == expect, (r.status, text)
        return json.loads(text) if text and r.content_type == "application/json" else text


async def token_for(http: Http, sid: str, **body: Any) -> str:
    return str((await api(http, "POST", f"/api/sessions/{sid}/token", 201, json=body))["token"])


async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == kind:
            return dict(data)


async def test_api_session_lifecycle_and_errors(http: Http) -> None:
    s = await api(http, "POST", "/api/sessions", 201, json={"interview": "testing", "answers": {"a": 1}})
    sid = s["id"]
    assert (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"] == {"a": 1}
    result = await api(http, "POST", f"/api/sessions/{sid}/actions/set", 200, json={"arguments": {"b": 2}})
    assert result["saved"] is True
    assert (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"] == {"a": 1, "b": 2}
    task = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "whoami_bg", "user": {"id": "u1"}})
    done = await api(http, "GET", f"/api/tasks/{task['id']}?wait=10", 200)
    assert done["state"] == "succeeded" and done["value"] == {"id": "u1", "admin": False}
    err = await api(http, "POST", "/api/sessions", 404, json={"interview": "nope"})
    assert "no interview named 'nope'" in err["error"]
    assert "has no action" in (await api(http, "POST", f"/api/sessions/{sid}/actions/nope", 404))["error"]
    assert "not valid JSON" in (await api(http, "POST", "/api/sessions", 400, data=b"{"))["error"]
    assert "'interview' is required" in (await api(http, "POST", "/api/sessions", 400, json={}))["error"]
    assert "must be str" in (await api(http, "POST", "/api/sessions", 400, json={"interview": 3}))["error"]
    assert "cannot be saved" in (await api(http, "POST", f"/api/sessions/{sid}/actions/unserialisable", 422))["error"]
    await api(http, "DELETE", f"/api/sessions/{sid}", 204)
    await api(http, "GET", f"/api/sessions/{sid}", 404)


async def test_api_key_required(http: Http) -> None:
    async with aiohttp.ClientSession() as anon:  # the same server, without the API key
        async with anon.post(http.make_url("/api/sessions"), json={"interview": "testing"}) as r:
            assert r.status == 401 and "API key" in (await r.json())["error"]
        for path in ("/api/openapi.json", "/metrics"):  # the operator's paths want the key too
            async with anon.get(http.make_url(path)) as r:
                assert r.status == 401 and "API key" in (await r.json())["error"], path
        async with http.get("/api/openapi.json") as r:
            assert r.status == 200 and (await r.json())["openapi"].startswith("3.")
        async with anon.get(http.make_url("/healthz")) as r:
            assert r.status == 200 and (await r.json())["ok"] is True


async def test_address_emails_raw_and_attachment_over_api(daemon: Daemon, http: Http) -> None:
    import smtplib
    from email.message import EmailMessage

    assert daemon.smtp is not None
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "email-to-case-simple"}))["id"]
    address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={"key": "docs"}))["address"]
    assert (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={"key": "docs"}))["address"] == address
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@elsewhere.test", address, "With file"
    msg.set_content("see attached")
    msg.add_attachment(b"PDFDATA", maintype="application", subtype="pdf", filename="../evil name.pdf")
    port = daemon.smtp.port
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)
    await queue_processed(runtime_of(daemon))
    emails = await api(http, "GET", f"/api/sessions/{sid}/emails", 200)
    assert [e["subject"] for e in emails] == ["With file"]
    full = await api(http, "GET", f"/api/emails/{emails[0]['id']}", 200)
    assert full["attachments"][0]["filename"] == "evil name.pdf" and full["authentication"]["dkim"] == []
    async with http.get(f"/api/emails/{emails[0]['id']}/raw") as r:
        assert r.status == 200 and b"Subject: With file" in await r.read()
    async with http.get(f"/api/emails/{emails[0]['id']}/attachments/0") as r:
        assert r.status == 200 and await r.read() == b"PDFDATA" and r.content_type == "application/pdf"
    await api(http, "GET", f"/api/emails/{emails[0]['id']}/attachments/1", 404)


async def test_received_mail_parts_are_file_objects_with_signed_urls(daemon: Daemon, http: Http) -> None:
    import smtplib
    from email.message import EmailMessage

    from mailgate.core.context import CURRENT, User
    from mailgate.core.daemail import DAEmail

    assert daemon.smtp is not None and daemon.runtime is not None
    runtime = daemon.runtime
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "email-to-case-simple"}))["id"]
    address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={}))["address"]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@elsewhere.test", address, "Parts"
    msg.set_content("plain café")
    msg.add_alternative("<p>rich <script>alert(1)</script></p>", subtype="html")
    msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="Data.CSV")
    msg.add_attachment(b"%PDF-1", maintype="application", subtype="pdf", filename="scan")
    port = daemon.smtp.port

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)
    await queue_processed(runtime)
    rec = (await runtime.emails.list(session_id=sid))[0]
    email = DAEmail(rec.id, rec, runtime.emails, asyncio.get_running_loop())
    ctx = runtime.new_context("foreground", sid, runtime.registry.get("email-to-case-simple"), "x", {}, User())
    token = CURRENT.set(ctx)
    try:
        text, html = email.body_text, email.body_html
        assert text is not None and html is not None
        assert text.slurp().rstrip() == "plain café" and text.startswith("plain")  # still the text itself
        assert (text.filename, text.mimetype, text.extension) == ("body.txt", "text/plain", "txt")
        assert (html.filename, html.mimetype, html.extension) == ("body.html", "text/html", "html")
        assert "<script>" in html.slurp() and html.slurp(auto_decode=False) == str(html).encode()
        assert await asyncio.to_thread(Path(text.path()).read_bytes) == str(text).encode()
        csv, pdf = email.attachment
        assert (csv.filename, csv.mimetype, csv.extension) == ("Data.CSV", "text/csv", "csv")
        assert (pdf.filename, pdf.mimetype, pdf.extension) == ("scan", "application/pdf", "pdf")
        assert await asyncio.to_thread(csv.slurp) == "a,b\n1,2\n"
        assert await asyncio.to_thread(pdf.slurp) == b"%PDF-1"
        pdf_path = await asyncio.to_thread(pdf.path)
        assert pdf_path.endswith(".pdf") and await asyncio.to_thread(Path(pdf_path).read_bytes) == b"%PDF-1"
        assert (await asyncio.to_thread(Path(pdf_path).stat)).st_mode & 0o077 == 0  # private to mailgate's user
        urls = [html.url_for(), text.url_for(), pdf.url_for(), csv.url_for(seconds=-1)]
    finally:
        CURRENT.reset(token)
    bare = aiohttp.ClientSession()  # a signed URL needs no API key
    try:
        async with bare.get(http.make_url(urls[0])) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "<script>" in await r.text() and r.headers["Content-Security-Policy"] == "sandbox"
        async with bare.get(http.make_url(urls[1])) as r:
            assert r.status == 200 and (await r.text()).rstrip() == "plain café"
        async with bare.get(http.make_url(urls[2])) as r:
            assert r.status == 200 and await r.read() == b"%PDF-1" and r.content_type == "application/pdf"
        async with bare.get(http.make_url(urls[3])) as r:
            assert r.status == 403  # expired
        async with bare.get(http.make_url(urls[2][:-3] + "abc")) as r:
            assert r.status == 403  # forged
    finally:
        await bare.close()


# -- malformed requests: a 4xx with a JSON error that says what to send, and no traceback in the log --

def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def raw_request(http: Http, request_line: bytes, *headers: bytes, body: bytes = b"") -> tuple[int, str, dict[str, Any]]:
    """One request written byte for byte (aiohttp's client only sends headers it can encode): status, Allow, JSON."""
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        writer.write(b"\r\n".join([request_line, b"Host: localhost", b"Connection: close",
                                   b"Content-Length: %d" % len(body), *headers, b"", body]))
        head, _, payload = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields.get("Content-Type", "").startswith("application/json"), (lines, payload)
    return int(lines[0].split()[1]), fields.get("Allow", ""), json.loads(payload)


async def test_finding_1_a_non_utf8_authorization_header_is_a_401(http: Http, caplog: pytest.LogCaptureFixture) -> None:
    for value in (b"Bearer \xff\xfe", b"Bearer " + KEY.encode() + b"\xe9", b"\xc3"):
        status, _, data = await raw_request(http, b"GET /api/sessions/x HTTP/1.1", b"Authorization: " + value)
        assert status == 401 and "Authorization: Bearer <key>" in data["error"], (value, status, data)
    status, _, _ = await raw_request(http, b"GET /api/sessions/x HTTP/1.1", b"Authorization: Bearer " + KEY.encode())
    assert status == 404  # the right key still opens the API
    no_tracebacks(caplog)


@pytest.mark.parametrize("levels", [150, 500, 1000, 100_000])
async def test_finding_2_deeply_nested_json_is_a_400(http: Http, caplog: pytest.LogCaptureFixture, levels: int) -> None:
    deep = "[" * levels + "]" * levels
    err = await api(http, "POST", "/api/sessions", 400, data='{"interview": "testing", "answers": {"a": ' + deep + "}}",
                    headers={"Content-Type": "application/json"})
    assert "deeper than" in err["error"] and "flatten" in err["error"]
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    err = await api(http, "POST", f"/api/sessions/{sid}/actions/set", 400, data='{"arguments": {"a": ' + deep + "}}")
    assert "deeper than" in err["error"]
    no_tracebacks(caplog)


async def test_nesting_within_the_limit_is_stored_and_too_deep_answers_from_an_action_are_a_422(http: Http) -> None:
    ok = {"a": json.loads("[" * 90 + "]" * 90)}
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing", "answers": ok}))["id"]
    assert (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"] == ok
    # the body is shallow enough, but the action nests it under more levels than answers hold
    from mailgate.core.answers import MAX_DEPTH
    arguments = {"x": json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)}
    err = await api(http, "POST", f"/api/sessions/{sid}/actions/set", 422, json={"arguments": arguments})
    assert f"deeper than {MAX_DEPTH} levels" in err["error"]


@pytest.mark.parametrize(("body", "expect"), [
    ('{"interview": "testing", "answers": {"a": "\\ud800"}}', "lone UTF-16 surrogate"),
    ('{"interview": "testing", "answers": {"\\udfff": 1}}', "lone UTF-16 surrogate"),
    ('{"interview": "testing\\udc80"}', "lone UTF-16 surrogate"),
    ('{"interview": "testing", "answers": {"a": NaN}}', "NaN is not JSON"),
    ('{"interview": "testing", "answers": {"a": -Infinity}}', "-Infinity is not JSON"),
    ('{"interview": "testing", "answers": {"a": 1e999}}', "too large"),
    ('{"interview": "testing", "answers": {"a": ' + "9" * 5000 + "}}", "not valid JSON"),
    (b'{"interview": "testing", "answers": {"a": "\xff"}}', "not valid JSON"),
])
async def test_finding_3_surrogates_and_numbers_json_cannot_hold_are_a_400(
        http: Http, caplog: pytest.LogCaptureFixture, body: str | bytes, expect: str) -> None:
    err = await api(http, "POST", "/api/sessions", 400, data=body, headers={"Content-Type": "application/json"})
    assert expect in err["error"]
    no_tracebacks(caplog)


async def test_finding_3_a_body_that_is_not_in_its_content_encoding_is_a_400(http: Http, caplog: pytest.LogCaptureFixture) -> None:
    import gzip
    for encoding, data in [("gzip", b'{"interview": "testing"}'), ("deflate", b"\x00\x01garbage"),
                           ("gzip", b"\x1f\x8b" + b"\xff" * 30)]:
        err = await api(http, "POST", "/api/sessions", 400, data=data,
                        headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        assert "Content-Encoding" in err["error"] and "uncompressed" in err["error"], (encoding, err)
    created = await api(http, "POST", "/api/sessions", 201, data=gzip.compress(b'{"interview": "testing"}'),
                        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert created["interview"] == "testing"  # real gzip is fine
    # an encoding aiohttp cannot decode at all is refused by its HTTP parser, before the application
    async with http.post("/api/sessions", data=b"{}", headers={"Content-Encoding": "br"}) as r:
        assert r.status == 400 and "content-encoding" in (await r.text()).lower()
    no_tracebacks(caplog)
    assert any("unparsable HTTP request" in r.getMessage() for r in caplog.records if r.name == "aiohttp.server")


async def test_finding_4_wait_must_be_a_finite_number_and_is_capped(tmp_path: Path, aiohttp_client: AiohttpClient,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, web={"port": 0, "api_key": KEY})
    async with Daemon(config, roles=()) as d, web_edge(d) as server:  # no worker: the task stays queued
        http = await aiohttp_client(server.app, headers={"Authorization": f"Bearer {KEY}"})
        sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
        task = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "noop"})
        for wait in ("nan", "NaN", "inf", "-inf", "1e999", "-1", "abc", "", "0x10"):
            err = await asyncio.wait_for(api(http, "GET", f"/api/tasks/{task['id']}", 400, params={"wait": wait}), 5)
            assert "wait must be a number of seconds from 0 to 60" in err["error"], wait
        state = await asyncio.wait_for(api(http, "GET", f"/api/tasks/{task['id']}?wait=0.2", 200), 5)
        assert state["state"] == "queued"
        await asyncio.wait_for(api(http, "GET", "/api/tasks/nope?wait=0.2", 404), 5)
        assert d.runtime is not None and "nope" not in d.runtime.tasks._finished  # no waiter kept for a task that is not there
    no_tracebacks(caplog)


async def test_finding_4_a_405_says_which_methods_are_allowed(http: Http) -> None:
    for method, path, allowed in [("DELETE", "/api/sessions", {"POST"}), ("PUT", "/api/sessions/x", {"GET", "HEAD", "DELETE"}),
                                  ("TRACE", "/api/tasks/x", {"GET", "HEAD"})]:
        async with http.request(method, path) as r:
            assert r.status == 405 and set(r.headers["Allow"].split(",")) == allowed, (method, path, r.headers.get("Allow"))
            assert "not allowed" in (await r.json())["error"]


async def test_an_oversized_body_is_a_json_413_as_documented(http: Http) -> None:
    err = await api(http, "POST", "/api/sessions", 413, data=io.BytesIO(b" " * (1024 * 1024 + 1)), headers={"Content-Type": "application/json"})
    assert "larger than 1048576 bytes" in err["error"]
    doc = await api(http, "GET", "/api/openapi.json", 200)
    assert "413" in doc["paths"]["/api/sessions"]["post"]["responses"]


async def test_finding_4_the_openapi_document_names_each_interviews_actions(daemon: Daemon, http: Http) -> None:
    doc = await api(http, "GET", "/api/openapi.json", 200)
    registry = runtime_of(daemon).registry
    per_interview = doc["x-mailgate-interviews"]
    assert per_interview == {iv.name: {"actions": sorted(iv.actions)} for iv in registry}
    run_action = doc["paths"]["/api/sessions/{id}/actions/{action}"]
    action = next(p for p in run_action["parameters"] if p["name"] == "action")
    start_task = doc["paths"]["/api/sessions/{id}/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # no global enum: a value valid for one interview is not valid for another
    assert "enum" not in action["schema"] and "enum" not in start_task["properties"]["action"]
    assert "save_email" in per_interview["email-to-case"]["actions"] and "save_email" not in per_interview["testing"]["actions"]
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    # an action of another interview is the body's mistake (422); the session itself is there
    err = await api(http, "POST", f"/api/sessions/{sid}/tasks", 422, json={"action": "save_email"})
    assert "has no action 'save_email'" in err["error"]
    assert "has no action" in (await api(http, "POST", f"/api/sessions/{sid}/actions/save_email", 404))["error"]
    assert "422" in doc["paths"]["/api/sessions/{id}/tasks"]["post"]["responses"]


async def test_ws_push_of_task_notification_and_two_tabs(daemon: Daemon, http: Http) -> None:
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "background_action_flash"}))["id"]
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as tab1, http.ws_connect(f"/ws?token={token}") as tab2:
        welcome = await receive(tab1, "welcome")
        assert welcome["session"] == sid and welcome["checkin_interval"] == 6.0
        await receive(tab2, "welcome")
        await tab1.send_json({"type": "run", "ref": 1, "action": "start", "arguments": {"value_to_add": 2}})
        assert (await receive(tab1, "result"))["result"]["saved"] is True
        for tab in (tab1, tab2):
            while True:
                event = await receive(tab, "event")
                if event["kind"] == "command":
                    break
            assert event["data"] == {"command": "flash", "message": "The answer is 555."}


async def test_ws_resume_gets_exactly_the_missed_events(daemon: Daemon, http: Http) -> None:
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as ws:
        last = (await receive(ws, "welcome"))["last_event"]
        await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "noop"})
        first = await receive(ws, "event")
    # disconnected: three more tasks finish
    for _ in range(3):
        t = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "noop"})
        await api(http, "GET", f"/api/tasks/{t['id']}?wait=10", 200)
    async with http.ws_connect(f"/ws?token={token}&last={first['id']}") as ws:
        assert (await receive(ws, "welcome"))["last_event"] == first["id"]
        missed = [await receive(ws, "event") for _ in range(3)]
        assert [e["kind"] for e in missed] == ["task"] * 3 and len({e["id"] for e in missed}) == 3
        assert all(e["id"] > first["id"] for e in missed) and missed == sorted(missed, key=lambda e: e["id"])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.5)  # nothing more: exactly the missed ones
    assert first["id"] > last
    # too far behind for the bounded history (5 events): reset
    for _ in range(6):
        t = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "noop"})
        await api(http, "GET", f"/api/tasks/{t['id']}?wait=10", 200)
    async with http.ws_connect(f"/ws?token={token}&last={first['id']}") as ws:
        await receive(ws, "reset")


async def test_ws_token_checks(daemon: Daemon, http: Http) -> None:
    assert daemon.runtime is not None
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    other = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    good = await token_for(http, sid)
    expired = daemon.runtime.signer.sign("browser", -1, s=sid, u="{}")
    run_kind = daemon.runtime.signer.sign("run", 60, s=sid, a="noop", g="{}", u="{}")
    forged = good[:-5] + ("A" if good[-5] != "A" else "B") + good[-4:]
    for bad, status in [("garbage", 401), (forged, 401), (expired, 401), (run_kind, 401)]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"/ws?token={bad}")
        assert info.value.status == status
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"/ws?token={good}", headers={"Origin": "https://evil.test"})
    assert info.value.status == 403
    # a token is bound to its session: the other session's events never reach it
    async with http.ws_connect(f"/ws?token={good}") as ws:
        await receive(ws, "welcome")
        t = await api(http, "POST", f"/api/sessions/{other}/tasks", 202, json={"action": "noop"})
        await api(http, "GET", f"/api/tasks/{t['id']}?wait=10", 200)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.5)


async def test_ws_oversized_frame_and_flood(daemon: Daemon, http: Http) -> None:
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_str(json.dumps({"type": "checkin", "action": "set", "fields": {"x": "y" * 10_000}}))
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 1009
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        closes: list[Any] = []

        async def reader() -> None:  # keeps up with the replies, so only the rate limit can close us
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    closes.append(msg.data)

        reading = asyncio.create_task(reader())
        for i in range(200):
            if ws.closed or closes:
                break
            await ws.send_str(json.dumps({"type": "nonsense", "ref": i}))
        await asyncio.wait_for(reading, 10)
        assert closes == [1008] or ws.close_code == 1008
    # the session is unharmed and a well-behaved client still works
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_json({"type": "checkin", "ref": 7, "action": "set", "fields": {"x": 1}, "changed": "x"})
        reply = await receive(ws, "checkin")
        assert reply["ref"] == 7 and reply["saved"] is True


async def test_checkin_saves_only_changes_and_returns_commands(daemon: Daemon, http: Http) -> None:
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing", "answers": {"x": 1}}))["id"]
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_json({"type": "checkin", "ref": 1, "action": "set", "fields": {"x": 1}, "changed": None})
        first = await receive(ws, "checkin")
        # "_changed" is added to the arguments, as docassemble does, so the first check-in saves it
        await ws.send_json({"type": "checkin", "ref": 2, "action": "set", "fields": {"x": 1}, "changed": None})
        second = await receive(ws, "checkin")
        assert first["saved"] is True and second["saved"] is False
        await ws.send_json({"type": "checkin", "ref": 3, "action": "nope", "fields": {}})
        assert "has no action 'nope'" in (await receive(ws, "error"))["error"]


async def test_slow_client_is_dropped_without_stalling_others(web: WebServer, http: Http) -> None:
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    token = await token_for(http, sid)
    dropped = sample("mailgate_slow_clients_dropped_total")
    async with http.ws_connect(f"/ws?token={token}") as fast:
        await receive(fast, "welcome")
        # a client that falls behind by more than its queue (64 messages) is dropped
        conn = next(iter(web.hub.connections[sid]))
        assert conn.queue_limit == 64
        for i in range(100):
            conn.send({"type": "filler", "i": i})
        assert conn.dropped
        t = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "noop"})
        await api(http, "GET", f"/api/tasks/{t['id']}?wait=10", 200)
        assert sample("mailgate_slow_clients_dropped_total") == dropped + 1


async def test_url_action_and_metrics(daemon: Daemon, http: Http) -> None:
    assert daemon.runtime is not None
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    from mailgate.core.context import User
    rec = await daemon.runtime.get_session(sid)
    ctx = daemon.runtime.new_context("foreground", rec.id, daemon.runtime.registry.get("testing"), "x", {}, User(id="u9"))
    url = daemon.runtime.url_for_action(ctx, "whoami", {})
    async with http.get(url) as r:
        assert r.status == 200 and (await r.json()) == {"id": "u9", "logged_in": True, "admin": False}
    async with http.get(url[:-3] + "abc") as r:
        assert r.status == 403
    async with http.get("/metrics") as r:
        text = await r.text()
    assert "mailgate_ws_connections 0" in text and 'mailgate_tasks{state="queued"}' in text
    young = [line.split()[-1] for line in text.splitlines() if line.startswith('python_gc_collections_total{generation="0"}')]
    assert len(young) == 1 and 0 < float(young[0]) <= gc.get_stats()[0]["collections"]


async def test_parameters_added_to_a_url_action_update_url_args(daemon: Daemon, http: Http) -> None:
    # docassemble updates url_args from the parameters of each visit's URL; the signed URL of
    # interview_url_action() is such a visit (a link in an e-mail with ?ref=... appended)
    assert daemon.runtime is not None
    s = await api(http, "POST", "/api/sessions", 201, json={"interview": "testing", "url_args": {"from": "start", "n": 1}})
    from mailgate.core.context import User
    ctx = daemon.runtime.new_context("foreground", s["id"], daemon.runtime.registry.get("testing"), "x", {}, User())
    url = daemon.runtime.url_for_action(ctx, "incr", {})
    async with http.get(url + "?ref=newsletter&from=mail") as r:
        assert r.status == 200
    variables = (await api(http, "GET", f"/api/sessions/{s['id']}/variables", 200))["variables"]
    assert variables["url_args"] == {"from": "mail", "n": 1, "ref": "newsletter"} and variables["counter"] == 1
    async with http.get(url + "?odd=%ED%A0%80%FF") as r:  # not UTF-8: still a parameter, never a 500
        assert r.status == 200, await r.text()
    async with http.get(url) as r:  # no parameters: url_args as they were
        assert r.status == 200
    variables = (await api(http, "GET", f"/api/sessions/{s['id']}/variables", 200))["variables"]
    assert variables["url_args"]["ref"] == "newsletter" and variables["counter"] == 3


async def test_a_command_from_a_foreground_action_reaches_every_tab(daemon: Daemon, http: Http) -> None:
    sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as tab1, http.ws_connect(f"/ws?token={token}") as tab2:
        await receive(tab1, "welcome")
        await receive(tab2, "welcome")
        result = await api(http, "POST", f"/api/sessions/{sid}/actions/announce", 200,
                           json={"arguments": {"message": "Saved by the office"}})
        assert result["commands"] == [{"command": "flash", "message": "Saved by the office"}]
        for tab in (tab1, tab2):
            event = await receive(tab, "event")
            assert event["kind"] == "command" and event["data"]["message"] == "Saved by the office"
        plain = await api(http, "POST", f"/api/sessions/{sid}/actions/plain_value", 200)
        assert plain["data"] == 42 and plain["commands"] == []
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(tab1.receive(), 0.3)  # a plain value is not pushed


async def test_heartbeat_pings_quiet_pages_and_drops_dead_ones(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    config = make_config(tmp_path, web={"port": 0, "api_key": KEY, "heartbeat": 1.0})
    async with Daemon(config, roles=()) as d, web_edge(d) as server:
        http = await aiohttp_client(server.app, headers={"Authorization": f"Bearer {KEY}"})
        sid = (await api(http, "POST", "/api/sessions", 201, json={"interview": "testing"}))["id"]
        token = await token_for(http, sid)
        # a page whose browser answers pings (aiohttp's client does while it reads), and a dead one
        async with http.ws_connect(f"/ws?token={token}") as alive, \
                http.ws_connect(f"/ws?token={token}", autoping=False) as dead:
            await receive(alive, "welcome")
            await receive(dead, "welcome")
            alive_messages: list[aiohttp.WSMessage] = []

            async def read_alive() -> None:
                async for msg in alive:
                    alive_messages.append(msg)

            reading = asyncio.create_task(read_alive())
            ping = await asyncio.wait_for(dead.receive(), 5)  # quiet for 1 s: pinged
            assert ping.type == aiohttp.WSMsgType.PING
            closed = await asyncio.wait_for(dead.receive(), 5)  # no pong within 0.5 s: closed
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert dead.close_code == 1001
            # the live page was pinged too, answered, and is still served
            assert not alive.closed
            await alive.send_json({"type": "checkin", "ref": 1, "action": "set", "fields": {"x": 1}, "changed": "x"})

            async def replied() -> bool:
                return any(m.type == aiohttp.WSMsgType.TEXT and json.loads(m.data).get("ref") == 1 for m in alive_messages)

            await wait_until(replied, what="the live page's check-in reply")
            reading.cancel()


async def test_cross_session_functions_over_the_api(daemon: Daemon, http: Http) -> None:
    s = await api(http, "POST", "/api/sessions", 201, json={"interview": "testing", "answers": {"a": 1, "gone": 2},
                                                             "url_args": {"ref": "x7", "n": 3}})
    sid = s["id"]
    assert s["answers"]["url_args"] == {"ref": "x7", "n": 3}
    saved = await api(http, "POST", f"/api/sessions/{sid}/variables", 200,
                      json={"variables": {"b": [1, 2]}, "delete": ["gone"], "interview": "testing"})
    assert saved == {"id": sid, "version": 2}
    got = await api(http, "GET", f"/api/sessions/{sid}/variables?interview=testing", 200)
    assert got["variables"] == {"a": 1, "b": [1, 2], "url_args": {"ref": "x7", "n": 3}} and got["version"] == 2
    other = await api(http, "POST", "/api/sessions", 201,
                      json={"interview": "testing", "answers": {"_internal": {"tasks": {"t": 1}}, "k": 1}})
    assert "_internal" in (await api(http, "GET", f"/api/sessions/{other['id']}", 200))["answers"]
    assert (await api(http, "GET", f"/api/sessions/{other['id']}/variables", 200))["variables"] == {"k": 1}
    await api(http, "GET", f"/api/sessions/{sid}/variables?interview=other", 422)
    await api(http, "POST", f"/api/sessions/{sid}/variables", 422, json={"variables": {"c": 1}, "interview": "other"})
    await api(http, "POST", "/api/sessions/nope/variables", 404, json={"variables": {"c": 1}})
    assert "_internal" in (await api(http, "POST", f"/api/sessions/{sid}/variables", 422,
                                     json={"variables": {"_internal": {}}}))["error"]
    await api(http, "POST", f"/api/sessions/{sid}/variables", 400, json={"delete": [1]})
    store = runtime_of(daemon).store
    assert await store.try_acquire_lease(sid, "other-host#1", 30, 30) is None
    busy = await api(http, "POST", f"/api/sessions/{sid}/variables", 409, json={"variables": {"c": 1}})
    assert "locked by other-host#1" in busy["error"]
    # a deletion is a writer too: it waits for the lease and never deletes under a running action
    assert "locked by other-host#1" in (await api(http, "DELETE", f"/api/sessions/{sid}", 409))["error"]
    await store.release_lease(sid, "other-host#1")
    assert "c" not in (await api(http, "GET", f"/api/sessions/{sid}/variables", 200))["variables"]
    await api(http, "DELETE", f"/api/sessions/{sid}", 204)
    await api(http, "DELETE", f"/api/sessions/{sid}", 404)
    bad = await api(http, "POST", "/api/sessions", 422, json={"interview": "testing", "answers": {"_internal": [1]}})
    assert "_internal" in bad["error"] and "dict" in bad["error"]


async def test_stash_and_retrieve_over_the_api(daemon: Daemon, http: Http) -> None:
    tokens = await api(http, "POST", "/api/stash", 201, json={"data": {"name": "Ann", "n": [1, 2]}, "expire": 3600})
    assert set(tokens) == {"stash_key", "secret"}
    wrong = {"stash_key": tokens["stash_key"], "secret": tokens["stash_key"], "delete": True}
    await api(http, "POST", "/api/stash/retrieve", 404, json=wrong)  # deletes nothing
    got = await api(http, "POST", "/api/stash/retrieve", 200, json={**tokens, "refresh": 60})
    assert got == {"data": {"name": "Ann", "n": [1, 2]}}
    assert (await api(http, "POST", "/api/stash/retrieve", 200, json={**tokens, "delete": True}))["data"]["name"] == "Ann"
    await api(http, "POST", "/api/stash/retrieve", 404, json=tokens)
    await api(http, "POST", "/api/stash", 400, json={"expire": 5})
    assert "positive" in (await api(http, "POST", "/api/stash", 422, json={"data": 1, "expire": 0}))["error"]
    await api(http, "POST", "/api/stash/retrieve", 400, json={"stash_key": "k"})
    tokens = await api(http, "POST", "/api/stash", 201, json={"data": None})
    assert await api(http, "POST", "/api/stash/retrieve", 200, json=tokens) == {"data": None}  # found: a stashed null
