"""An interview whose handlers send with Flask-Mail's API, for tests/integration/test_flask_mail.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mailgate import Interview, action_argument
from mailgate.flask_mail import Mail, Message

interview = Interview("flask_mail")
mail = Mail()  # no app: inside an action it sends through [outbound]
app_mail = Mail(SimpleNamespace(config={"TESTING": True, "MAIL_DEFAULT_SENDER": "app@example.org"}))  # an app's own


@interview.action("notify")
def notify(answers: dict[str, Any]) -> None:
    mail.send_message(subject="Your case", recipients=[answers["email"]], body=f"Hello {answers['name']}.")
    answers["sent"] = True


@interview.action("bulk")
def bulk(answers: dict[str, Any]) -> None:
    with mail.connect() as conn:
        for address in action_argument("addresses"):
            conn.send(Message(recipients=[address], body="news", subject=f"hello, {address}"))


@interview.action("send_on_loop")
async def send_on_loop(answers: dict[str, Any]) -> None:
    mail.send_message(subject="never", recipients=["a@example.org"], body="x")


@interview.action("send_on_loop_with_app")
async def send_on_loop_with_app(answers: dict[str, Any]) -> None:
    app_mail.send_message(subject="never", recipients=["a@example.org"], body="x")


@interview.action("no_recipients")
def no_recipients(answers: dict[str, Any]) -> None:
    mail.send(Message("Hello", body="x"))


@interview.action("settings")
def settings(answers: dict[str, Any]) -> None:
    # Flask-Mail code reads its settings from the Mail: inside an action, they are [outbound]'s
    answers["settings"] = {name: getattr(mail, name) for name in (
        "server", "port", "use_tls", "use_ssl", "default_sender", "max_emails", "suppress", "password")}
