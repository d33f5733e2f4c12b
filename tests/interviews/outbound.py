"""An interview that sends mail, for tests/integration/test_outbound.py (loaded from this path).

``cron_daily`` is docassemble's 20-day reminder from "Scheduled tasks", in Python.
"""

from __future__ import annotations

from typing import Any

from mailgate import (
    Interview,
    action_argument,
    background_response,
    interview_url_action,
    response,
    today,
)
from mailgate.author.sending import (
    mark_task_as_performed,
    send_email,
    send_email_async,
    set_task_counter,
    task_not_yet_performed,
    task_performed,
    times_task_performed,
)
from mailgate.author.templates import Template

interview = Interview("reminders")

reminder_email = Template(
    subject="""
        Hey, it's been 20 days.
    """,
    content="""
        Don't forget about that thing you need to do, ${ name }!

        Your case: **${ case["number"] }**.
    """,
)


@interview.action("cron_daily")
def cron_daily(answers: dict[str, Any]) -> None:
    if task_not_yet_performed("20 day reminder") and answers["days"] > 20:
        send_email(to=answers["email_address"], template=reminder_email, task="20 day reminder")
    response()


@interview.action("send")
def send(answers: dict[str, Any]) -> None:
    answers["sent"] = send_email(**action_argument("kwargs"))


@interview.action("send_async")
async def send_async(answers: dict[str, Any]) -> None:
    answers["sent"] = await send_email_async(**action_argument("kwargs"))


@interview.action("send_sync_on_loop")
async def send_sync_on_loop(answers: dict[str, Any]) -> None:
    send_email(to="someone@example.org", subject="never sent")


@interview.action("send_bg")
def send_bg(answers: dict[str, Any]) -> None:
    sent = send_email(**action_argument("kwargs"))
    background_response({"sent": sent, "times": times_task_performed("bg mail")})


@interview.action("counters")
def counters(answers: dict[str, Any]) -> None:
    seen = [task_performed("t"), task_not_yet_performed("t"), times_task_performed("t")]
    seen.append(mark_task_as_performed("t"))
    seen.append(mark_task_as_performed("t"))
    seen += [task_performed("t"), task_not_yet_performed("t"), times_task_performed("t")]
    set_task_counter("u", 5)
    seen.append(times_task_performed("u"))
    set_task_counter("t", 0)
    seen.append(task_not_yet_performed("t"))
    answers["seen"] = seen


greeting = Template(content="Hello **${ name }**, you have ${ count } new messages.")


@interview.action("greet", browser=True)  # a check-in action
def greet(answers: dict[str, Any]) -> None:
    background_response(target="greeting", content=greeting)


# a template that names an answer the session does not have: its error must reach the author
broken_reminder = Template(content="Dear ${ name },\n\nyour case ${ case_number }.", name="broken_reminder")


@interview.action("send_broken")
def send_broken(answers: dict[str, Any]) -> None:
    send_email(to=answers["email_address"], template=broken_reminder)


@interview.action("send_broken_bg")
def send_broken_bg(answers: dict[str, Any]) -> None:
    send_email(to=answers["email_address"], template=broken_reminder)
    background_response("sent")


# docassemble's target-template demo (000), verbatim: the template reads the check-in's own arguments
question_food = Template(content="""\
% if action_argument('favorite_food'):
_What?_  You like
${ action_argument('favorite_food').upper() }?
% endif
""", name="question_food")


@interview.action("question_food", browser=True)
def _question_food(answers: dict[str, Any]) -> None:
    background_response(target="feedback", content=question_food)


@interview.action("set_due")
def set_due(answers: dict[str, Any]) -> None:
    answers["due"] = today().plus(days=20)  # docassemble: due = today().plus(days=20)


@interview.action("show_due")
def show_due(answers: dict[str, Any]) -> None:
    response(f"Due {answers['due']}, or {answers['due'].plus(days=1).format_date(format='yyyy-MM-dd')}.")


# docassemble's functions inside an e-mail template, and a URL in a link and in an HTML attribute
links_email = Template(
    subject="${ user_info().first_name }, your case ${ case['number'] }",
    content="""
        ${ comma_and_list(parties) }: filed ${ format_date(filing_date) },
        ${ int(date_difference(starting=filing_date, ending=current_datetime()).days) } days ago.

        [Show it](${ interview_url_action('show_due', note='a&b') }) or
        <a href="${ interview_url_action('show_due', note='a&b') }">here</a>.
    """,
    name="links_email",
)


@interview.action("send_links")
def send_links(answers: dict[str, Any]) -> None:
    send_email(to=answers["email_address"], template=links_email)
    response(interview_url_action("show_due", note="a&b"))
