"""The 20-day reminder of docassemble's "Background processes" page (shared/seeds/000), ported block
by block: each YAML block becomes the action or object it stands for, and its code is copied as is.

The page's older flag name ``use_cron`` is kept on purpose (mailgate honours it with a deprecation
line). The final screen is the page's Mako text, rendered with the answers as the action's response;
``date_difference`` and ``format_date`` are mailgate's, docassemble's functions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mailgate import (
    Interview,
    Template,
    action_argument,
    date_difference,
    response,
    send_email,
    task_not_yet_performed,
)

interview = Interview("reminder-000")


def _as_date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


# mandatory question: the final screen
final_screen = Template(
    subject="",
    content="""Ok, I'll e-mail you at ${ email_address} 20 days
from ${ format_date(filing_date) }.""",
)


@interview.action("start")  # mandatory code block, then the two questions, then the final screen
def start(answers: dict[str, Any]) -> None:
    # mandatory: True / code: |
    answers["use_cron"] = True
    answers["multi_user"] = True
    # question: When was the document filed? / What is your e-mail address?
    answers["filing_date"] = _as_date(action_argument("filing_date"))
    answers["email_address"] = str(action_argument("email_address"))
    # mandatory question with a Leave button: the session stays on the server
    response(final_screen.render_text(answers))


# template: reminder_email
reminder_email = Template(
    subject="Hey, it's been 20 days.",
    content="Don't forget about that thing you need to do!",
)


@interview.action("cron_daily")  # event: cron_daily
def cron_daily(answers: dict[str, Any]) -> None:
    filing_date, email_address = answers["filing_date"], answers["email_address"]
    if task_not_yet_performed('20 day reminder') and date_difference(starting=filing_date).days > 20:
        send_email(to=email_address, template=reminder_email, task='20 day reminder')
