"""The web edge on a full store (an in-process daemon, a real capped SQLite file, real HTTP/WebSocket).

The HTTP API answers 503 with Retry-After; a WebSocket check-in that cannot be saved gets an error
reply and the socket stays open for the next one; once room comes back the same daemon saves again,
with no restart. The subprocess version of the whole scenario
(SMTP, CLI, restart) is tests/e2e/test_store_full.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import StoreFull
from tests.helpers import make_config

pytestmark = pytest.mark.asyncio
KEY = "test-api-key-full"
BIG = "x" * 20_000  # needs pages of its own


@pytest_asyncio.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = make_config(tmp_path, store={"path": str(tmp_path / "mailgate.sqlite3"), "max_pages": 100},
                         web={"port": 0, "api_key": KEY, "event_poll_interval": 0.05})
    async with Daemon(config, roles=("web",)) as d:
        yield d


async def fill(daemon: Daemon) -> None:
    assert daemon.store is not None
    for i in range(100):
        try:
            await daemon.store.create_session(f"fill{i}", "testing", json.dumps({"big": BIG}), "{}")
        except StoreFull:
            return
    raise AssertionError("the capped store never filled up")


async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == kind:
            return dict(data)


async def test_full_store_http_503_and_websocket_lives(daemon: Daemon) -> None:
    assert daemon.web is not None
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.web.port}", headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post("/api/sessions", json={"interview": "testing", "answers": {"x": 1}}) as r:
            assert r.status == 201
            sid = (await r.json())["id"]
        async with http.post(f"/api/sessions/{sid}/token", json={}) as r:
            token = (await r.json())["token"]
        async with http.ws_connect(f"/ws?token={token}") as ws:
            await receive(ws, "welcome")
            await fill(daemon)

            async with http.post("/api/sessions", json={"interview": "testing", "answers": {"big": BIG}}) as r:
                assert r.status == 503
                assert int(r.headers["Retry-After"]) > 0
                assert "is full" in (await r.json())["error"]
            async with http.get(f"/api/sessions/{sid}") as r:
                assert r.status == 200  # reads still work

            await ws.send_json({"type": "checkin", "ref": 1, "action": "set", "fields": {"x": BIG}, "changed": None})
            error = await receive(ws, "error")
            assert error["ref"] == 1 and "is full" in error["error"]
            await ws.send_json({"type": "checkin", "ref": 2, "action": "set", "fields": {"x": 1}, "changed": None})
            reply = await receive(ws, "checkin")  # the same socket serves the next check-in
            assert reply["ref"] == 2 and not ws.closed

            # room comes back (as when an operator frees disk space): the same daemon, no restart
            assert daemon.store is not None
            for i in range(100):
                await daemon.store.delete_session(f"fill{i}")
            async with http.post("/api/sessions", json={"interview": "testing", "answers": {"big": BIG}}) as r:
                assert r.status == 201, await r.text()
            await ws.send_json({"type": "checkin", "ref": 3, "action": "set", "fields": {"x": BIG}, "changed": None})
            reply = await receive(ws, "checkin")
            assert reply["ref"] == 3 and reply["saved"] is True
    assert daemon.failed is None
