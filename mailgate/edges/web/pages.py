"""The browser client (``/static/mailgate.js``) and, for ``mailgate demo``, the demo pages.

The files live in the project's ``web/`` folder, which a wheel installs as
``<prefix>/share/mailgate/web`` (``$MAILGATE_WEB_DIR`` overrides both). A demo page
``web/demo/NAME.html`` is served at ``/demo/NAME``: the first visit creates a session of the
interview NAME and redirects to ``?session=ID`` so that a reload keeps it; the page gets a fresh
browser token. Placeholders in the file: ``{{TOKEN}}``, ``{{SESSION}}``, ``{{NAME}}``.
"""

from __future__ import annotations

import html
import os
import re
import sysconfig
from pathlib import Path

from aiohttp import web

from mailgate.core.runtime import Runtime
from mailgate.edges.web.keys import RUNTIME

NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def web_dir() -> Path:
    """``$MAILGATE_WEB_DIR``; else the source checkout's ``web/``; else where a wheel installed it."""
    override = os.environ.get("MAILGATE_WEB_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[3] / "web"
    if (checkout / "mailgate.js").is_file():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "mailgate" / "web"


async def client_js(request: web.Request) -> web.FileResponse:
    path = web_dir() / "mailgate.js"
    if not path.is_file():
        raise web.HTTPNotFound(reason=f"{path} is missing; set MAILGATE_WEB_DIR to the project's web/ folder")
    return web.FileResponse(path, headers={"Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "no-cache"})


async def demo_css(request: web.Request) -> web.FileResponse:
    return web.FileResponse(web_dir() / "demo" / "demo.css", headers={"Content-Type": "text/css; charset=utf-8"})


async def demo_index(request: web.Request) -> web.Response:
    names = sorted(p.stem for p in (web_dir() / "demo").glob("*.html"))
    items = "\n".join(f'<li><a href="/demo/{html.escape(n)}">{html.escape(n)}</a></li>' for n in names)
    body = (f"<!doctype html><html><head><meta charset=utf-8><title>mailgate demos</title></head><body>"
            f"<h1>mailgate demos</h1><p>Ports of docassemble's demo interviews.</p><ul>{items}</ul></body></html>")
    return web.Response(text=body, content_type="text/html")


async def demo_page(request: web.Request) -> web.StreamResponse:
    runtime: Runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    path = web_dir() / "demo" / f"{name}.html"
    if not NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound(reason=f"no demo page {name!r}; see /demo/")
    session_id = request.query.get("session")
    if not session_id or not await runtime.session_exists(session_id):
        rec = await runtime.create_session(name)
        raise web.HTTPFound(f"/demo/{name}?session={rec.id}")
    token = runtime.browser_token(session_id)
    text = path.read_text(encoding="utf-8")
    text = text.replace("{{TOKEN}}", token).replace("{{SESSION}}", session_id).replace("{{NAME}}", html.escape(name))
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, *, demo: bool) -> None:
    app.router.add_get("/static/mailgate.js", client_js)
    if demo:
        app.router.add_get("/static/demo.css", demo_css)
        app.router.add_get("/demo/", demo_index)
        app.router.add_get("/demo", demo_index)
        app.router.add_get("/demo/{name}", demo_page)
