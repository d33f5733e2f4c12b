"""The HTTP API under ``/api``: JSON in and out, a bearer API key, errors as JSON.

Every mailgate error is translated to a status and ``{"error": message}`` in one place
(:func:`errors_middleware`); the OpenAPI document describing these routes is in :mod:`.openapi`.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mailgate import metrics
from mailgate.core import answers as codec
from mailgate.core.context import ANONYMOUS, User
from mailgate.core.runtime import Runtime
from mailgate.core.tokens import TokenError
from mailgate.core.views import email_dict, session_dict, task_dict, variables_dict
from mailgate.edges.web import strictjson
from mailgate.edges.web.access import logged_path
from mailgate.edges.web.keys import RUNTIME
from mailgate.edges.web.openapi import WAIT_CAP, document
from mailgate.errors import (
    ActionError,
    AnswersError,
    BudgetExceeded,
    LeaseTimeout,
    MailgateError,
    NotFound,
    StoreError,
    TaskNotReady,
    UnknownAction,
    VersionConflict,
)
from mailgate.store.base import EmailRecord

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


class BadRequest(MailgateError):
    """The request itself is malformed (400)."""


class UnreadableBody(BadRequest):
    """aiohttp could not decode the body (its Content-Encoding): answered, then the connection closed."""


class Unprocessable(MailgateError):
    """A well-formed request that names something its session does not have (422)."""


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


STATUS = [
    (BadRequest, 400),
    (Unprocessable, 422),
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


# The operator's paths: behind the API key on the public listener, or only on [web] metrics_listen.
OPERATOR_PATHS = ("/metrics", "/api/openapi.json")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics.HTTP_REQUESTS.inc()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        # keep what the client needs to act on (Allow on a 405), drop what described the text body
        headers = {k: v for k, v in exc.headers.items() if k not in ("Content-Type", "Content-Length")}
        return web.json_response({"error": _http_message(request, exc)}, status=exc.status, headers=headers)
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # a body aiohttp could not read
        return _closing(request, error(400, f"the request could not be read: {_reason(exc)}"))
    except StoreError as exc:  # temporary by nature: the same request can succeed later
        log.warning("store error on %s %s: %s; answered 503", request.method, logged_path(request.path), exc,
                    extra={"event": "http.store_unavailable"})
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": str(STORE_RETRY_AFTER)})
    except UnreadableBody as exc:
        return _closing(request, error(400, str(exc)))
    except MailgateError as exc:
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        return error(status, str(exc))
    except Exception:
        log.exception("internal error on %s %s", request.method, logged_path(request.path), extra={"event": "http.error"})
        return error(500, "internal error; the server log has the details")


def _closing(request: web.Request, response: web.Response) -> web.Response:
    """Answer and close: the rest of a body that cannot be decoded cannot be skipped to a next request,
    and aiohttp would otherwise try to read it after the answer (and log the same error as unhandled)."""
    request.content.feed_eof()
    response.force_close()
    return response


def _reason(exc: BaseException) -> str:
    """aiohttp's one-line reason for a body it could not read (its errors print as '400, message: ...')."""
    cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
    return cause.message if isinstance(cause, HttpProcessingError) else str(exc).strip()


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"{request.method} is not allowed on {request.path}; allowed: {', '.join(sorted(exc.allowed_methods))}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"the request body is larger than {request.client_max_size} bytes; send less"
    if exc.status == 404:
        return f"no such path {request.path}; the API is described at /api/openapi.json"
    return exc.reason


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    operator = request.path in OPERATOR_PATHS
    if not (operator or request.path.startswith("/api/")):
        return await handler(request)
    if operator and request.app[RUNTIME].config.web.metrics_listen:
        return error(404, f"{request.path} is served on [web] metrics_listen only")
    key = request.app[RUNTIME].config.web.api_key
    if not key:
        return error(503, "the API is disabled: set [web] api_key (or MAILGATE_WEB_API_KEY)"
                     + (", or serve this path on [web] metrics_listen" if operator else ""))
    # aiohttp keeps bytes that are not UTF-8 as surrogate escapes; compare the bytes as sent
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not given.startswith(b"Bearer ") or not hmac.compare_digest(given[7:], key.encode()):
        return web.json_response({"error": "missing or wrong API key; send 'Authorization: Bearer <key>'"},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        raw = await request.read()
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # the decompressor's complaint
        raise UnreadableBody(f"the request body is not valid for its Content-Encoding "
                         f"{request.headers.get('Content-Encoding', '')!r} ({_reason(exc)}); "
                         "send it uncompressed, or compressed as that header says") from None
    try:
        data = strictjson.loads(raw.decode("utf-8"))  # RFC 8259 section 8.1: JSON between systems is UTF-8
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: it is not UTF-8 (byte {exc.start})") from None
    except strictjson.JSONRejected as exc:
        raise BadRequest(str(exc)) from None
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
    return web.json_response(document({iv.name: list(iv.actions) for iv in rt(request).registry}))


@routes.post("/api/sessions")
async def create_session(request: web.Request) -> web.Response:
    data = await body(request)
    answers = field(data, "answers", dict, {})
    rec = await rt(request).create_session_with(field(data, "interview", str, required=True), answers, owner=user_of(data),
                                                url_args=field(data, "url_args", dict))
    return web.json_response(session_dict(rec, with_answers=True), status=201)


@routes.get("/api/sessions/{id}/variables")
async def get_session_variables(request: web.Request) -> web.Response:
    """docassemble's ``get_session_variables()``: the answers as last saved, without ``_internal``."""
    rec = await rt(request).get_session(request.match_info["id"])
    _same_interview(rec.interview, rec.id, request.query.get("interview"))
    return web.json_response(variables_dict(rec))


def _same_interview(interview: str, session_id: str, expected: str | None) -> None:
    # the session exists, so not a 404: the request names an interview the session is not one of
    if expected is not None and interview != expected:
        raise Unprocessable(f"session {session_id} is not a session of interview {expected!r}")


@routes.post("/api/sessions/{id}/variables")
async def set_session_variables(request: web.Request) -> web.Response:
    """docassemble's ``set_session_variables()``: set (and delete) variables under the session lease."""
    data = await body(request)
    delete = field(data, "delete", list, [])
    if not all(isinstance(name, str) for name in delete):
        raise BadRequest("'delete' must be a list of variable names")
    session_id = request.match_info["id"]
    interview = field(data, "interview", str)
    if interview is not None:  # a session never changes interview: checked before taking the lease
        _same_interview(await rt(request).sessions.interview_of(session_id), session_id, interview)
    version = await rt(request).set_session_variables(
        session_id, field(data, "variables", dict, {}), interview=interview, delete=delete, user=user_of(data))
    return web.json_response({"id": session_id, "version": version})


@routes.get("/api/sessions/{id}")
async def get_session(request: web.Request) -> web.Response:
    rec = await rt(request).get_session(request.match_info["id"])
    return web.json_response(session_dict(rec, with_answers=True))


@routes.delete("/api/sessions/{id}")
async def delete_session(request: web.Request) -> web.Response:
    if not await rt(request).delete_session(request.match_info["id"]):
        raise NotFound(f"no session {request.match_info['id']!r}")
    return web.Response(status=204)


@routes.post("/api/stash")
async def stash_data(request: web.Request) -> web.Response:
    """docassemble's ``stash_data()``: the tokens with which ``/api/stash/retrieve`` gives the data back."""
    data = await body(request)
    if "data" not in data:
        raise BadRequest("'data' is required")
    expire = field(data, "expire", (int, float))
    return web.json_response(await rt(request).stashes.stash(data["data"], expire), status=201)


@routes.post("/api/stash/retrieve")
async def retrieve_stashed_data(request: web.Request) -> web.Response:
    """docassemble's ``retrieve_stashed_data()``: 404 for an unknown key, a wrong secret or an expired stash."""
    data = await body(request)
    refresh = field(data, "refresh", (bool, int, float), False)
    ok, found = await rt(request).stashes.lookup(field(data, "stash_key", str, required=True),
                                                 field(data, "secret", str, required=True),
                                                 delete=field(data, "delete", bool, False), refresh=refresh)
    if not ok:
        raise NotFound("no stashed data for this stash_key and secret (or it expired)")
    return web.json_response({"data": json.loads(codec.encode_value(found))})


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
    data = email_dict(rec, full=True, bodies=await rt(request).emails.stored_bodies(rec))
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
    return web.Response(body=att.data, content_type=_content_type(att.content_type), charset=att.charset,
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{_quote(att.filename)}"})


@routes.get("/file/{token}")
async def get_email_part(request: web.Request) -> web.Response:
    """A part of a received e-mail through a signed URL from ``url_for()`` (no API key: the token is it)."""
    runtime = rt(request)
    claims = runtime.signer.verify(request.match_info["token"], "file")
    rec = await runtime.emails.get(str(claims["e"]))
    part = str(claims["p"])
    # The mail is the sender's content: a sandboxed, unsniffed response cannot run script as this site.
    headers = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
    if part in ("txt", "html"):
        text = (await runtime.emails.bodies(rec))[0 if part == "txt" else 1]
        if text is None:
            raise NotFound(f"e-mail {rec.id} has no {'text' if part == 'txt' else 'HTML'} body")
        return web.Response(text=text, content_type="text/plain" if part == "txt" else "text/html",
                            charset="utf-8", headers=headers)
    att = await runtime.emails.attachment(rec, int(part))
    headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{_quote(att.filename)}"
    return web.Response(body=att.data, content_type=_content_type(att.content_type), charset=att.charset, headers=headers)


def _content_type(declared: str) -> str:
    """An attachment's type as its sender declared it (a text part's declared charset goes with it, as
    ``charset=``, so that a browser reads KOI8-R or ISO-8859-1 text as such)."""
    return declared if "/" in declared else "application/octet-stream"


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
    try:
        task = await rt(request).start_background_action(
            request.match_info["id"], field(data, "action", str, required=True), field(data, "ui_notification", str),
            field(data, "arguments", dict, {}), user_of(data))
    except UnknownAction as exc:  # the session exists (404 is for that); the body names a wrong action
        raise Unprocessable(str(exc)) from None
    rec = await rt(request).get_task_record(task.id)
    return web.json_response(task_dict(rec), status=202)


@routes.get("/api/tasks/{id}")
async def get_task(request: web.Request) -> web.Response:
    runtime = rt(request)
    wait = request.query.get("wait")
    if wait is not None:
        rec = await runtime.wait_task(request.match_info["id"], _wait_seconds(wait))
    else:
        rec = await runtime.get_task_record(request.match_info["id"])
    return web.json_response(task_dict(rec))


# A plain decimal: float() would also take "nan", "inf", "1_0" and non-ASCII digits.
_DECIMAL = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _wait_seconds(text: str) -> float:
    seconds = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not 0 <= seconds <= WAIT_CAP:  # also false for nan
        raise BadRequest(f"wait must be a number of seconds from 0 to {WAIT_CAP:g}, not {text[:40]!r}")
    return seconds


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
    # parameters added to the signed URL (?ref=newsletter) update the session's url_args, as a visit does in docassemble
    result = await runtime.run_action(claims["s"], claims["a"], arguments, User.from_json(claims.get("u")),
                                      url_args=dict(request.query) or None)
    if result.kind == "json":
        return web.json_response(json.loads(codec.encode_value(result.data)))
    if result.kind == "response":
        return web.Response(text=result.text or "", content_type="text/plain")
    return web.json_response(result.to_dict())
