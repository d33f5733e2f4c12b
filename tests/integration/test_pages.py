"""The demo pages and the files beside them, served by the web edge (``mailgate/edges/web/pages.py``).

Same set-up as ``test_web.py``: the daemon's runtime under pytest-aiohttp's test server, demo pages on.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.web.app import WebServer
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, runtime_of
from tests.integration.test_web import web_edge

pytestmark = pytest.mark.asyncio
KEY = "test-api-key-123"
PAGES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "web" / "demo").glob("*.html"))
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
AiohttpClient = Callable[..., Awaitable[TestClient[aioweb.Request, aioweb.Application]]]
Http = TestClient[aioweb.Request, aioweb.Application]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, web={"port": 0, "api_key": KEY, "demo_pages": True}, smtp={"port": 0})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker", "smtp")


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


@pytest_asyncio.fixture
async def web(daemon: Daemon) -> AsyncIterator[WebServer]:
    async with web_edge(daemon) as server:
        yield server


@pytest_asyncio.fixture
async def http(web: WebServer, aiohttp_client: AiohttpClient) -> Http:
    return await aiohttp_client(web.app)


async def fetch(http: Http, method: str, path: str, expect: int, **kw: Any) -> tuple[str, str, Any]:
    """(content type, body text, headers) of a request that must answer ``expect``."""
    kw.setdefault("allow_redirects", False)
    async with http.request(method, path, **kw) as r:
        text = await r.text()
        assert r.status == expect, (r.status, text)
        return r.content_type, text, r.headers


async def session_count(daemon: Daemon) -> int:
    return len(await runtime_of(daemon).sessions.list(limit=10_000))


async def start(http: Http, name: str) -> str:
    """Start a demo as its Start button does; the id of the new session."""
    _, _, headers = await fetch(http, "POST", f"/demo/{name}", 303)
    found = re.fullmatch(rf"/demo/{re.escape(name)}\?session=(\w+)", headers["Location"])
    assert found, headers["Location"]
    return found.group(1)


# -- finding 13 ----------------------------------------------------------------------------------------
async def test_the_index_says_what_each_demo_shows_and_what_it_ports(http: Http) -> None:
    from mailgate.edges.web.pages import DEMOS  # not at the top: the other tests run without it

    kind, text, _ = await fetch(http, "GET", "/demo/", 200)
    assert kind == "text/html"
    assert '<link rel="stylesheet" href="/static/demo.css">' in text
    assert sorted(DEMOS) == PAGES  # every page is described, and only pages that exist
    for name, demo in DEMOS.items():
        assert demo.shows and demo.ports
        item = text[text.index(f'id="demo-{name}"'):]
        item = item[:item.index("</li>")]
        assert html.escape(demo.shows) in item and f"<code>{demo.ports}</code>" in item, item
        assert f'<form method="post" action="/demo/{name}">' in item  # started by a POST, not a link


async def test_a_favicon_on_every_page(http: Http) -> None:
    kind, text, _ = await fetch(http, "GET", "/favicon.ico", 200)
    assert kind == "image/svg+xml" and "<svg" in text
    _, page, _ = await fetch(http, "GET", "/demo/", 200)
    assert 'rel="icon"' in page


async def test_unknown_pages_answer_html_and_the_api_keeps_json(http: Http) -> None:
    for path in ("/nope", "/demo/nope", "/demo/../etc", "/static/nope.js"):
        kind, text, _ = await fetch(http, "GET", path, 404, headers=HTML)
        assert kind == "text/html", (path, text)
        assert text.startswith("<!doctype html>") and "<title>Not found" in text and '<a href="/demo/">' in text
        assert "Traceback" not in text
    kind, text, _ = await fetch(http, "DELETE", "/demo/", 405, headers=HTML)
    assert kind == "text/html" and "<title>Method not allowed" in text
    kind, text, _ = await fetch(http, "GET", "/api/nope", 404, headers={**HTML, "Authorization": f"Bearer {KEY}"})
    assert kind == "application/json" and "error" in json.loads(text)
    kind, _, _ = await fetch(http, "GET", "/nope", 404, headers={"Accept": "application/json"})
    assert kind == "application/json"  # a client that asks for JSON gets JSON


async def test_a_page_refuses_a_session_of_another_interview(daemon: Daemon, http: Http) -> None:
    other = await start(http, "check-in")
    kind, text, _ = await fetch(http, "GET", f"/demo/target-template?session={other}", 404, headers=HTML)
    assert kind == "text/html" and "is not a session of target-template" in text
    assert "Mailgate.connect" not in text and "Traceback" not in text
    await fetch(http, "POST", f"/demo/target-template/token?session={other}", 404)
    _, page, _ = await fetch(http, "GET", f"/demo/check-in?session={other}", 200)
    assert "Mailgate.connect" in page and other in page


async def test_a_get_creates_no_session_the_start_button_does(daemon: Daemon, http: Http) -> None:
    before = await session_count(daemon)
    for _ in range(3):  # as a crawler would
        kind, text, _ = await fetch(http, "GET", "/demo/check-in", 200, headers=HTML)
        assert kind == "text/html" and '<form method="post" action="/demo/check-in">' in text
        await fetch(http, "GET", "/demo/check-in?session=gone", 404, headers=HTML)
    assert await session_count(daemon) == before
    sid = await start(http, "check-in")
    assert await session_count(daemon) == before + 1
    assert (await runtime_of(daemon).get_session(sid)).interview == "check-in"
    await fetch(http, "POST", "/demo/nope", 404, headers=HTML)
    assert await session_count(daemon) == before + 1
    assert "url_args" not in await runtime_of(daemon).get_answers(sid)


async def test_the_url_a_session_starts_from_gives_its_url_args(daemon: Daemon, http: Http) -> None:
    # docassemble's url_args: /demo/check-in?ref=mail&n=2 shows a Start button that keeps them
    _, text, _ = await fetch(http, "GET", "/demo/check-in?ref=mail&n=2&x=%3Cb%3E", 200, headers=HTML)
    assert '<form method="post" action="/demo/check-in?ref=mail&amp;n=2&amp;x=%3Cb%3E">' in text
    _, _, headers = await fetch(http, "POST", "/demo/check-in?ref=mail&n=2&x=%3Cb%3E", 303)
    sid = headers["Location"].split("session=")[1]
    assert (await runtime_of(daemon).get_answers(sid))["url_args"] == {"ref": "mail", "n": "2", "x": "<b>"}


async def test_a_demo_page_renews_its_token(daemon: Daemon, http: Http) -> None:
    sid = await start(http, "check-in")
    _, page, _ = await fetch(http, "GET", f"/demo/check-in?session={sid}", 200)
    assert f'renew: "/demo/check-in/token?session={sid}"' in page
    kind, text, headers = await fetch(http, "POST", f"/demo/check-in/token?session={sid}", 200)
    body = json.loads(text)
    assert kind == "application/json" and headers["Cache-Control"] == "no-store"
    claims = runtime_of(daemon).signer.verify(body["token"], "browser")
    assert claims["s"] == sid and body["expires_in"] == daemon.config.web.token_ttl
    await fetch(http, "GET", f"/demo/check-in/token?session={sid}", 405)  # never cached or prefetched
    await fetch(http, "POST", "/demo/check-in/token?session=gone", 404)
    await fetch(http, "POST", "/demo/check-in/token", 404)


async def test_a_handshake_probe_tells_an_expired_token(daemon: Daemon, http: Http) -> None:
    """mailgate.js cannot read why a WebSocket handshake failed; it asks /ws with a plain GET."""
    sid = await start(http, "check-in")
    runtime = runtime_of(daemon)
    expired = runtime.browser_token(sid, ttl=-1)
    kind, text, _ = await fetch(http, "GET", f"/ws?token={expired}", 401)
    assert "expired" in json.loads(text)["error"]
    await fetch(http, "GET", f"/ws?token={runtime.browser_token(sid)}", 400)  # valid: only the upgrade is missing


async def test_target_template_renders_like_docassemble(daemon: Daemon) -> None:
    runtime = runtime_of(daemon)
    rec = await runtime.create_session("target-template")
    result = await runtime.run_action(rec.id, "question_food", {"favorite_food": "apples"})
    assert [c["content"].strip() for c in result.commands] == ["<p><em>What?</em> You like APPLES?</p>"]
    result = await runtime.run_action(rec.id, "question_food", {"favorite_food": "<b>_x_</b>"})
    assert [c["content"].strip() for c in result.commands] == ["<p><em>What?</em> You like &lt;B&gt;_X_&lt;/B&gt;?</p>"]
