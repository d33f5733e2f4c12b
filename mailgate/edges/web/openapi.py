"""The OpenAPI 3.1 document of the HTTP API (served at ``/api/openapi.json``).

It says what the server accepts, no more: an optional body field may be ``null`` (the same as
leaving it out), and an action name is any string, because which actions exist depends on the
session's interview; ``x-mailgate-interviews`` lists each loaded interview's actions.
"""

from __future__ import annotations

from typing import Any

from mailgate import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
WAIT_CAP = 60.0  # seconds a GET /api/tasks/{id}?wait=... may hold the request open


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "missing or wrong API key", 404: "not found", 409: "session busy or conflict",
            413: "the body is larger than 1 MiB", 422: "the action failed or cannot run", 503: "API disabled (no api_key configured), or the store is unavailable for now (full, locked): "
            "retry after the Retry-After header's seconds"}
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _body(schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


SESSION_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
COMMON = (400, 401, 404, 503)


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional body field: ``null`` means the same as leaving it out."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


def document(interviews: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The document; ``interviews`` (each loaded interview's name and actions) make the interview enum."""
    obj = {"type": "object"}
    interview_schema: dict[str, Any] = {"type": "string", **({"enum": sorted(interviews)} if interviews else {})}
    action_schema: dict[str, Any] = {
        "type": "string", "description": "an action of the session's interview (see x-mailgate-interviews); "
        "another name gets 404 in the path, 422 in a body"}
    user = _optional({"$ref": "#/components/schemas/User"})
    arguments = _optional(obj)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailgate API", "version": __version__,
                 "description": "Sessions, their e-mail addresses and e-mails, actions, background tasks and browser tokens."},
        "x-mailgate-interviews": {name: {"actions": sorted(actions)} for name, actions in sorted((interviews or {}).items())},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "User": {"type": "object", "additionalProperties": False, "properties": {
                    "id": _optional({"type": "string"}), "email": _optional({"type": "string"}),
                    "first_name": _optional({"type": "string"}), "last_name": _optional({"type": "string"}),
                    "privileges": _optional({"type": "array", "items": {"type": "string"}})}},
                "Session": {"type": "object", "required": ["id", "interview", "version"], "properties": {
                    "id": {"type": "string"}, "interview": {"type": "string"}, "version": {"type": "integer"},
                    "owner": obj, "created": {"type": "string"}, "modified": {"type": "string"},
                    "accessed": {"type": "string"}, "answers": obj}},
                "Variables": {"type": "object", "required": ["id", "interview", "version", "variables"], "properties": {
                    "id": {"type": "string"}, "interview": {"type": "string"}, "version": {"type": "integer"},
                    "variables": obj}},
                "Task": {"type": "object", "required": ["id", "state"], "properties": {
                    "id": {"type": "string"}, "session": {"type": "string"}, "action": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
                    "value": {}, "error_type": {"type": ["string", "null"]}, "error_message": {"type": ["string", "null"]}}},
                "ActionResult": {"type": "object", "required": ["kind"], "properties": {
                    "kind": {"type": "string"}, "text": {"type": ["string", "null"]}, "data": {},
                    "commands": {"type": "array", "items": obj}, "saved": {"type": "boolean"},
                    "tasks": {"type": "array", "items": {"type": "string"}}}},
                "Email": {"type": "object", "required": ["id"], "properties": {
                    "id": {"type": "string"}, "mailbox": {"type": ["string", "null"]}, "subject": {"type": ["string", "null"]},
                    "from": {"type": ["string", "null"]}, "size": {"type": "integer"}}},
            },
        },
        "paths": {
            "/api/sessions": {"post": {
                "summary": "Create a session", "operationId": "createSession",
                "requestBody": _body({"type": "object", "required": ["interview"], "properties": {
                    "interview": interview_schema, "answers": _optional(obj), "user": user,
                    "url_args": {**_optional(obj), "description": "the parameters of the URL that started the session: "
                                 "the session's url_args variable"}}}, required=True),
                "responses": {"201": {**_json({"$ref": "#/components/schemas/Session"}, "created"), "links": {
                    op: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
                    for op in ("getSession", "deleteSession", "sessionAddress", "sessionEmails", "runAction",
                               "startTask", "browserToken", "getSessionVariables", "setSessionVariables")}}, **_errors(*COMMON, 413)}}},
            "/api/sessions/{id}": {
                "parameters": [SESSION_ID],
                "get": {"summary": "Read a session with its answers", "operationId": "getSession",
                        "responses": {"200": _json({"$ref": "#/components/schemas/Session"}, "the session"), **_errors(*COMMON)}},
                "delete": {"summary": "Delete a session and everything it owns", "operationId": "deleteSession",
                           "responses": {"204": {"description": "deleted"}, **_errors(*COMMON)}}},
            "/api/sessions/{id}/variables": {
                "parameters": [SESSION_ID],
                "get": {"summary": "The session's answers as last saved, without _internal (get_session_variables)",
                        "operationId": "getSessionVariables",
                        "parameters": [{"name": "interview", "in": "query", "required": False, "schema": {"type": "string"},
                                        "description": "if given, the session must be one of this interview (else 422)"}],
                        "responses": {"200": _json({"$ref": "#/components/schemas/Variables"}, "the variables"),
                                      **_errors(*COMMON, 422)}},
                "post": {"summary": "Set and delete variables under the session lease, saved at once (set_session_variables)",
                         "operationId": "setSessionVariables",
                         "requestBody": _body({"type": "object", "properties": {
                             "variables": _optional(obj), "delete": _optional({"type": "array", "items": {"type": "string"}}),
                             "interview": _optional({"type": "string"}), "user": user}}),
                         "responses": {"200": _json({"type": "object", "required": ["id", "version"], "properties": {
                             "id": {"type": "string"}, "version": {"type": "integer"}}}, "saved"),
                             **_errors(*COMMON, 413, 409, 422)}}},
            "/api/stash": {"post": {
                "summary": "Stash data for a prospective session (stash_data)", "operationId": "stashData",
                "requestBody": _body({"type": "object", "required": ["data"], "properties": {
                    "data": {"description": "any JSON value"},
                    "expire": {**_optional({"type": "number", "exclusiveMinimum": 0}),
                               "description": "seconds until it expires (default 7776000: 90 days)"}}}, required=True),
                # no link to retrieveStashedData: a retrieval with delete=true consumes the stash, so the
                # next one's 404 is the point, not a created resource gone missing
                "responses": {"201": _json({"type": "object", "required": ["stash_key", "secret"], "properties": {
                    "stash_key": {"type": "string"}, "secret": {"type": "string"}}}, "the tokens"),
                    **_errors(400, 401, 503, 413, 422)}}},
            "/api/stash/retrieve": {"post": {
                "summary": "Retrieve stashed data (retrieve_stashed_data)", "operationId": "retrieveStashedData",
                "requestBody": _body({"type": "object", "required": ["stash_key", "secret"], "properties": {
                    "stash_key": {"type": "string"}, "secret": {"type": "string"},
                    "delete": _optional({"type": "boolean"}),
                    "refresh": {"anyOf": [{"type": ["boolean", "null"]}, {"type": "number", "exclusiveMinimum": 0}],
                                "description": "true: renew by the original expire; a number: expire that many seconds from now"}}},
                    required=True),
                "responses": {"200": _json({"type": "object", "required": ["data"], "properties": {"data": {}}}, "the data"),
                              **_errors(*COMMON, 413, 422)}}},
            "/api/sessions/{id}/address": {"parameters": [SESSION_ID], "post": {
                "summary": "The session's e-mail address (interview_email)", "operationId": "sessionAddress",
                "requestBody": _body({"type": "object", "properties": {"key": _optional({"type": "string"}),
                                                                       "index": _optional({"type": ["string", "integer"]}),
                                                                       "user": user}}),
                "responses": {"200": _json({"type": "object", "required": ["address"], "properties": {
                    "address": {"type": "string"}}}, "the address"), **_errors(*COMMON, 413)}}},
            "/api/sessions/{id}/emails": {"parameters": [SESSION_ID], "get": {
                "summary": "The session's e-mails, oldest first", "operationId": "sessionEmails",
                "responses": {"200": _json({"type": "array", "items": {"$ref": "#/components/schemas/Email"}}, "e-mails"),
                              **_errors(*COMMON)}}},
            "/api/emails/{id}": {"parameters": [SESSION_ID], "get": {
                "summary": "One e-mail, parsed", "operationId": "getEmail",
                "responses": {"200": _json({"$ref": "#/components/schemas/Email"}, "the e-mail"), **_errors(*COMMON)}}},
            "/api/emails/{id}/raw": {"parameters": [SESSION_ID], "get": {
                "summary": "One e-mail exactly as received", "operationId": "getEmailRaw",
                "responses": {"200": {"description": "the message", "content": {"message/rfc822": {"schema": {"type": "string"}}}},
                              **_errors(*COMMON)}}},
            "/api/emails/{id}/attachments/{n}": {"parameters": [SESSION_ID, {"name": "n", "in": "path", "required": True,
                                                                               "schema": {"type": "integer", "minimum": 0}}],
                                                 "get": {"summary": "Download an attachment", "operationId": "getAttachment",
                                                         "responses": {"200": {"description": "the attachment's bytes",
                                                                               "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
                                                                       **_errors(*COMMON)}}},
            "/api/sessions/{id}/actions/{action}": {"parameters": [SESSION_ID, {"name": "action", "in": "path", "required": True,
                                                                                  "schema": action_schema}], "post": {
                "summary": "Run a foreground action under the session lease", "operationId": "runAction",
                "requestBody": _body({"type": "object", "properties": {"arguments": arguments, "user": user}}),
                "responses": {"200": _json({"$ref": "#/components/schemas/ActionResult"}, "how the action ended"),
                              **_errors(*COMMON, 413, 409, 422)}}},
            "/api/sessions/{id}/tasks": {"parameters": [SESSION_ID], "post": {
                "summary": "Start a background action", "operationId": "startTask",
                "requestBody": _body({"type": "object", "required": ["action"], "properties": {
                    "action": action_schema, "ui_notification": {"type": ["string", "null"],
                                                                      "enum": ["flash", "refresh", "javascript", "fields", None]},
                    "arguments": arguments, "user": user}}, required=True),
                "responses": {"202": {**_json({"$ref": "#/components/schemas/Task"}, "queued"), "links": {
                    "getTask": {"operationId": "getTask", "parameters": {"id": "$response.body#/id"}}}},
                    **_errors(*COMMON, 413, 422)}}},
            "/api/tasks/{id}": {"parameters": [SESSION_ID, {"name": "wait", "in": "query", "required": False,
                                                             "schema": {"type": "number", "minimum": 0, "maximum": WAIT_CAP}}],
                                "get": {"summary": "Read a task (optionally waiting up to `wait` seconds for it to finish)",
                                        "operationId": "getTask",
                                        "responses": {"200": _json({"$ref": "#/components/schemas/Task"}, "the task"),
                                                      **_errors(*COMMON)}}},
            "/api/sessions/{id}/token": {"parameters": [SESSION_ID], "post": {
                "summary": "Issue a signed, expiring browser token for /ws", "operationId": "browserToken",
                "requestBody": _body({"type": "object", "properties": {"ttl": _optional({"type": "number", "exclusiveMinimum": 0,
                                                                                         "maximum": 86400}),
                                                                       "user": user}}),
                "responses": {"201": _json({"type": "object", "required": ["token"], "properties": {
                    "token": {"type": "string"}, "expires_in": {"type": "number"}, "ws_path": {"type": "string"}}}, "the token"),
                    **_errors(*COMMON, 413)}}},
        },
    }
