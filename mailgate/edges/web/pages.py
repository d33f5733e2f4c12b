"""The browser client (``/static/mailgate.js``), the favicon, HTML error pages and, for ``mailgate demo``,
the demo pages.

The files live in the project's ``web/`` folder, which a wheel installs as
``<prefix>/share/mailgate/web`` (``$MAILGATE_WEB_DIR`` overrides both). A demo page
``web/demo/NAME.html`` is served at ``/demo/NAME?session=ID`` for a session of the interview NAME,
with a fresh browser token. Without a session the page is a card with a Start button: the session
is created by that POST (and the browser sent on to ``?session=ID``), never by a GET, so links
followed by crawlers store nothing. ``POST /demo/NAME/token?session=ID`` gives the page a new token
when its own has expired (``[web] token_ttl``): the session id in the page's address is what a demo
page is allowed by, so the token endpoint asks no more than the page itself. Placeholders in the
file: ``{{TOKEN}}``, ``{{SESSION}}``, ``{{NAME}}``, ``{{RENEW}}`` (the token endpoint's path).
"""

from __future__ import annotations

import html
import os
import re
import sysconfig
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

from mailgate.core.runtime import Runtime
from mailgate.edges.web.keys import RUNTIME
from mailgate.errors import NotFound

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
STATIC_TYPES = {"mailgate.js": "text/javascript", "demo.js": "text/javascript", "demo.css": "text/css"}
# Paths whose clients are programs: their errors stay JSON whatever the Accept header says.
MACHINE_PATHS = ("/api/", "/api", "/ws", "/run/", "/healthz", "/metrics")


@dataclass(frozen=True)
class DemoInfo:
    title: str
    shows: str  # what the demo shows, one sentence
    ports: str  # the docassemble demo interview it ports
    source: str = "docassemble's"  # whose demo it ports


DEMOS: dict[str, DemoInfo] = {
    "background_action": DemoInfo(
        "Return a value", "A background task's value appears on the page the moment it finishes; the page never polls.",
        "background_action"),
    "background_action_with_response_action": DemoInfo(
        "Save the value with a response action", "The task hands its result to a response action that saves it in the answers.",
        "background_action_with_response_action"),
    "background-error-action-demo": DemoInfo(
        "Background error callback", "A denominator of 0 makes the task fail; its error action saves what went wrong.",
        "background-error-action-demo"),
    "background-error-action": DemoInfo(
        "Handle a failed task", "A task that always fails: its error action records the error type and message.",
        "background-error-action"),
    "background_action_flash": DemoInfo(
        "Flash the value", "The finished task's value is flashed at the top of the page.", "background_action_flash"),
    "background_response_action_flash": DemoInfo(
        "Save the value and flash a message", "A response action saves the value, and a flash message tells the page.",
        "background_response_action_flash"),
    "background_action_refresh": DemoInfo(
        "Refresh the screen", "When the task has saved its answer the page reloads and shows it.", "background_action_refresh"),
    "background_action_javascript": DemoInfo(
        "Run JavaScript from the task", "The task answers with JavaScript that the page runs (an alert with the value).",
        "background_action_javascript"),
    "background_action_fields": DemoInfo(
        "Populate fields", "The task answers with field values, which are filled in on the page.", "background_action_fields"),
    "check-in": DemoInfo(
        "Checking in", "The page checks in on load, on every change and every few seconds; the interview counts and keeps drafts.",
        "check-in"),
    "target-template": DemoInfo(
        "Check in and return a template", "A check-in answers with a template whose Markdown is rendered under the button.",
        "target-template"),
    "target-code-template": DemoInfo(
        "Check in, run code, and return a template", "The check-in saves a value, then a template renders it from the answers.",
        "target-code-template"),
    "target-code": DemoInfo(
        "Check in and run code", "The check-in code returns raw HTML for the area under the button.", "target-code"),
    "target-code-multiple": DemoInfo(
        "Check in with several targets", "One check-in fills two areas: one in the heading, one under the button.",
        "target-code-multiple"),
    "ajax-calc": DemoInfo(
        "Alter fields", "Fill in A and B: the check-in fills in C with their product.", "ajax-calc"),
    "ajax-calc-javascript": DemoInfo(
        "Alter fields with JavaScript", "Fill in A and B: the check-in answers with JavaScript that flashes a hint.",
        "ajax-calc-javascript"),
    "ajax-flash": DemoInfo(
        "Flash message", "Enter a favorite food: the check-in flashes a message, once per new value.", "ajax-flash"),
    "ajax-refresh": DemoInfo(
        "Refresh", "Change the number of things: the check-in saves it and reloads the page with that many choices.",
        "ajax-refresh"),
    "reply-or-remind": DemoInfo(
        "An automation waiting for a reply", "An automation bound to the session waits for mail to its address and "
        "moves on the moment it arrives; the page shows each step as it happens.", "reply-or-remind",
        "Django Automations'"),
    "email-to-case": DemoInfo(
        "Running code upon receipt of e-mail", "Each session gets an e-mail address; a message sent to it appears at once.",
        "email-to-case"),
}

FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
           '<rect x="1" y="3" width="14" height="10" rx="1.5" fill="#2d6a4f"/>'
           '<path d="M1.8 4 8 9l6.2-5" fill="none" stroke="#fff" stroke-width="1.4"/></svg>')
HEAD = ('<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="/favicon.ico" type="image/svg+xml"><link rel="stylesheet" href="/static/demo.css">')


def web_dir() -> Path:
    """``$MAILGATE_WEB_DIR``; else the source checkout's ``web/``; else where a wheel installed it."""
    override = os.environ.get("MAILGATE_WEB_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[3] / "web"
    if (checkout / "mailgate.js").is_file():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "mailgate" / "web"


def page(title: str, body: str, status: int = 200) -> web.Response:
    """A whole HTML page in the demo pages' style; ``body`` is HTML, ``title`` text."""
    text = (f'<!doctype html>\n<html lang="en"><head>{HEAD}<title>{html.escape(title)} · mailgate</title></head>'
            f'<body>\n<nav><a href="/demo/">mailgate demos</a></nav>\n{body}\n</body></html>\n')
    return web.Response(text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


def error_page(status: int, title: str, message: str, extra: str = "") -> web.Response:
    return page(title, f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(message)}</p>\n{extra}", status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors of pages as HTML for browsers; the API, /ws and the probes keep their JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if (exc.status not in (404, 405) or request.path.startswith(MACHINE_PATHS)
                or "text/html" not in request.headers.get("Accept", "")):
            raise
        if exc.status == 405:
            response = error_page(405, "Method not allowed", f"{request.method} is not allowed on {request.path}.")
            response.headers["Allow"] = exc.headers.get("Allow", "")
            return response
        return error_page(404, "Not found", f"There is no page at {request.path}.")


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    folder = web_dir() if name == "mailgate.js" else web_dir() / "demo"
    path = folder / name
    if name not in STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound(reason=f"{path} is missing; set MAILGATE_WEB_DIR to the project's web/ folder")
    return web.FileResponse(path, headers={"Content-Type": f"{STATIC_TYPES[name]}; charset=utf-8", "Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.Response:
    return web.Response(text=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


def _start_form(name: str, label: str = "Start", url_args: dict[str, str] | None = None) -> str:
    """The Start button; it carries the page's URL parameters, which become the session's url_args."""
    action = f"/demo/{quote(name)}" + (f"?{urlencode(url_args)}" if url_args else "")
    return f'<form method="post" action="{html.escape(action)}"><button>{html.escape(label)}</button></form>'


def _url_args(request: web.Request) -> dict[str, str]:
    # docassemble's url_args: the parameters of the URL that started the interview (``session`` is mailgate's own)
    return {k: v for k, v in request.query.items() if k != "session"}


async def demo_index(request: web.Request) -> web.Response:
    items = []
    for name in sorted(DEMOS):
        demo = DEMOS[name]
        items.append(
            f'<li class="demo" id="demo-{html.escape(name)}"><h2><a href="/demo/{html.escape(name)}">{html.escape(demo.title)}</a></h2>'
            f"<p>{html.escape(demo.shows)}</p><p class=\"ports\">Ports {html.escape(demo.source)} <code>{html.escape(demo.ports)}</code> demo.</p>"
            f"{_start_form(name)}</li>")
    body = ("<h1>mailgate demos</h1>\n<p>Ports of docassemble's background-action and check-in demo interviews. "
            "Each Start button creates a new session and opens its page; a page's address keeps the session.</p>\n"
            '<ul class="demos">\n' + "\n".join(items) + "\n</ul>")
    return page("demos", body)


def _demo_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME.match(name) or name not in DEMOS or not (web_dir() / "demo" / f"{name}.html").is_file():
        raise web.HTTPNotFound(reason=f"no demo page {name!r}; see /demo/")
    return name


async def _session_of(runtime: Runtime, name: str, session_id: str) -> str | None:
    """Why ``session_id`` cannot be used on the page ``name``; None if it can."""
    try:
        rec = await runtime.get_session(session_id)
    except NotFound:
        return f"The session {session_id} does not exist (any more)."
    if rec.interview != name:
        return f"The session {session_id} is not a session of {name}."
    return None


async def demo_page(request: web.Request) -> web.StreamResponse:
    runtime: Runtime = request.app[RUNTIME]
    name = _demo_name(request)
    demo = DEMOS[name]
    session_id = request.query.get("session")
    if not session_id:
        body = (f"<h1>{html.escape(demo.title)}</h1>\n<p>{html.escape(demo.shows)}</p>\n"
                f"<p class=\"note\">A port of {html.escape(demo.source)} <code>{html.escape(demo.ports)}</code> demo. "
                f"Start it to get a session of your own.</p>\n{_start_form(name, 'Start the demo', _url_args(request))}")
        return page(demo.title, body)
    refused = await _session_of(runtime, name, session_id)
    if refused is not None:
        return error_page(404, "No such session", refused, _start_form(name, "Start a new session"))
    token = runtime.browser_token(session_id)
    renew = f"/demo/{name}/token?session={quote(session_id)}"
    text = (web_dir() / "demo" / f"{name}.html").read_text(encoding="utf-8")
    for key, value in (("TOKEN", token), ("SESSION", session_id), ("NAME", name), ("RENEW", renew)):
        text = text.replace("{{" + key + "}}", html.escape(value))
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def start_demo(request: web.Request) -> web.StreamResponse:
    """The Start button: a new session of the demo's interview (the URL's parameters as its
    ``url_args``, as docassemble sets them), then its page."""
    runtime: Runtime = request.app[RUNTIME]
    name = _demo_name(request)
    rec = await runtime.create_session_with(name, url_args=_url_args(request) or None)
    raise web.HTTPSeeOther(f"/demo/{name}?session={quote(rec.id)}")


async def renew_token(request: web.Request) -> web.Response:
    """A fresh browser token for the page's session (``mailgate.js`` asks when its token expired)."""
    runtime: Runtime = request.app[RUNTIME]
    name = _demo_name(request)
    session_id = request.query.get("session", "")
    refused = await _session_of(runtime, name, session_id) if session_id else "?session= is required"
    if refused is not None:
        raise web.HTTPNotFound(reason=refused)
    ttl = runtime.config.web.token_ttl
    return web.json_response({"token": runtime.browser_token(session_id), "expires_in": ttl},
                             headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, *, demo: bool) -> None:
    app.router.add_get("/favicon.ico", favicon)
    if demo:
        app.router.add_get("/static/{name}", static_file)
        app.router.add_get("/demo/", demo_index)
        app.router.add_get("/demo", demo_index)
        app.router.add_get("/demo/{name}", demo_page)
        app.router.add_post("/demo/{name}", start_demo)
        app.router.add_post("/demo/{name}/token", renew_token)
    else:
        app.router.add_get("/static/{name:mailgate\\.js}", static_file)
