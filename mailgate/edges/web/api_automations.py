"""The automations routes of the HTTP API (AUTOMATIONS.md §4.4), behind the same API key, error
middleware and strict JSON bodies as :mod:`.api`; described in :mod:`.openapi`.

A form task answers 403 to a user it is not assigned to (on GET and on POST), 400 with ``errors`` by
field for invalid values, 409 once it was submitted, 200 when the submit advanced the automation.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailgate.automations.errors import FormError, FormInvalid
from mailgate.core.automation_views import automation_dict, message_dict
from mailgate.core.context import ANONYMOUS, User
from mailgate.edges.web.api import BadRequest, body, field, rt, user_of
from mailgate.edges.web.openapi import WAIT_CAP
from mailgate.errors import InteractionClosed

routes = web.RouteTableDef()
STATES = ("running", "finished", "failed", "killed")


def _only(data: dict[str, Any], *allowed: str) -> dict[str, Any]:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; this route takes {', '.join(allowed)}")
    return data


def _query_user(request: web.Request) -> User:
    """``?user=ID&privilege=P&privilege=Q``: who reads the tasks (the web app vouches for it with the API key)."""
    unknown = sorted(set(request.query) - {"user", "privilege"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; this route takes user and privilege")
    uid = request.query.get("user")
    if not uid:
        return ANONYMOUS
    return User(id=uid, privileges=tuple(request.query.getall("privilege", [])))


def _form_error(exc: FormError) -> web.Response:
    out: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, FormInvalid):
        out["errors"] = exc.errors
    return web.json_response(out, status=exc.status)


@routes.get("/api/automation-classes")
async def automation_classes(request: web.Request) -> web.Response:
    return web.json_response(rt(request).automations.describe())


@routes.post("/api/automation-classes/{cls}/broadcast")
async def broadcast(request: web.Request) -> web.Response:
    data = _only(await body(request), "message", "token", "data", "wait", "user")
    wait = field(data, "wait", (int, float))
    if wait is not None and not 0 <= wait <= WAIT_CAP:
        raise BadRequest(f"'wait' must be between 0 and {WAIT_CAP:g} seconds")
    admin = rt(request).automations
    msg = await admin.broadcast(request.match_info["cls"], field(data, "message", str, required=True),
                                token=field(data, "token", str), data=data.get("data"), user=user_of(data))
    out = message_dict(msg)
    if wait:
        out["state"], out["results"] = await admin.broadcast_results(msg.id, wait)
    return web.json_response(out, status=202 if out["state"] == "queued" else 200)


@routes.post("/api/automations")
async def start_automation(request: web.Request) -> web.Response:
    data = _only(await body(request), "class", "session", "data", "user")
    runtime = rt(request)
    session = field(data, "session", str)
    if session is not None:
        await runtime.get_session(session)  # 404 naming the session
    rec, created = await runtime.automations.start(field(data, "class", str, required=True), session_id=session,
                                                   data=field(data, "data", dict, {}), user=user_of(data))
    return web.json_response({**automation_dict(rec), "created": created}, status=201 if created else 200)


@routes.get("/api/automations")
async def list_automations(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - {"class", "state", "session"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; this route takes class, state and session")
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    return web.json_response(await rt(request).automations.list_dicts(
        cls=request.query.get("class"), state=state, session_id=request.query.get("session"), limit=1000))


@routes.get("/api/automations/{id}")
async def get_automation(request: web.Request) -> web.Response:
    return web.json_response(await rt(request).automations.show(request.match_info["id"]))


@routes.delete("/api/automations/{id}")
async def kill_automation(request: web.Request) -> web.Response:
    await rt(request).automations.kill(request.match_info["id"])
    return web.Response(status=204)


@routes.post("/api/automations/{id}/messages")
async def send_message(request: web.Request) -> web.Response:
    data = _only(await body(request), "message", "token", "data", "wait", "user")
    wait = field(data, "wait", (int, float))
    if wait is not None and not 0 <= wait <= WAIT_CAP:
        raise BadRequest(f"'wait' must be between 0 and {WAIT_CAP:g} seconds")
    msg = await rt(request).automations.send(request.match_info["id"], field(data, "message", str, required=True),
                                             token=field(data, "token", str), data=data.get("data"), user=user_of(data),
                                             wait=wait or None)
    return web.json_response(message_dict(msg), status=202 if msg.state == "queued" else 200)


@routes.post("/api/automations/{id}/retry")
async def retry_automation(request: web.Request) -> web.Response:
    _only(await body(request))
    return web.json_response(automation_dict(await rt(request).automations.retry(request.match_info["id"])))


@routes.get("/api/automation-tasks")
async def list_tasks(request: web.Request) -> web.Response:
    user = _query_user(request)
    if user.id is None:
        raise BadRequest("'user' is required: the tasks of which user?")
    return web.json_response(await rt(request).automations.tasks_for(user))


@routes.get("/api/automation-tasks/{step}")
async def get_task(request: web.Request) -> web.Response:
    try:
        return web.json_response(await rt(request).automations.task(request.match_info["step"], _query_user(request)))
    except FormError as exc:
        return _form_error(exc)


@routes.post("/api/automation-tasks/{step}")
async def submit_task(request: web.Request) -> web.Response:
    data = _only(await body(request), "values", "user")
    try:
        done = await rt(request).automations.submit(request.match_info["step"], user_of(data),
                                                    field(data, "values", dict, required=True))
    except FormError as exc:
        return _form_error(exc)
    except InteractionClosed as exc:  # lost the race with another submit every time it was retried
        return web.json_response({"error": str(exc)}, status=409)
    return web.json_response({"step": done.step.id, "node": done.step.node, "values": done.values,
                              "automation": automation_dict(done.automation)})
