"""JSON-ready views of stored records, shared by the CLI and the HTTP API."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from mailgate.core import answers as codec
from mailgate.core.tasks import TaskResult
from mailgate.store.base import EmailRecord, InboundRecord, SessionRecord, TaskRecord


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def session_dict(rec: SessionRecord, *, with_answers: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rec.id,
        "interview": rec.interview,
        "version": rec.version,
        "owner": json.loads(rec.owner),
        "created": iso(rec.created_at),
        "modified": iso(rec.modified_at),
        "accessed": iso(rec.accessed_at),
    }
    if with_answers:
        data["answers"] = json.loads(rec.answers)
    return data


def variables_dict(rec: SessionRecord) -> dict[str, Any]:
    """The session's answers as stored (JSON, references tagged), without mailgate's ``_internal``:
    ``get_session_variables()`` as the API and the CLI show it."""
    answers = json.loads(rec.answers)
    answers.pop("_internal", None)
    return {"id": rec.id, "interview": rec.interview, "version": rec.version, "variables": answers}


def task_dict(rec: TaskRecord) -> dict[str, Any]:
    result = TaskResult.from_record(rec)
    return {
        "id": rec.id,
        "session": rec.session_id,
        "interview": rec.interview,
        "action": rec.action,
        "state": rec.state,
        "ui_notification": rec.ui_notification,
        "attempts": rec.attempts,
        "created": iso(rec.created_at),
        "started": iso(rec.started_at),
        "finished": iso(rec.finished_at),
        "value": json.loads(codec.encode_value(result.value)) if rec.result else None,
        "error_type": rec.error_type,
        "error_message": rec.error_message,
        "error_trace": rec.error_trace,
        "variables": result.variables,
        "arguments": json.loads(rec.arguments),
    }


def email_dict(rec: EmailRecord, *, full: bool = False, bodies: tuple[str | None, str | None] | None = None
               ) -> dict[str, Any]:
    """``bodies``: (text, html) when they are read from the raw message (`Emails.stored_bodies`)."""
    parsed = json.loads(rec.parsed)
    env = json.loads(rec.envelope)
    data: dict[str, Any] = {
        "id": rec.id,
        "mailbox": env.get("address"),
        "session": rec.session_id or None,  # none for the operator (postmaster) mailbox
        "received": iso(rec.received_at),
        "from": parsed.get("from_address"),
        "subject": parsed.get("subject"),
        "size": rec.size,
        "message_id": rec.message_id,
        "state": "stored",
    }
    if full:
        auth = json.loads(rec.authentication)
        data.update({
            "envelope_from": env.get("mail_from"),
            "client_ip": env.get("client_ip"),
            "to": parsed.get("to_address"),
            "cc": parsed.get("cc_address"),
            "reply_to": parsed.get("reply_to"),
            "date": parsed.get("datetime_message"),
            "authentication_results": auth.get("header"),
            "attachments": parsed.get("attachments"),
            "defects": parsed.get("defects"),
            "body_text": bodies[0] if bodies is not None else parsed.get("body_text"),
            "body_html": bodies[1] if bodies is not None else parsed.get("body_html"),
        })
    return data


def queued_email_dicts(rec: InboundRecord, address: Callable[[str], str]) -> list[dict[str, Any]]:
    """A queued message (answered 250, not processed yet) as rows like :func:`email_dict`'s, one per
    recipient mailbox: its envelope and size; subject and From are known once it is parsed."""
    env = json.loads(rec.envelope)
    return [{
        "id": rec.id,
        "mailbox": address(local_part),
        "session": session_id or None,
        "received": iso(rec.received_at),
        "from": env.get("mail_from") or None,
        "subject": None,
        "size": rec.size,
        "message_id": None,
        "state": "queued" if rec.worker is None else "processing",
        "client_ip": env.get("client_ip"),
        "helo": env.get("helo"),
        "tls": env.get("tls"),
        "attempts": rec.attempts,
    } for local_part, session_id, *_ in env.get("rcpt", [])]
