"""Ports of docassemble's e-mail demos: email-to-case-simple and email-to-case.

``start`` hands out the session's address (``interview_email()``); ``screen`` shows what the
docassemble page shows. In email-to-case the ``incoming_email`` background action saves the e-mail
into the answers through ``background_response_action()``.
"""

from __future__ import annotations

from typing import Any

from mailgate import (
    Interview,
    action_argument,
    background_response,
    background_response_action,
    get_emails,
    interview_email,
    json_response,
    response,
)

Answers = dict[str, Any]

simple = Interview("email-to-case-simple")


@simple.action("start")
def _simple_start(answers: Answers) -> None:
    answers["multi_user"] = True
    answers["address"] = interview_email()
    response(answers["address"])


@simple.action("screen")
def _simple_screen(answers: Answers) -> None:
    lines = [f"Send an e-mail to {answers['address']}."]
    for mailbox in get_emails():
        for email in mailbox.emails:
            lines.append(f"From {email.from_address}: {email.subject}")
    if len(lines) == 1:
        lines.append("No e-mails have arrived yet.")
    response("\n".join(lines))


case = Interview("email-to-case")


@case.action("start", browser=True)
def _case_start(answers: Answers) -> None:
    answers["multi_user"] = True
    answers["address"] = interview_email()
    response(answers["address"])


@case.action("incoming_email")
def _case_incoming(answers: Answers) -> None:
    email = action_argument("email")
    background_response_action("save_email", email=email)


@case.action("save_email")
def _case_save(answers: Answers) -> None:
    answers.setdefault("emails", []).append(action_argument("email"))
    answers["email"] = action_argument("email")
    background_response()


@case.action("screen", browser=True)
def _case_screen(answers: Answers) -> None:
    emails = answers.get("emails", [])
    if not emails:
        response(f"Send an e-mail to {answers['address']}. No e-mails have arrived yet.")
    response("\n".join(f"From {e.from_address}: {e.subject}" for e in emails))


@case.action("emails", browser=True)
def _case_emails(answers: Answers) -> None:
    json_response([{"id": e.id, "subject": e.subject, "from": e.from_address, "body_text": e.body_text}
                   for e in answers.get("emails", [])])
