"""/ws against what real pages meet and what a hostile client sends (issue 15, findings 5-10): real
aiohttp WebSocket clients (and one raw socket that stops reading) against the real web edge."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.web.app import WebServer
from mailgate.edges.web.hub import Connection
from mailgate.errors import ActionError
from mailgate.mail.auth import StaticResolver
from mailgate.metrics import sample
from mailgate.store.base import Changes, NewEvent
from tests.helpers import make_config, runtime_of, wait_until
from tests.integration.test_web import KEY, AiohttpClient, Http, api, receive, token_for, web_edge

pytestmark = pytest.mark.asyncio
PUBLIC = "https://help.example.org"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, web={"port": 0, "api_key": KEY, "event_history": 300, "send_queue": 64,
                                      "max_messages_per_second": 20, "max_frame_bytes": 65536,
                                      "event_poll_interval": 0.1, "public_url": PUBLIC,
                                      "max_sockets_per_token": 3, "max_sockets_per_address": 5},
                       smtp={"port": 0})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:  # the web edge is the ``web`` fixture, as in test_web.py
    return ("worker",)


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


@pytest_asyncio.fixture
async def web(daemon: Daemon) -> AsyncIterator[WebServer]:
    async with web_edge(daemon) as server:
        yield server


@pytest_asyncio.fixture
async def http(web: WebServer, aiohttp_client: AiohttpClient) -> Http:
    return await aiohttp_client(web.app, headers={"Authorization": f"Bearer {KEY}"})


async def new_session(http: Http, interview: str = "testing", **answers: Any) -> str:
    return str((await api(http, "POST", "/api/sessions", 201, json={"interview": interview, "answers": answers}))["id"])


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> int | None:
    """Read until the server closes the socket; its close code."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):
            return ws.close_code


# -- finding 5: every frame kind counts -----------------------------------------------------------

async def test_pings_count_against_the_rate_limit(http: Http) -> None:
    token = await token_for(http, await new_session(http))
    async with http.ws_connect(f"/ws?token={token}", autoping=False) as ws:
        await receive(ws, "welcome")
        reading = asyncio.create_task(closed_with(ws, timeout=10))
        for _ in range(200):  # 20/s with bursts of 40 allowed
            if reading.done():
                break
            await ws.ping()
        assert await reading == 1008


async def test_a_binary_frame_closes_the_socket(http: Http) -> None:
    token = await token_for(http, await new_session(http))
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_bytes(b'{"type": "checkin"}')
        assert await closed_with(ws) == 1003


# -- finding 6: a dropped slow client is closed at the TCP level and leaves the gauges ----------

async def test_a_dropped_client_that_stopped_reading_is_disconnected(web: WebServer, http: Http) -> None:
    sid = await new_session(http)
    token = await token_for(http, sid)
    loop = asyncio.get_running_loop()
    dropped, pages = sample("mailgate_slow_clients_dropped_total"), sample("mailgate_ws_connections")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", http.port))  # type: ignore[arg-type]
        await loop.sock_sendall(sock, (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{http.port}\r\n"
                                       "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        await wait_until(lambda: sid in web.hub.connections, what="the page in the hub")
        conn: Connection = next(iter(web.hub.connections[sid]))
        big = {"type": "filler", "pad": "x" * 1_000_000}

        def kernel_full() -> bool:  # the page reads nothing: its TCP buffers fill up, and the sender stalls
            if conn.queue:
                return True  # the last one was not taken within a poll: the sender is waiting for the socket
            conn.send(big)
            return False

        await wait_until(kernel_full, what="the kernel's buffers to fill")
        while not conn.dropped:
            conn.send({"type": "filler"})
        assert sample("mailgate_slow_clients_dropped_total") == dropped + 1
        await wait_until(lambda: sample("mailgate_ws_connections") == pages and sid not in web.hub.connections,
                         timeout=5, what="the dropped page to leave the hub")
        assert web.hub.per_token == {} and web.hub.per_address == {}
        async with http.get("/metrics") as r:
            assert f"mailgate_ws_connections {pages:.1f}\n" in await r.text()

        async def connection_ended() -> bool:  # aborted: what was buffered for it is gone, then EOF/reset
            try:
                return await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5) == b""
            except ConnectionResetError:
                return True

        received = 0
        while not await connection_ended():
            received += 1
            assert received < 100, "the server kept sending to a dropped page"
    finally:
        sock.close()


# -- finding 7: one bad message answers an error and the socket keeps working -----------------

async def test_bad_messages_are_answered_and_the_socket_keeps_working(daemon: Daemon, http: Http) -> None:
    sid = await new_session(http, x=0)
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        bad = [  # (message, what the error says, the ref it answers)
            ('{"type": "checkin", "ref": 1, "action": "set", "fields": {"x": "\\ud800"}, "changed": "x"}', "lone surrogate", 1),
            ('{"type": "run", "ref": 2, "action": "set", "arguments": {"\\udfff": 1}}', "lone surrogate", 2),
            ('{"type": "run", "ref": 3, "action": "set", "arguments": {"x": ' + "9" * 30 + "}}", "safe integers", 3),
            ('{"type": "run", "ref": 4, "action": "set", "arguments": {"x": NaN}}', "not a JSON number", None),
            ('{"type": "run", "ref": 5, "action": "set", "arguments": {"x": 1e999}}', "finite", 5),
            ('{"type": "run", "ref": 6, "action": "set", "arguments": {"x": ' + "[" * 40 + "]" * 40 + "}}", "nest", 6),
            ('{"type": "run", "ref": 7, "x": ' + "[" * 5000 + "]" * 5000 + "}", "nest", None),
            ('{"type": "run", "ref": "\\ud800", "action": "set"}', "lone surrogate", None),
        ]
        for text, why, ref in bad:
            await ws.send_str(text)
            error = await receive(ws, "error")
            assert why in error["error"] and error["ref"] == ref, (text[:80], error)
        # the socket and its check-in loop still work, and nothing was saved
        await ws.send_json({"type": "checkin", "ref": 8, "action": "set", "fields": {"x": 1}, "changed": "x"})
        assert (await receive(ws, "checkin"))["ref"] == 8
        await ws.send_json({"type": "run", "ref": 9, "action": "set", "arguments": {"y": "é"}})
        assert (await receive(ws, "result"))["result"]["saved"] is True
    answers = (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"]
    assert answers == {"x": 1, "_changed": "x", "y": "é"}


async def test_an_unexpected_failure_of_a_checkin_keeps_the_checkin_loop(daemon: Daemon, http: Http,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = runtime_of(daemon)
    sid = await new_session(http)
    token = await token_for(http, sid)
    real = runtime.run_checkin
    calls = 0

    async def failing_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return await real(*args)

    monkeypatch.setattr(runtime, "run_checkin", failing_once)
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_json({"type": "checkin", "ref": 1, "action": "set", "fields": {"x": 1}})
        assert "internal error" in (await receive(ws, "error"))["error"]
        await ws.send_json({"type": "checkin", "ref": 2, "action": "set", "fields": {"x": 2}})
        assert (await receive(ws, "checkin"))["ref"] == 2


# -- finding 8: catching up, reset, last -------------------------------------------------------

async def add_events(daemon: Daemon, sid: str, n: int) -> None:
    await runtime_of(daemon).commit(Changes(events=tuple(
        NewEvent(sid, "command", json.dumps({"command": "flash", "message": f"m{i}"})) for i in range(n))))


async def seen_one(daemon: Daemon, sid: str) -> int:
    """The id of an event of ``sid``, as a page that saw it would reconnect with."""
    await add_events(daemon, sid, 1)
    return (await runtime_of(daemon).session_events(sid))[-1].id


async def test_catching_up_on_more_than_the_send_queue_is_paced(daemon: Daemon, web: WebServer, http: Http) -> None:
    sid = await new_session(http)
    token = await token_for(http, sid)
    last = await seen_one(daemon, sid)
    dropped = sample("mailgate_slow_clients_dropped_total")
    await add_events(daemon, sid, 250)  # send_queue is 64, event_history 300
    async with http.ws_connect(f"/ws?token={token}&last={last}") as ws:
        await receive(ws, "welcome")
        got = [await receive(ws, "event") for _ in range(250)]
        assert [e["data"]["message"] for e in got] == [f"m{i}" for i in range(250)]
        # a check-in is answered while (or after) it catches up, and the page is still connected
        await ws.send_json({"type": "checkin", "ref": 1, "action": "set", "fields": {"x": 1}})
        assert (await receive(ws, "checkin"))["ref"] == 1
    assert sample("mailgate_slow_clients_dropped_total") == dropped


async def test_reset_replays_the_newest_window(daemon: Daemon, http: Http) -> None:
    sid = await new_session(http)
    token = await token_for(http, sid)
    last = await seen_one(daemon, sid)
    await add_events(daemon, sid, 400)  # more than event_history (300)
    async with http.ws_connect(f"/ws?token={token}&last={last}") as ws:
        await receive(ws, "reset")
        got = [await receive(ws, "event") for _ in range(300)]
        assert [e["data"]["message"] for e in got] == [f"m{i}" for i in range(100, 400)]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.3)


@pytest.mark.parametrize("last", ["1e23", "100000000000000000000000", "-1", "9223372036854775808", "٣"])
async def test_a_bad_last_event_id_is_a_400(http: Http, last: str) -> None:
    token = await token_for(http, await new_session(http))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"/ws?token={token}&last={last}")
    assert info.value.status == 400


# -- finding 9: only browser actions, bounded arguments -----------------------------------------

async def test_a_page_runs_only_the_actions_its_interview_declares(daemon: Daemon, http: Http) -> None:
    sid = await new_session(http, "email-to-case")
    token = await token_for(http, sid)
    forged = {"email": {"from_address": "boss@example.org", "subject": "forged"}}
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_json({"type": "run", "ref": 1, "action": "start"})
        assert "@" in (await receive(ws, "result"))["result"]["text"]
        await ws.send_json({"type": "run", "ref": 2, "action": "save_email", "arguments": forged})
        assert "cannot be run from a browser" in (await receive(ws, "error"))["error"]
        await ws.send_json({"type": "checkin", "ref": 3, "action": "save_email", "fields": forged})
        assert "cannot be run from a browser" in (await receive(ws, "error"))["error"]
        await ws.send_json({"type": "run", "ref": 4, "action": "incoming_email", "arguments": forged})
        assert "cannot be run from a browser" in (await receive(ws, "error"))["error"]
    answers = (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"]
    assert "emails" not in answers and "email" not in answers
    # the HTTP API (the web application, with its key) may still run the others
    assert (await api(http, "POST", f"/api/sessions/{sid}/actions/emails", 200))["data"] == []


async def test_a_browser_action_is_never_a_callback_or_a_cron_event(daemon: Daemon, http: Http) -> None:
    sid = await new_session(http)
    task = await api(http, "POST", f"/api/sessions/{sid}/tasks", 202, json={"action": "bg_calls_a_browser_action_back"})
    done = await api(http, "GET", f"/api/tasks/{task['id']}?wait=10", 200)
    assert done["state"] == "failed" and "'set' is a browser action" in done["error_message"]
    with pytest.raises(ActionError, match="is a browser action"):
        await runtime_of(daemon).run_action(sid, "set", {"x": 1}, kind="cron")
    assert "x" not in (await api(http, "GET", f"/api/sessions/{sid}", 200))["answers"]


async def test_a_huge_integer_argument_is_refused_up_front(daemon: Daemon, http: Http) -> None:
    sid = await new_session(http, "background_action_flash")
    token = await token_for(http, sid)
    async with http.ws_connect(f"/ws?token={token}") as ws:
        await receive(ws, "welcome")
        await ws.send_str('{"type": "run", "ref": 1, "action": "start", "arguments": {"value_to_add": ' + "7" * 4300 + "}}")
        assert "safe integers" in (await receive(ws, "error"))["error"]
    rec = await runtime_of(daemon).get_session(sid)
    assert "the_task" not in json.loads(rec.answers)  # no task was started


# -- finding 10: origins, hosts, proxies, caps -------------------------------------------------

async def test_a_host_that_is_not_ours_is_refused(http: Http) -> None:
    token = await token_for(http, await new_session(http))
    # DNS rebinding: the hostile name resolves to us, and the page's origin matches the Host it sends
    for host in ("evil.test", f"evil.test:{http.port}"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"/ws?token={token}", headers={"Host": host, "Origin": f"http://{host}"})
        assert info.value.status == 403


async def test_the_pages_https_origin_is_ours_behind_the_tls_proxy(http: Http) -> None:
    token = await token_for(http, await new_session(http))
    # the proxy terminates TLS and passes the Host on; public_url names the https origin
    async with http.ws_connect(f"/ws?token={token}", headers={"Host": "help.example.org", "Origin": PUBLIC}) as ws:
        await receive(ws, "welcome")
    # the proxy (on loopback, trusted by default) says so in forwarded headers
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "help.example.org:8443",
               "Origin": "https://help.example.org:8443"}
    async with http.ws_connect(f"/ws?token={token}", headers=headers) as ws:
        await receive(ws, "welcome")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:  # our name, another origin
        await http.ws_connect(f"/ws?token={token}", headers={"Host": "help.example.org", "Origin": "https://evil.test"})
    assert info.value.status == 403


async def test_sockets_per_token_and_per_address_are_capped(web: WebServer, http: Http) -> None:
    sid = await new_session(http)
    tokens = [await token_for(http, sid, ttl=600 + i) for i in range(3)]  # three different tokens
    pages = sample("mailgate_ws_connections")
    opened = [await http.ws_connect(f"/ws?token={tokens[0]}") for _ in range(3)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"/ws?token={tokens[0]}")
    assert info.value.status == 429
    opened += [await http.ws_connect(f"/ws?token={tokens[1]}") for _ in range(2)]  # 5 from this address
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"/ws?token={tokens[2]}")
    assert info.value.status == 429
    # behind a trusted proxy the cap is per forwarded client address
    other = await http.ws_connect(f"/ws?token={tokens[2]}", headers={"X-Forwarded-For": "198.51.100.7"})
    await receive(other, "welcome")
    await other.close()
    await opened.pop().close()
    await wait_until(lambda: sample("mailgate_ws_connections") == pages + len(opened), what="a socket to close")
    again = await http.ws_connect(f"/ws?token={tokens[2]}")  # room again
    await receive(again, "welcome")
    for ws in [*opened, again]:
        await ws.close()
