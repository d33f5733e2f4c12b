"""The HTTP API under ``/api``: JSON in and out, a bearer API key, errors as JSON.

Every mailgate error is translated to a status and ``{"error": message}`` in one place
(:func:`errors_middleware`); the OpenAPI document describing these routes is in :mod:`.openapi`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mailgate.core import answers as codec
from mailgate.core.context import ANONYMOUS, User
from mailgate.core.runtime import Runtime
from mailgate.core.tokens import TokenError
from mailgate.core.views import email_dict, session_dict, task_dict
from mailgate.edges.web.keys import METRICS, RUNTIME
from mailgate.edges.web.openapi import document
from mailgate.errors import (
    ActionError,
    AnswersError,
    BudgetExceeded,
    LeaseTimeout,
    MailgateError,
    NotFound,
    StoreError,
    TaskNotReady,
    VersionConflict,
)
from mailgate.store.base import EmailRecord

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


class BadRequest(MailgateError):
    pass


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


STATUS = [
    (BadRequest, 400),
    (TokenError, 403),
    (NotFound, 404),
    (LeaseTimeout, 409),
    (VersionConflict, 409),
    (TaskNotReady, 409),
    (ActionError, 422),
    (AnswersError, 422),
    (BudgetExceeded, 422),
    (MailgateError, 422),
]
# Seconds a client should wait after a 503 for a StoreError (full, locked, I/O): long enough for an
# operator's fix or a lock to clear, short enough that a page's retry feels like a hiccup.
STORE_RETRY_AFTER = 5


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[METRICS].http_requests += 1
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except StoreError as exc:  # temporary by nature: the same request can succeed later
        log.warning("store error on %s %s: %s; answered 503", request.method, request.path, exc,
                    extra={"event": "http.store_unavailable"})
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": str(STORE_RETRY_AFTER)})
    except MailgateError as exc:
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        return error(status, str(exc))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path, extra={"event": "http.error"})
        return error(500, "internal error; the server log has the details")


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/") or request.path == "/api/openapi.json":
        return await handler(request)
    key = request.app[RUNTIME].config.web.api_key
    if not key:
        return error(503, "the API is disabled: set [web] api_key (or MAILGATE_WEB_API_KEY)")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), key.encode()):
        return web.json_response({"error": "missing or wrong API key; send 'Authorization: Bearer <key>'"},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise BadRequest(f"{name!r} is required")
        return default
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRequest(f"{name!r} must be {names}, not {type(value).__name__}")
    return value


def user_of(data: dict[str, Any]) -> User:
    raw = field(data, "user", dict)
    if raw is None:
        return ANONYMOUS
    unknown = set(raw) - {"id", "email", "first_name", "last_name", "privileges"}
    if unknown:
        raise BadRequest(f"user has unknown fields: {', '.join(sorted(unknown))}")
    privileges = field(raw, "privileges", list, [])
    if not all(isinstance(p, str) for p in privileges):
        raise BadRequest("user.privileges must be a list of strings")
    return User(id=field(raw, "id", str), email=field(raw, "email", str), first_name=field(raw, "first_name", str),
                last_name=field(raw, "last_name", str), privileges=tuple(privileges))


def rt(request: web.Request) -> Runtime:
    runtime: Runtime = request.app[RUNTIME]
    return runtime


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    registry = rt(request).registry
    actions = sorted({a for iv in registry for a in iv.actions})
    return web.json_response(document(registry.names(), actions))


@routes.post("/api/sessions")
async def create_session(request: web.Request) -> web.Response:
    data = await body(request)
    answers = field(data, "answers", dict, {})
    rec = await rt(request).create_session(field(data, "interview", str, required=True), answers, owner=user_of(data))
    return web.json_response(session_dict(rec, with_answers=True), status=201)


@routes.get("/api/sessions/{id}")
async def get_session(request: web.Request) -> web.Response:
    rec = await rt(request).get_session(request.match_info["id"])
    return web.json_response(session_dict(rec, with_answers=True))


@routes.delete("/api/sessions/{id}")
async def delete_session(request: web.Request) -> web.Response:
    if not await rt(request).delete_session(request.match_info["id"]):
        raise NotFound(f"no session {request.match_info['id']!r}")
    return web.Response(status=204)


@routes.post("/api/sessions/{id}/address")
async def session_address(request: web.Request) -> web.Response:
    data = await body(request)
    key = field(data, "key", str)
    index = field(data, "index", (str, int))
    address = await rt(request).ensure_mailbox(request.match_info["id"], key, index, user_of(data))
    return web.json_response({"address": address, "key": key, "index": index})


@routes.get("/api/sessions/{id}/emails")
async def session_emails(request: web.Request) -> web.Response:
    runtime = rt(request)
    await runtime.get_session(request.match_info["id"])
    records = await runtime.emails.list(session_id=request.match_info["id"], limit=10_000)
    return web.json_response([email_dict(r) for r in records])


async def _email(request: web.Request) -> EmailRecord:
    return await rt(request).emails.get(request.match_info["id"])


@routes.get("/api/emails/{id}")
async def get_email(request: web.Request) -> web.Response:
    rec = await _email(request)
    data = email_dict(rec, full=True)
    data["headers"] = json.loads(rec.parsed).get("headers")
    data["authentication"] = json.loads(rec.authentication)
    return web.json_response(data)


@routes.get("/api/emails/{id}/raw")
async def get_email_raw(request: web.Request) -> web.Response:
    rec = await _email(request)
    raw = await rt(request).emails.raw(rec)
    return web.Response(body=raw, content_type="message/rfc822")


@routes.get("/api/emails/{id}/attachments/{n}")
async def get_attachment(request: web.Request) -> web.Response:
    rec = await _email(request)
    try:
        n = int(request.match_info["n"])
    except ValueError:
        raise BadRequest("the attachment number must be an integer") from None
    att = await rt(request).emails.attachment(rec, n)
    content_type = att.content_type if "/" in att.content_type else "application/octet-stream"
    return web.Response(body=att.data, content_type=content_type,
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{_quote(att.filename)}"})


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


@routes.post("/api/sessions/{id}/actions/{action}")
async def run_action(request: web.Request) -> web.Response:
    data = await body(request)
    result = await rt(request).run_action(request.match_info["id"], request.match_info["action"],
                                          field(data, "arguments", dict, {}), user_of(data))
    return web.json_response(result.to_dict())


@routes.post("/api/sessions/{id}/tasks")
async def start_task(request: web.Request) -> web.Response:
    data = await body(request)
    task = await rt(request).start_background_action(
        request.match_info["id"], field(data, "action", str, required=True), field(data, "ui_notification", str),
        field(data, "arguments", dict, {}), user_of(data))
    rec = await rt(request).get_task_record(task.id)
    return web.json_response(task_dict(rec), status=202)


@routes.get("/api/tasks/{id}")
async def get_task(request: web.Request) -> web.Response:
    runtime = rt(request)
    wait = request.query.get("wait")
    if wait is not None:
        try:
            seconds = min(float(wait), 60.0)
        except ValueError:
            raise BadRequest("wait must be a number of seconds") from None
        rec = await runtime.wait_task(request.match_info["id"], seconds)
    else:
        rec = await runtime.get_task_record(request.match_info["id"])
    return web.json_response(task_dict(rec))


@routes.post("/api/sessions/{id}/token")
async def browser_token(request: web.Request) -> web.Response:
    data = await body(request)
    runtime = rt(request)
    await runtime.get_session(request.match_info["id"])
    ttl = field(data, "ttl", (int, float), runtime.config.web.token_ttl)
    if not 0 < ttl <= 86400:
        raise BadRequest("ttl must be between 0 and 86400 seconds")
    token = runtime.browser_token(request.match_info["id"], user_of(data), float(ttl))
    return web.json_response({"token": token, "expires_in": ttl, "ws_path": f"/ws?token={token}"}, status=201)


@routes.get("/run/{token}")
async def run_url(request: web.Request) -> web.Response:
    runtime = rt(request)
    claims = runtime.signer.verify(request.match_info["token"], "run")
    arguments = codec.decode_value(claims["g"])
    result = await runtime.run_action(claims["s"], claims["a"], arguments, User.from_json(claims.get("u")))
    if result.kind == "json":
        return web.json_response(json.loads(codec.encode_value(result.data)))
    if result.kind == "response":
        return web.Response(text=result.text or "", content_type="text/plain")
    return web.json_response(result.to_dict())
