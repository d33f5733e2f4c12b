"""The automations routes of the HTTP API on both backends (a real SQLite file, the real PostgreSQL
server), the OpenAPI document covering every route, and the ``automation`` event reaching a real
WebSocket client of the bound session. The runner's work is its one pass, ``run_due``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.web import api, api_automations
from mailgate.edges.web.app import WebServer
from mailgate.edges.web.openapi import document
from tests.helpers import INTERVIEWS, make_config, runtime_of, wait_until
from tests.pg import create_database_async, drop_database_async

pytestmark = pytest.mark.asyncio
KEY = "automations-api-key"
AiohttpClient = Callable[..., Awaitable[TestClient[aioweb.Request, aioweb.Application]]]
Http = TestClient[aioweb.Request, aioweb.Application]
CASEWORKER = {"id": "carol", "privileges": ["caseworker"]}


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def config(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Config]:
    dsn = await create_database_async() if request.param == "postgres" else None
    try:
        yield make_config(tmp_path, store_dsn=dsn, web={"port": 0, "api_key": KEY, "event_poll_interval": 0.05},
                          interviews={"modules": (), "paths": (str(INTERVIEWS / "automated.py"),)})
    finally:
        if dsn is not None:
            await drop_database_async(dsn)


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ()


@pytest_asyncio.fixture
async def http(daemon: Daemon, aiohttp_client: AiohttpClient) -> AsyncIterator[Http]:
    server = WebServer(runtime_of(daemon), daemon.config.web, daemon.inbound)
    await daemon.start_feed()
    try:
        yield await aiohttp_client(server.app, headers={"Authorization": f"Bearer {KEY}"})
    finally:
        await server.stop()


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Bad requests, refused forms and messages get their status: the web edge logs no error for them
    (a failing step is the runner's to log, as the author's error)."""
    yield
    bad = [r for r in caplog.records if r.name.startswith(("mailgate.edges", "aiohttp")) and (r.exc_info or r.levelno >= logging.ERROR)]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def call(http: Http, method: str, path: str, expect: int, **kw: Any) -> Any:
    async with http.request(method, path, **kw) as r:
        text = await r.text()
        assert r.status == expect, (r.status, text)
        return json.loads(text) if text and r.content_type == "application/json" else text


async def step(daemon: Daemon) -> int:
    """The runner's one pass (the daemon here runs no worker role): the runs it committed."""
    return await runtime_of(daemon).automation_runner.run_due()


async def test_start_unique_list_show_form_task_and_submit(daemon: Daemon, http: Http) -> None:
    classes = await call(http, "GET", "/api/automation-classes", 200)
    review = next(c["name"] for c in classes if c["name"].endswith(".Review"))
    sid = (await call(http, "POST", "/api/sessions", 201, json={"interview": "automated"}))["id"]
    body = {"class": "Review", "session": sid, "data": {"email": "a@example.org"}}
    first = await call(http, "POST", "/api/automations", 201, json=body)
    assert first["created"] is True and first["class"] == review and first["state"] == "running"
    again = await call(http, "POST", "/api/automations", 200, json=body)
    assert (again["id"], again["created"]) == (first["id"], False)
    auto = first["id"]
    assert "no automation class named 'Nope'" in (await call(http, "POST", "/api/automations", 404, json={"class": "Nope"}))["error"]
    assert "no session" in (await call(http, "POST", "/api/automations", 404, json={**body, "session": "x"}))["error"]
    assert "unknown field(s) 'colour'" in (await call(http, "POST", "/api/automations", 400, json={**body, "colour": 1}))["error"]
    assert "'data' must be dict" in (await call(http, "POST", "/api/automations", 400, json={**body, "data": [1]}))["error"]
    assert "lacks 'email'" in (await call(http, "POST", "/api/automations", 422, json={"class": "Review"}))["error"]
    assert [a["id"] for a in await call(http, "GET", f"/api/automations?session={sid}", 200)] == [auto]
    assert await call(http, "GET", "/api/automations?state=failed", 200) == []
    await call(http, "GET", "/api/automations?state=sleepy", 400)
    await call(http, "GET", "/api/automations?colour=red", 400)

    assert await step(daemon) == 1
    tasks = await call(http, "GET", "/api/automation-tasks?user=carol&privilege=caseworker", 200)
    assert [(t["automation"], t["node"]) for t in tasks] == [(auto, "approve")]
    task = tasks[0]["step"]
    assert await call(http, "GET", "/api/automation-tasks?user=bob", 200) == []
    await call(http, "GET", "/api/automation-tasks", 400)
    path = f"/api/automation-tasks/{task}"
    # 403 for someone else, on GET and on POST (the seed checked only GET)
    assert "not assigned" in (await call(http, "GET", f"{path}?user=bob", 403))["error"]
    await call(http, "GET", path, 403)  # anonymous
    await call(http, "POST", path, 403, json={"values": {"approved": True}, "user": {"id": "bob"}})
    shown = await call(http, "GET", f"{path}?user=carol&privilege=caseworker", 200)
    assert shown["fields"][0]["name"] == "approved" and shown["description"] == "Approve the case"
    invalid = await call(http, "POST", path, 400, json={"values": {"approved": "yes"}, "user": CASEWORKER})
    assert invalid["errors"] == {"approved": "true or false expected"}
    await call(http, "POST", path, 400, json={"values": [1], "user": CASEWORKER})
    await call(http, "POST", path, 400, json={"values": {}, "user": CASEWORKER, "extra": 1})
    done = await call(http, "POST", path, 200, json={"values": {"approved": False, "note": "no"}, "user": CASEWORKER})
    assert done["automation"]["data"]["approve"] == {"approved": False, "note": "no"}
    assert "already submitted" in (await call(http, "POST", path, 409, json={"values": {"approved": True},
                                                                              "user": CASEWORKER}))["error"]
    await call(http, "GET", f"{path}?user=carol&privilege=caseworker", 409)
    await call(http, "GET", "/api/automation-tasks/nope?user=carol", 404)

    assert await step(daemon) == 1
    shown = await call(http, "GET", f"/api/automations/{auto}", 200)
    assert shown["state"] == "finished" and shown["data"]["outcome"] == "rejected"
    assert [(s["node"], s["state"]) for s in shown["steps"]] == [("approve", "done"), ("record", "done"), ("end", "done")]
    # finished: a new one with the same unique key may start
    assert (await call(http, "POST", "/api/automations", 201, json=body))["id"] != auto


async def test_messages_broadcast_retry_kill(daemon: Daemon, http: Http) -> None:
    broken = (await call(http, "POST", "/api/automations", 201, json={"class": "broken"}))["id"]
    r1 = (await call(http, "POST", "/api/automations", 201, json={"class": "Review", "data": {"email": "1@x.org"}}))["id"]
    r2 = (await call(http, "POST", "/api/automations", 201, json={"class": "Review", "data": {"email": "2@x.org"}}))["id"]
    assert await step(daemon) == 3
    assert (await call(http, "GET", f"/api/automations/{broken}", 200))["state"] == "failed"
    assert "only failed" in (await call(http, "POST", f"/api/automations/{r1}/retry", 422, json={}))["error"]
    assert (await call(http, "POST", f"/api/automations/{broken}/retry", 200))["state"] == "running"

    msg = await call(http, "POST", f"/api/automations/{r1}/messages", 202, json={"message": "ping", "token": "t"})
    assert msg["state"] == "queued"
    await call(http, "POST", f"/api/automations/{r1}/messages", 422, json={"message": "nothing"})
    await call(http, "POST", f"/api/automations/{r1}/messages", 400, json={"message": "ping", "wait": 61})
    await call(http, "POST", "/api/automations/nope/messages", 404, json={"message": "ping"})
    assert await step(daemon) == 2  # r1's ping, the retried broken one (failing again)
    assert (await call(http, "GET", f"/api/automations/{broken}", 200))["state"] == "failed"

    # the runner's pass while the request waits: it finds r2 due once the message is queued
    runner = asyncio.create_task(wait_until(lambda: step(daemon), 10, "r2's message delivered"))
    waited = await call(http, "POST", f"/api/automations/{r2}/messages", 200,
                        json={"message": "ping", "token": "w", "wait": 10})
    await runner
    assert (waited["state"], waited["result"]) == ("delivered", {"pings": 1, "token": "w"})
    r1_messages = (await call(http, "GET", f"/api/automations/{r1}", 200))["messages"]
    assert [(m["state"], m["result"]) for m in r1_messages] == [("delivered", {"pings": 1, "token": "t"})]

    cls = (await call(http, "GET", f"/api/automations/{r1}", 200))["class"]
    sent = await call(http, "POST", f"/api/automation-classes/{cls}/broadcast", 202, json={"message": "ping"})
    assert sent["broadcast_class"] == cls and sent["state"] == "queued"

    async def each_got_the_broadcast() -> bool:  # r1 and r2 in id order, hop after hop
        await step(daemon)
        pings = [[m["result"] for m in (await call(http, "GET", f"/api/automations/{a}", 200))["messages"]
                  if m["message"] == "ping" and m["state"] == "delivered"] for a in (r1, r2)]
        return pings == [[{"pings": 1, "token": "t"}, {"pings": 2, "token": None}],
                         [{"pings": 1, "token": "w"}, {"pings": 2, "token": None}]]

    await wait_until(each_got_the_broadcast, 15, "the broadcast delivered to both Reviews")
    # with wait: the answer holds the receivers' results in order once the last hop was consumed
    runner = asyncio.create_task(wait_until(lambda: step(daemon), 10, "the waited broadcast delivered"))
    ended = await call(http, "POST", f"/api/automation-classes/{cls}/broadcast", 200,
                       json={"message": "ping", "token": "b", "wait": 10})
    await runner
    assert (ended["state"], ended["results"]) == ("delivered", [{"pings": 3, "token": "b"}, {"pings": 3, "token": "b"}])
    await call(http, "POST", f"/api/automation-classes/{cls}/broadcast", 400, json={"message": "ping", "wait": 61})
    await call(http, "POST", "/api/automation-classes/Nope/broadcast", 404, json={"message": "ping"})

    await call(http, "DELETE", f"/api/automations/{r1}", 204)
    await call(http, "GET", f"/api/automations/{r1}", 404)
    await call(http, "DELETE", f"/api/automations/{r1}", 404)


async def test_the_openapi_document_covers_every_automation_route(http: Http) -> None:
    doc = await call(http, "GET", "/api/openapi.json", 200)
    assert doc == json.loads(json.dumps(document({"automated": ["noop"]})))
    for table in (api.routes, api_automations.routes):
        for route in table:
            assert isinstance(route, aioweb.RouteDef)
            if route.path.startswith("/api/") and route.path != "/api/openapi.json":
                assert route.method.lower() in doc["paths"][route.path], (route.method, route.path)
    assert {"400", "403", "409", "200"} <= set(doc["paths"]["/api/automation-tasks/{step}"]["post"]["responses"])


async def test_the_automation_event_reaches_the_sessions_browser(daemon: Daemon, http: Http) -> None:
    sid = (await call(http, "POST", "/api/sessions", 201, json={"interview": "automated"}))["id"]
    token = (await call(http, "POST", f"/api/sessions/{sid}/token", 201, json={}))["token"]
    async with http.ws_connect(f"/ws?token={token}") as ws:
        assert (await receive(ws, "welcome"))["session"] == sid
        auto = (await call(http, "POST", "/api/automations", 201,
                           json={"class": "Review", "session": sid, "data": {"email": "a@x.org"}}))["id"]
        event = await receive(ws, "event")
        assert event["kind"] == "automation" and event["data"]["id"] == auto and event["data"]["state"] == "running"
        assert await step(daemon) == 1
        event = await receive(ws, "event")  # the runner's: the form is open, and which step it is
        assert (event["kind"], event["data"]["open"]) == ("automation", ["approve"])
        [interaction] = event["data"]["interactions"]
        task = (await call(http, "GET", "/api/automation-tasks?user=carol&privilege=caseworker", 200))[0]["step"]
        assert interaction == {"step": task, "node": "approve"}
        await call(http, "POST", f"/api/automation-tasks/{task}", 200, json={"values": {"approved": True}, "user": CASEWORKER})
        event = await receive(ws, "event")
        assert event["kind"] == "automation"
        assert event["data"] == {"id": auto, "class": event["data"]["class"], "state": "running", "open": ["record"],
                                 "interactions": []}


async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == kind:
            return dict(data)


async def test_pages_submit_forms_and_message_their_sessions_published_automations(daemon: Daemon, http: Http) -> None:
    sid = (await call(http, "POST", "/api/sessions", 201, json={"interview": "automated"}))["id"]
    other = (await call(http, "POST", "/api/sessions", 201, json={"interview": "automated"}))["id"]
    review = await call(http, "POST", "/api/automations", 201, json={"class": "Review", "session": sid, "data": {"email": "p@x.org"}})
    broken = await call(http, "POST", "/api/automations", 201, json={"class": "broken", "session": sid})
    elsewhere = await call(http, "POST", "/api/automations", 201,
                           json={"class": "Review", "session": other, "data": {"email": "q@x.org"}})
    # two automations of one session: the second waits for the session lease (a back-off), so run
    # passes until both have done their first run
    async def first_runs_done() -> bool:
        await step(daemon)
        shown = [await call(http, "GET", f"/api/automations/{a['id']}", 200) for a in (review, broken, elsewhere)]
        return [(a["state"], a["open"]) for a in shown] == [("running", ["approve"]), ("failed", []), ("running", ["approve"])]

    await wait_until(first_runs_done, 15, "the first run of each automation")
    task = next(t["step"] for t in await call(http, "GET", "/api/automation-tasks?user=carol&privilege=caseworker", 200)
                if t["automation"] == review["id"])
    carol = (await call(http, "POST", f"/api/sessions/{sid}/token", 201, json={"user": CASEWORKER}))["token"]
    bob = (await call(http, "POST", f"/api/sessions/{sid}/token", 201, json={"user": {"id": "bob"}}))["token"]
    async with http.ws_connect(f"/ws?token={bob}") as ws:
        await receive(ws, "welcome")
        await ws.send_json({"type": "submit", "ref": 1, "step": task, "values": {"approved": True}})
        refused = await receive(ws, "error")
        assert (refused["ref"], refused["status"]) == (1, 403)
        await ws.send_json({"type": "message", "ref": 2, "key": review["key"], "name": "ping", "token": "page",
                            "data": {"query": {"a": "1"}, "path": "/x", "user": {"id": "admin", "privileges": ["admin"]}}})
        queued = await receive(ws, "result")
        assert queued["ref"] == 2 and queued["result"]["state"] == "queued"
        assert queued["result"]["data"] == {"query": {"a": "1"}, "path": "/x", "user": {"id": "bob"}}
        for ref, key in ((3, broken["key"]), (4, elsewhere["key"]), (5, "nope")):  # unpublished, other session, unknown
            await ws.send_json({"type": "message", "ref": ref, "key": key, "name": "ping"})
            error = await receive(ws, "error")
            assert error["ref"] == ref and "no automation of this session" in error["error"]
    async with http.ws_connect(f"/ws?token={carol}") as ws:
        await receive(ws, "welcome")
        await ws.send_json({"type": "submit", "ref": 1, "step": task, "values": {"approved": "maybe"}})
        invalid = await receive(ws, "error")
        assert (invalid["status"], invalid["errors"]) == (400, {"approved": "true or false expected"})
        await ws.send_json({"type": "submit", "ref": 2, "step": task, "values": {"approved": True}})
        done = await receive(ws, "result")
        assert done["ref"] == 2 and done["result"]["automation"]["data"]["approve"]["approved"] is True
        await ws.send_json({"type": "submit", "ref": 3, "step": task, "values": {"approved": True}})
        assert (await receive(ws, "error"))["status"] == 409
