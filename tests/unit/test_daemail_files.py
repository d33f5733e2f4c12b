"""A DAEmail's bodies and attachments as docassemble's file objects, without a store (the web side's
signed URLs: tests/integration/test_web.py; read by interview code on mail received over SMTP:
tests/integration/test_daemail_received.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mailgate.core.daemail import EmailBody, _decoded, _extension
from mailgate.errors import ActionError


def test_a_body_is_its_text_and_a_file() -> None:
    body = EmailBody("<p>café</p>", "e1", "text/html")
    assert body == "<p>café</p>" and body.upper() == "<P>CAFÉ</P>"  # still a str
    assert (body.filename, body.mimetype, body.extension) == ("body.html", "text/html", "html")
    assert body.slurp() == "<p>café</p>" and body.slurp(auto_decode=False) == "<p>café</p>".encode()
    assert body.size_in_bytes() == 12
    path = Path(body.path())
    assert path.name == "e1-html.html" and path.read_bytes() == "<p>café</p>".encode()
    assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
    assert body.path() == str(path)  # one file per part
    with pytest.raises(ActionError, match="needs a running mailgate"):
        body.url_for()
    for seconds in (float("inf"), float("nan"), "60", True):  # never a URL that does not expire, nor a traceback
        with pytest.raises(ActionError, match=r"url_for\(seconds=...\) takes a number of seconds"):
            body.url_for(seconds=seconds)  # type: ignore[arg-type]


def test_slurp_decodes_text_types_as_docassemble() -> None:
    assert _decoded("naïve".encode(), "text/csv", True) == "naïve"
    assert _decoded("naïve".encode("windows-1252"), "text/plain", True) == "naïve"
    assert _decoded(b'{"a": 1}', "application/json", True) == '{"a": 1}'
    assert _decoded(b"%PDF", "application/pdf", True) == b"%PDF"
    assert _decoded(b"text", "text/plain", False) == b"text"


@pytest.mark.parametrize(
    ("filename", "mimetype", "extension"),
    [("Scan.PDF", "application/pdf", "pdf"), ("scan", "application/pdf", "pdf"), ("notes", "text/plain", "txt"),
     ("archive.tar.gz", "application/gzip", "gz"), ("blob", "application/x-unknown-thing", ""), ("x", "bogus", "")],
)
def test_extension(filename: str, mimetype: str, extension: str) -> None:
    assert _extension(filename, mimetype) == extension


def test_slurp_decodes_in_the_declared_charset() -> None:
    assert _decoded("Привет".encode("koi8-r"), "text/plain", True, "koi8-r") == "Привет"
    assert _decoded("Привет".encode("koi8-r"), "text/plain", False, "koi8-r") == "Привет".encode("koi8-r")
    assert _decoded(b"caf\xe9", "text/plain", True, "utf-8") == "café"  # a wrong declaration: as without one
    assert _decoded(b"%PDF", "application/pdf", True, "koi8-r") == b"%PDF"


def test_path_makes_its_folder_again_when_it_was_cleaned_away() -> None:
    body = EmailBody("text", "e2", "text/plain")
    path = Path(body.path())
    shutil.rmtree(path.parent)  # as systemd-tmpfiles does to a folder left alone for 10 days
    again = Path(body.path())
    assert again.read_bytes() == b"text" and again.parent.stat().st_mode & 0o077 == 0
