"""A DAEmail's parts as docassemble's file objects, read by interview code in an ``incoming_email``
action on mail received over real SMTP, and served by the web side's signed ``GET /file/{token}``:
a message without an HTML body, in non-UTF-8 charsets, with an attachment that has no file name.
(Without a store: tests/unit/test_daemail_files.py; an HTML body and a forged or expired token:
tests/integration/test_web.py.)"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from mailgate.config import Config
from mailgate.core.tasks import Task
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import INTERVIEWS, make_config, queue_processed, runtime_of

pytestmark = pytest.mark.asyncio

RUSSIAN = "Привет, мир: заявка 7"
FRENCH = "Déjà reçu, l'été à Noël"
API_KEY = "daemail-files-test-api-key-0123456789"


@pytest_asyncio.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config: Config = make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test"}, web={"port": 0, "api_key": API_KEY},
                                 mail={"domains": ("example.test",)})
    config = config.replace(interviews={**vars(config.interviews),
                                        "paths": (*config.interviews.paths, str(INTERVIEWS / "files.py"))})
    async with Daemon(config, roles=("worker", "smtp", "web"), resolver=StaticResolver({})) as d:
        yield d


def message(to: str) -> MIMEMultipart:
    """Text only (no HTML), in ISO-8859-1; a text attachment in KOI8-R; a PDF without a file name."""
    msg = MIMEMultipart()
    msg["From"], msg["To"], msg["Subject"] = "sender@elsewhere.test", to, "Files"
    msg.attach(MIMEText(FRENCH, "plain", "iso-8859-1"))
    notes = MIMEText(RUSSIAN, "plain", "koi8-r")
    notes.add_header("Content-Disposition", "attachment", filename="notes.txt")
    msg.attach(notes)
    pdf = MIMEApplication(b"%PDF-1.4 nameless", "pdf")
    pdf.add_header("Content-Disposition", "attachment")
    msg.attach(pdf)
    return msg


async def fetch(daemon: Daemon, url: str, api_key: str | None = None) -> tuple[int, str, str | None, bytes]:
    """(status, content type, charset, body) of a URL's path, asked of the daemon's web port (a signed
    URL needs no API key)."""
    assert daemon.web is not None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(headers=headers) as http, \
            http.get(f"http://127.0.0.1:{daemon.web.port}{urlsplit(url).path}") as r:
        return r.status, r.content_type, r.charset, await r.read()


async def received(daemon: Daemon, interview: str) -> tuple[str, dict[str, Any]]:
    """Send the test message over SMTP to a new session of ``interview``: the session's id and what
    its ``incoming_email`` action saw of the DAEmail."""
    runtime = runtime_of(daemon)
    session = await runtime.create_session(interview)
    address = (await runtime.run_action(session.id, "start")).text
    assert address is not None and daemon.smtp is not None
    port = daemon.smtp.port

    def send() -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            return client.sendmail("sender@elsewhere.test", [address], message(address).as_bytes())

    assert await asyncio.to_thread(send) == {}
    await queue_processed(runtime)
    [task] = await runtime.store.list_tasks(session_id=session.id)
    assert task.action == "incoming_email"
    return session.id, await Task(task.id, runtime.tasks).get_async(10)


async def test_incoming_email_reads_its_parts_as_docassemble_files(daemon: Daemon) -> None:
    runtime = runtime_of(daemon)
    session_id, seen = await received(daemon, "email-files")

    assert seen["subject"] == "Files"
    assert seen["body_html"] == {"none": True}  # no HTML part: None, as in docassemble
    text = seen["body_text"]
    assert (text["filename"], text["mimetype"], text["extension"]) == ("body.txt", "text/plain", "txt")
    assert text["slurp"] == FRENCH == text["str"]  # decoded from ISO-8859-1
    assert bytes.fromhex(text["raw"]) == FRENCH.encode() == bytes.fromhex(text["path_bytes"])

    notes, pdf = seen["attachment"]
    assert (notes["filename"], notes["mimetype"], notes["extension"]) == ("notes.txt", "text/plain", "txt")
    assert notes["slurp"] == RUSSIAN  # decoded with the part's declared charset
    assert bytes.fromhex(notes["raw"]) == RUSSIAN.encode("koi8-r") == bytes.fromhex(notes["path_bytes"])
    assert notes["path"].endswith(".txt")

    assert (pdf["mimetype"], pdf["extension"]) == ("application/pdf", "pdf")
    assert pdf["filename"] and "/" not in pdf["filename"] and pdf["str"] == pdf["filename"]
    assert pdf["slurp"] == {"bytes": b"%PDF-1.4 nameless".hex()} and pdf["path"].endswith(".pdf")
    assert bytes.fromhex(pdf["path_bytes"]) == b"%PDF-1.4 nameless"

    # the signed URLs serve the bytes with their type (and a text's charset), without an API key
    status, ctype, charset, body = await fetch(daemon, text["url"])
    assert (status, ctype) == (200, "text/plain") and body.decode(charset or "utf-8") == FRENCH
    status, ctype, charset, body = await fetch(daemon, notes["url"])
    assert (status, ctype) == (200, "text/plain") and body.decode(charset or "utf-8") == RUSSIAN, (charset, body)
    status, ctype, _, body = await fetch(daemon, pdf["url"])
    assert (status, ctype, body) == (200, "application/pdf", b"%PDF-1.4 nameless")
    status, ctype, _, body = await fetch(daemon, text["url"].replace("/file/", "/file/x"))
    assert status == 403 and b"%PDF" not in body  # not a token it signed
    # the HTTP API's attachment download gives the charset too
    [rec] = await runtime.emails.list(session_id=session_id)
    status, ctype, charset, body = await fetch(daemon, f"/api/emails/{rec.id}/attachments/0", API_KEY)
    assert (status, ctype, charset) == (200, "text/plain", "koi8-r") and body.decode("koi8-r") == RUSSIAN


async def test_an_async_handler_fetches_the_raw_bytes_first(daemon: Daemon) -> None:
    _, seen = await received(daemon, "email-files-async")
    # on the event loop, slurp() would block it: the error says what to do instead, and that works
    assert "in an async handler use `await email.raw_async()` first" in seen["refused"], seen["refused"]
    notes, pdf = seen["attachment"]
    assert notes["slurp"] == RUSSIAN and bytes.fromhex(pdf["path_bytes"]) == b"%PDF-1.4 nameless"
