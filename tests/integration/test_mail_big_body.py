"""A body longer than `INLINE_BODY` is stored as its place in the raw message, not as text, and every
reader still gets its text: the DAEmail of an ``incoming_email`` action and of ``get_emails()``, the
views of the web API and the CLI. E-mails stored before (their bodies as text in the stored JSON)
read as before. Real SMTP server and smtplib, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import smtplib
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import pytest

from mailgate.config import Config
from mailgate.core.inbound import INLINE_BODY
from mailgate.core.tasks import Task
from mailgate.core.views import email_dict
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from mailgate.mail.parse import parse_message
from tests.helpers import make_config, queue_processed
from tests.helpers import runtime_of as rt
from tests.pg import create_database, drop_database

pytestmark = pytest.mark.asyncio

TEXT = "".join(f"ligne {n} : café, naïve\n" for n in range(20_000))  # about 500 KB: base64 on the wire
HTML = "<p>" + "x=y " * 100_000 + "</p>\n"  # 400 KB: quoted-printable on the wire


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Config]:
    dsn = create_database() if request.param == "postgres" else None
    try:
        yield make_config(tmp_path, store_dsn=dsn, smtp={"port": 0, "max_message_size": 4 * 2**20, "parse_processes": 1},
                          mail={"domains": ("example.test",)})
    finally:
        if dsn is not None:
            drop_database(dsn)


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker", "smtp")


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


def big_message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "sender@elsewhere.test", to, "Big body"
    msg.set_content(TEXT, cte="base64")
    msg.add_alternative(HTML, subtype="html", cte="quoted-printable")
    return msg


async def rewrite_parsed(config: Config, email_id: str, parsed: str) -> None:
    """Set an e-mail's stored JSON behind the store's back (as an older mailgate wrote it)."""
    if config.store.backend == "postgres":
        conn = await asyncpg.connect(config.store.dsn)
        try:
            await conn.execute("UPDATE emails SET parsed = $1 WHERE id = $2", parsed, email_id)
        finally:
            await conn.close()
        return

    def run() -> None:
        with sqlite3.connect(config.store.path) as conn:
            conn.execute("UPDATE emails SET parsed = ? WHERE id = ?", (parsed, email_id))
    await asyncio.to_thread(run)


async def test_a_big_body_is_read_from_the_raw_message_by_every_reader(daemon: Daemon, config: Config) -> None:
    assert daemon.smtp is not None
    runtime = rt(daemon)
    session = await runtime.create_session("email-to-case")
    address = (await runtime.run_action(session.id, "start")).text
    assert address is not None
    port = daemon.smtp.port

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.send_message(big_message(address))
    await asyncio.to_thread(send)
    await queue_processed(runtime)

    [rec] = await runtime.emails.list(session_id=session.id)
    raw = await runtime.emails.raw(rec)
    expected = parse_message(raw)
    assert expected.body_text == TEXT and expected.body_html is not None and "x=y" in expected.body_html
    stored = json.loads(rec.parsed)
    # neither body is in the stored record: it stays small, whatever the bodies' size
    assert stored["body_text"] is None and stored["body_html"] is None and len(rec.parsed) < 5_000
    assert len(TEXT) > INLINE_BODY and stored["body_text_at"][2:] == ["base64", "utf-8"]
    assert stored["body_html_at"][2] == "quoted-printable"

    # the incoming_email action's DAEmail, kept in the answers
    [task] = await runtime.store.list_tasks(session_id=session.id)
    assert await Task(task.id, runtime.tasks).wait_async(10)
    email = (await runtime.get_answers(session.id))["email"]
    assert email.body_text == TEXT and email.body_html == expected.body_html
    assert email.body_text.slurp() == TEXT and email.body_html.mimetype == "text/html"
    assert email.subject == "Big body" and email.defects == []
    # get_emails(): the session's mailboxes with their DAEmails
    [mailbox] = await runtime.get_mailboxes(session.id)
    assert [e.body_text for e in mailbox.emails] == [TEXT]
    # the web API's and the CLI's view of one e-mail
    view = email_dict(rec, full=True, bodies=await runtime.emails.stored_bodies(rec))
    assert (view["body_text"], view["body_html"]) == (TEXT, expected.body_html)
    assert await runtime.emails.bodies(rec) == (TEXT, expected.body_html)

    # the same e-mail as an older mailgate stored it (bodies as text): read as before
    old = {k: v for k, v in stored.items() if not k.endswith("_at")} | {"body_text": TEXT, "body_html": expected.body_html}
    await rewrite_parsed(config, rec.id, json.dumps(old, ensure_ascii=False, separators=(",", ":")))
    [old_rec] = await runtime.emails.list(session_id=session.id)
    assert await runtime.emails.stored_bodies(old_rec) is None  # nothing to read from the raw message
    email = (await runtime.get_answers(session.id))["email"]
    assert email.body_text == TEXT and email.body_html == expected.body_html
    assert email_dict(old_rec, full=True)["body_text"] == TEXT


async def test_a_record_that_does_not_fit_its_raw_message_is_a_clear_error(daemon: Daemon, config: Config) -> None:
    assert daemon.smtp is not None
    runtime = rt(daemon)
    session = await runtime.create_session("email-to-case-simple")
    address = (await runtime.run_action(session.id, "start")).text
    assert address is not None
    port = daemon.smtp.port

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.send_message(big_message(address))
    await asyncio.to_thread(send)
    await queue_processed(runtime)
    [rec] = await runtime.emails.list(session_id=session.id)
    stored = json.loads(rec.parsed)
    stored["body_text_at"][1] = rec.size + 10
    await rewrite_parsed(config, rec.id, json.dumps(stored))
    [rec] = await runtime.emails.list(session_id=session.id)
    with pytest.raises(Exception, match=f"e-mail {rec.id}: its stored record does not fit its raw message"):
        await runtime.emails.bodies(rec)
