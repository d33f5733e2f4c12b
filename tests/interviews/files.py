"""An interview whose ``incoming_email`` action reads the e-mail's parts as docassemble's file objects,
as ported interview code does: ``slurp()``, ``path()``, ``url_for()``, ``filename``, ``mimetype``,
``extension``. What it saw is the task's result (a background action's answers are never saved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailgate import Interview, action_argument, background_response, interview_email, response
from mailgate.errors import ActionError

interview = Interview("email-files")


@interview.action("start")
def start(answers: dict[str, Any]) -> None:
    answers["address"] = interview_email()
    response(answers["address"])


def _seen(part: Any) -> dict[str, Any]:
    if part is None:
        return {"none": True}
    content = part.slurp()
    raw = part.slurp(auto_decode=False)
    return {
        "filename": part.filename, "mimetype": part.mimetype, "extension": part.extension,
        "slurp": content if isinstance(content, str) else {"bytes": content.hex()},
        "raw": raw.hex(), "path": part.path(), "path_bytes": Path(part.path()).read_bytes().hex(),
        "url": part.url_for(), "str": str(part),
    }


@interview.action("incoming_email")
def incoming_email(answers: dict[str, Any]) -> None:
    email = action_argument("email")
    background_response({
        "subject": email.subject,
        "body_text": _seen(email.body_text),
        "body_html": _seen(email.body_html),
        "attachment": [_seen(a) for a in email.attachment],
    })


async_files = Interview("email-files-async")


@async_files.action("start")
def async_start(answers: dict[str, Any]) -> None:
    answers["address"] = interview_email()
    response(answers["address"])


@async_files.action("incoming_email")
async def async_incoming_email(answers: dict[str, Any]) -> None:
    """An ``async def`` handler runs on the event loop: it fetches the raw bytes first."""
    email = action_argument("email")
    try:
        email.attachment[0].slurp()
        refused = ""
    except ActionError as exc:
        refused = str(exc)
    await email.raw_async()
    background_response({"refused": refused, "attachment": [_seen(a) for a in email.attachment]})
