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
    text = {400: "bad request", 401: "missing or wrong API key", 403: "the user is not assigned this task", 404: "not found", 409: "session busy or conflict",
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
                **AUTOMATION_SCHEMAS,
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
                               "startTask", "browserToken", "getSessionVariables", "setSessionVariables")}}, **_errors(*COMMON, 413, 422)}}},
            "/api/sessions/{id}": {
                "parameters": [SESSION_ID],
                "get": {"summary": "Read a session with its answers", "operationId": "getSession",
                        "responses": {"200": _json({"$ref": "#/components/schemas/Session"}, "the session"), **_errors(*COMMON)}},
                "delete": {"summary": "Delete a session and everything it owns, under its lease (409 if an action holds it "
                                      "past lock_timeout)", "operationId": "deleteSession",
                           "responses": {"204": {"description": "deleted"}, **_errors(*COMMON, 409)}}},
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
            **automation_paths(user),
        },
    }


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


_nullable_str = {"type": ["string", "null"]}
AUTOMATION_STATES = ["running", "finished", "failed", "killed"]
AUTOMATION_SCHEMAS: dict[str, Any] = {
    "Automation": {"type": "object", "required": ["id", "class", "state", "data"], "properties": {
        "id": {"type": "string"}, "class": {"type": "string"}, "state": {"type": "string", "enum": AUTOMATION_STATES},
        "session": _nullable_str, "data": {"type": "object"}, "version": {"type": "integer"}, "key": {"type": "string"},
        "created": {"type": "boolean", "description": "POST /api/automations only: false = the running unique one"},
        "orphaned": {"type": ["string", "null"], "description": "lists and reads: why it cannot run here (its class "
                     "or an open step's node is gone), else null"}}},
    "AutomationStep": {"type": "object", "required": ["id", "node", "state"], "properties": {
        "id": {"type": "string"}, "node": {"type": "string"}, "state": {"type": "string", "enum": [
            "waiting", "interaction", "running", "done", "skipped", "failed", "joined"]},
        "message": _nullable_str, "attempts": {"type": "integer"}, "previous": _nullable_str, "split": _nullable_str}},
    "AutomationMessage": {"type": "object", "required": ["id", "message", "state"], "properties": {
        "id": {"type": "string"}, "message": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "delivered", "dropped"]}, "result": {}}},
    "AutomationTask": {"type": "object", "required": ["step", "node", "automation", "class"], "properties": {
        "step": {"type": "string"}, "node": {"type": "string"}, "automation": {"type": "string"},
        "class": {"type": "string"}, "session": _nullable_str, "description": {"type": "string"}, "fields": {}}},
    "FormErrors": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "errors": {"type": "object", "additionalProperties": {"type": "string"},
                                                "description": "each invalid field's message"}}},
}


def automation_paths(user: dict[str, Any]) -> dict[str, Any]:
    """The automations routes (AUTOMATIONS.md §4.4)."""
    auto = {"$ref": _ref("Automation")}
    message_body = {"message": {"type": "string", "description": "the receiver's name without receive_"},
                    "token": _optional({"type": "string"}), "data": {"description": "any JSON value (default {})"},
                    "user": user}
    auto_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    step = {"name": "step", "in": "path", "required": True, "schema": {"type": "string"}}
    task_user = [{"name": "user", "in": "query", "required": False, "schema": {"type": "string"}},
                 {"name": "privilege", "in": "query", "required": False, "schema": {"type": "array", "items": {"type": "string"}},
                  "style": "form", "explode": True}]
    form_errors = {"403": _json({"$ref": _ref("FormErrors")}, "the user is not assigned this task"),
                   "409": _json({"$ref": _ref("FormErrors")}, "the task was already submitted or closed")}
    return {
        "/api/automation-classes": {"get": {
            "summary": "The loaded automation classes", "operationId": "automationClasses",
            "responses": {"200": _json({"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "verbose_name": {"type": "string"},
                "receivers": {"type": "array", "items": {"type": "string"}}}}}, "the classes"), **_errors(401, 503)}}},
        "/api/automation-classes/{cls}/broadcast": {
            "parameters": [{"name": "cls", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {"summary": "Queue a message to every running automation of a class; with wait, wait up to that "
                                "many seconds for its end and answer the receivers' results in order",
                     "operationId": "broadcastMessage",
                     "requestBody": _body({"type": "object", "required": ["message"], "additionalProperties": False,
                                           "properties": {**message_body, "wait": _optional(
                                               {"type": "number", "minimum": 0, "maximum": WAIT_CAP})}}, required=True),
                     "responses": {"200": _json({"allOf": [{"$ref": _ref("AutomationMessage")}, {
                                       "type": "object", "required": ["results"],
                                       "properties": {"results": {"type": "array", "items": {}}}}]},
                                       "ended (with wait): results"),
                                   "202": _json({"$ref": _ref("AutomationMessage")}, "queued"),
                                   **_errors(*COMMON, 413, 422)}}},
        "/api/automations": {
            "post": {"summary": "Start an automation (unique classes: 200 with the running one)",
                     "operationId": "startAutomation",
                     "requestBody": _body({"type": "object", "required": ["class"], "additionalProperties": False, "properties": {
                         "class": {"type": "string", "description": "dotted path, Meta.name or unambiguous class name"},
                         "session": _optional({"type": "string"}), "data": _optional({"type": "object"}), "user": user}},
                         required=True),
                     "responses": {"201": {**_json(auto, "started"), "links": {
                         op: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
                         for op in ("getAutomation", "killAutomation", "sendAutomationMessage", "retryAutomation")}},
                         "200": _json(auto, "a unique class's running automation"), **_errors(*COMMON, 413, 422)}},
            "get": {"summary": "List automations in creation order", "operationId": "listAutomations",
                    "parameters": [{"name": "class", "in": "query", "required": False, "schema": {"type": "string"}},
                                   {"name": "state", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": AUTOMATION_STATES}},
                                   {"name": "session", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "responses": {"200": _json({"type": "array", "items": auto}, "the automations"), **_errors(400, 401, 503)}}},
        "/api/automations/{id}": {
            "parameters": [auto_id],
            "get": {"summary": "An automation with its history (steps, tree) and messages", "operationId": "getAutomation",
                    "responses": {"200": _json({"allOf": [auto, {"type": "object", "required": ["steps", "messages"], "properties": {
                        "steps": {"type": "array", "items": {"$ref": _ref("AutomationStep")}},
                        "tree": {"type": "array", "items": {"type": "string"}},
                        "messages": {"type": "array", "items": {"$ref": _ref("AutomationMessage")}}}}]}, "the automation"),
                        **_errors(*COMMON)}},
            "delete": {"summary": "Kill an automation: delete it with its history", "operationId": "killAutomation",
                       "responses": {"204": {"description": "deleted"}, **_errors(*COMMON)}}},
        "/api/automations/{id}/messages": {"parameters": [auto_id], "post": {
            "summary": "Queue a message to an automation; with wait, wait up to that many seconds for its delivery",
            "operationId": "sendAutomationMessage",
            "requestBody": _body({"type": "object", "required": ["message"], "additionalProperties": False, "properties": {
                **message_body, "wait": _optional({"type": "number", "minimum": 0, "maximum": WAIT_CAP})}}, required=True),
            "responses": {"200": _json({"$ref": _ref("AutomationMessage")}, "delivered or dropped (with wait)"),
                          "202": _json({"$ref": _ref("AutomationMessage")}, "queued (not delivered within wait)"),
                          **_errors(*COMMON, 413, 422)}}},
        "/api/automations/{id}/retry": {"parameters": [auto_id], "post": {
            "summary": "Run a failed automation's failed steps again", "operationId": "retryAutomation",
            "requestBody": _body({"type": "object", "additionalProperties": False}),
            "responses": {"200": _json(auto, "running again"), **_errors(*COMMON, 413, 422)}}},
        "/api/automation-tasks": {"get": {
            "summary": "The open forms a user may submit", "operationId": "listAutomationTasks",
            "parameters": [{**task_user[0], "required": True, "schema": {"type": "string", "minLength": 1}}, task_user[1]],
            "responses": {"200": _json({"type": "array", "items": {"$ref": _ref("AutomationTask")}}, "the tasks"),
                          **_errors(400, 401, 503)}}},
        "/api/automation-tasks/{step}": {
            "parameters": [step],
            "get": {"summary": "One open form, if the user is assigned it", "operationId": "getAutomationTask",
                    "parameters": task_user,
                    "responses": {"200": _json({"$ref": _ref("AutomationTask")}, "the task"), **_errors(*COMMON), **form_errors}},
            "post": {"summary": "Submit a form's values as a user; the automation advances past the form",
                     "operationId": "submitAutomationTask",
                     "requestBody": _body({"type": "object", "required": ["values"], "additionalProperties": False,
                                           "properties": {"values": {"type": "object"}, "user": user}}, required=True),
                     "responses": {"200": _json({"type": "object", "required": ["step", "automation"], "properties": {
                         "step": {"type": "string"}, "node": {"type": "string"}, "values": {"type": "object"},
                         "automation": auto}}, "submitted; the automation advanced"),
                         **_errors(*COMMON, 413, 422), **form_errors,
                         "400": _json({"$ref": _ref("FormErrors")}, "bad request, or invalid values (errors by field)")}}},
    }
