"""Unit tests for mailgate.mail.parse: MIME -> ParsedMessage, never raising."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from mailgate.core.inbound import prepare_message
from mailgate.mail import parse as mail
from mailgate.mail.parse import (
    Attachment,
    BodyPart,
    ParsedMessage,
    ParseLimits,
    parse_message,
    read_body,
    sanitize_filename,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "eml"


def _strings(parsed: ParsedMessage) -> list[str]:
    out = [
        s
        for s in (parsed.message_id, parsed.subject, parsed.from_address, parsed.reply_to)
        if s is not None
    ]
    out += [*parsed.to_address, *parsed.cc_address, *parsed.defects]
    out += [s for s in (parsed.body_text, parsed.body_html) if s is not None]
    out += [s for pair in parsed.headers for s in pair]
    out += [s for a in parsed.attachments for s in (a.filename, a.content_type, a.content_id or "")]
    return out


def assert_storable(parsed: ParsedMessage, raw: bytes) -> None:
    """Every text in the record is valid UTF-8 without NUL, and the hash is the raw bytes'."""
    assert parsed.content_hash == hashlib.sha256(raw).hexdigest()
    for s in _strings(parsed):
        s.encode("utf-8")  # raises on lone surrogates
        assert "\x00" not in s
    for a in parsed.attachments:
        assert a.size == len(a.data)
        assert a.disposition in ("attachment", "inline")
        assert "/" not in a.filename and "\\" not in a.filename
        assert not a.filename.startswith(".")
        assert 0 < len(a.filename.encode("utf-8")) <= 255
    if parsed.datetime_message is not None:
        assert parsed.datetime_message.tzinfo is not None


def parse(raw: bytes, limits: ParseLimits | None = None) -> ParsedMessage:
    parsed = parse_message(raw, limits or ParseLimits())
    assert_storable(parsed, raw)
    return parsed


def part(headers: str, body: str | bytes) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + data


def multipart(subtype: str, boundary: str, *parts: bytes, extra: str = "") -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{extra}\r\n\r\n'.encode()
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return head + body + b"--" + boundary.encode() + b"--\r\n"


HEAD = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: test\r\n"
PLAIN = part("Content-Type: text/plain; charset=utf-8", "plain body")
HTML = part("Content-Type: text/html; charset=utf-8", "<p>html body</p>")


# --- body choice by structure ---------------------------------------------------------------


def test_alternative_html_first_then_text() -> None:
    p = parse(HEAD + multipart("alternative", "alt", HTML, PLAIN))
    assert p.body_text == "plain body"
    assert p.body_html == "<p>html body</p>"
    assert p.attachments == ()


def test_alternative_last_of_each_kind_wins() -> None:
    older = part("Content-Type: text/plain", "older plain")
    p = parse(HEAD + multipart("alternative", "alt", older, HTML, PLAIN))
    assert p.body_text == "plain body"
    assert p.attachments == ()  # the less faithful duplicate is not an attachment


def test_alternative_with_related_html_and_inline_image() -> None:
    image = part(
        "Content-Type: image/png\nContent-Transfer-Encoding: base64\nContent-ID: <logo@x>",
        base64.b64encode(b"\x89PNG fake").decode(),
    )
    related = multipart("related", "rel", HTML, image)
    p = parse(HEAD + multipart("alternative", "alt", PLAIN, related))
    assert (p.body_text, p.body_html) == ("plain body", "<p>html body</p>")
    [img] = p.attachments
    assert img == Attachment(
        filename="attachment-1",
        content_type="image/png",
        size=9,
        content_id="logo@x",
        disposition="inline",
        data=b"\x89PNG fake",
    )


def test_related_start_parameter_names_the_root() -> None:
    root = part("Content-Type: text/html\nContent-ID: <root@x>", "<b>root</b>")
    other = part("Content-Type: text/html\nContent-ID: <other@x>", "<b>other</b>")
    p = parse(HEAD + multipart("related", "rel", other, root, extra='; start="<root@x>"'))
    assert p.body_html == "<b>root</b>"
    assert [(a.content_id, a.data) for a in p.attachments] == [("other@x", b"<b>other</b>")]


def test_mixed_attachment_before_the_body_is_not_the_body() -> None:
    notes = part(
        'Content-Type: text/plain\nContent-Disposition: attachment; filename="notes.txt"',
        "attached notes",
    )
    named = part('Content-Type: text/plain; name="readme.txt"', "named text")
    p = parse(HEAD + multipart("mixed", "mix", notes, named, PLAIN))
    assert p.body_text == "plain body"
    assert [a.filename for a in p.attachments] == ["notes.txt", "readme.txt"]
    assert [a.data for a in p.attachments] == [b"attached notes", b"named text"]


def test_mixed_first_text_part_is_body_later_texts_are_attachments() -> None:
    pdf = part(
        'Content-Type: application/pdf\nContent-Disposition: attachment; filename="a.pdf"\n'
        "Content-Transfer-Encoding: base64",
        base64.b64encode(b"%PDF-1.4").decode(),
    )
    later = part("Content-Type: text/plain", "a later inline text")
    p = parse(
        HEAD + multipart("mixed", "mix", multipart("alternative", "alt", PLAIN, HTML), pdf, later)
    )
    assert (p.body_text, p.body_html) == ("plain body", "<p>html body</p>")
    assert [(a.filename, a.content_type, a.data) for a in p.attachments] == [
        ("a.pdf", "application/pdf", b"%PDF-1.4"),
        ("attachment-2", "text/plain", b"a later inline text"),
    ]


def test_single_part_html_message() -> None:
    p = parse(HEAD + HTML)
    assert p.body_text is None
    assert p.body_html == "<p>html body</p>"


def test_single_part_attachment_message_has_no_body() -> None:
    raw = HEAD + part("Content-Type: application/zip\nContent-Disposition: attachment", "PK")
    p = parse(raw)
    assert p.body_text is None and p.body_html is None
    assert [(a.filename, a.content_type, a.data) for a in p.attachments] == [
        ("attachment-1", "application/zip", b"PK")
    ]


def test_nested_message_rfc822_is_one_attachment() -> None:
    inner_pdf = part(
        'Content-Type: application/pdf; name="inner.pdf"\nContent-Transfer-Encoding: base64',
        base64.b64encode(b"%PDF inner").decode(),
    )
    inner = (
        b"From: carol@example.net\r\nSubject: the inner one\r\nMIME-Version: 1.0\r\n"
        + multipart("mixed", "inner", part("Content-Type: text/plain", "inner body"), inner_pdf)
    )
    forwarded = part(
        'Content-Type: message/rfc822\nContent-Disposition: attachment; filename="fw.eml"', inner
    )
    p = parse(HEAD + multipart("mixed", "outer", PLAIN, forwarded))
    assert p.body_text == "plain body"
    [att] = p.attachments
    assert (att.filename, att.content_type, att.disposition) == (
        "fw.eml",
        "message/rfc822",
        "attachment",
    )
    again = parse(att.data)
    assert again.subject == "the inner one"
    assert again.from_address == "carol@example.net"
    assert again.body_text == "inner body"
    assert [a.data for a in again.attachments] == [b"%PDF inner"]


# --- attachments with hostile names ---------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="..\\\\..\\\\boot.ini"', "boot.ini"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ("attachment; filename*=utf-8''evil%00name%0D%0ABcc%3A%20x.txt", "evilnameBcc: x.txt"),
        ("attachment; filename*=utf-8''na%C3%AFve%20r%C3%A9sum%C3%A9.pdf", "naïve résumé.pdf"),
        (
            "attachment; filename*0*=utf-8''part%20one%20; filename*1=and-two.txt",
            "part one and-two.txt",
        ),
        ('attachment; filename="=?utf-8?B?w6lsw6kucGRm?="', "élé.pdf"),
        ('attachment; filename="a\u202ecod.exe"', "acod.exe"),
        ('attachment; filename="../.."', "attachment-1"),
        ('attachment; filename="   "', "attachment-1"),
    ],
)
def test_hostile_filenames_are_sanitised(disposition: str, expected: str) -> None:
    att_part = part(
        f"Content-Type: application/octet-stream\nContent-Disposition: {disposition}", "x"
    )
    p = parse(HEAD + multipart("mixed", "m", PLAIN, att_part))
    assert [a.filename for a in p.attachments] == [expected]


def test_long_filename_is_cut_to_255_bytes_keeping_the_extension() -> None:
    name = "é" * 300 + ".pdf"
    assert len(sanitize_filename(name, "f").encode("utf-8")) <= 255
    assert sanitize_filename(name, "f").endswith("é.pdf")
    assert sanitize_filename("x" * 400, "f") == "x" * 255


def test_sanitize_filename_fallback_and_controls() -> None:
    assert sanitize_filename(None, "attachment-3") == "attachment-3"
    assert sanitize_filename("a\x00b\r\nc\x7f.txt", "f") == "abc.txt"
    assert sanitize_filename("dir/sub\\..\\.x", "f") == "x"


# --- limits -----------------------------------------------------------------------------------


def test_five_thousand_parts_hit_the_part_limit_quickly() -> None:
    parts = [PLAIN] + [
        part(f"Content-Type: application/octet-stream; name=f{i}.bin", f"data {i}")
        for i in range(4999)
    ]
    raw = HEAD + multipart("mixed", "many", *parts)
    start = time.perf_counter()
    p = parse(raw)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert p.body_text == "plain body"
    assert 0 < len(p.attachments) < 1000
    assert p.attachments[0].filename == "f0.bin"
    assert any(d.startswith("part limit (1000) reached;") for d in p.defects)
    assert p.subject == "test"


def test_part_limit_counts_the_parts_not_parsed() -> None:
    raw = HEAD + multipart("mixed", "m", *[PLAIN] * 8)
    p = parse(raw, ParseLimits(max_parts=4))
    assert len(p.attachments) == 2  # visited: the root, the body and two more parts
    assert p.defects == ("part limit (4) reached; 5 parts not parsed",)


def test_parser_stops_reading_far_beyond_the_part_limit() -> None:
    raw = HEAD + multipart("mixed", "m", *[PLAIN] * 100)
    p = parse(raw, ParseLimits(max_parts=10))
    assert len(p.attachments) == 8
    assert any(d.endswith("and the rest of the message not parsed") for d in p.defects)


def test_nesting_depth_100_stops_at_the_depth_limit() -> None:
    body = part("Content-Type: text/plain", "deep body")
    for level in range(100):
        body = multipart("mixed", f"b{level}", body)
    start = time.perf_counter()
    p = parse(HEAD + body)
    assert time.perf_counter() - start < 2.0
    assert p.body_text is None
    assert p.subject == "test"
    assert "depth limit (20) reached; 80 parts not parsed" in p.defects


def test_nesting_within_the_limit_finds_the_body() -> None:
    body = part("Content-Type: text/plain", "deep body")
    for level in range(5):
        body = multipart("mixed", f"b{level}", body)
    assert parse(HEAD + body).body_text == "deep body"


def test_huge_header_block_is_cut_and_the_rest_still_read() -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 70) for i in range(3500))
    raw = HEAD + filler + b"X-Last: never seen\r\n" + PLAIN
    assert len(raw) > 300 * 1024 - 50_000 and raw.index(b"\r\n\r\n") > 256 * 1024
    p = parse(raw)
    assert p.from_address == "alice@example.com"
    assert p.subject == "test"
    assert p.body_text == "plain body"
    assert ("X-Last", "never seen") not in p.headers
    assert any(
        d.startswith("header block of ") and "exceeds limit (262144)" in d for d in p.defects
    )


def test_one_header_line_longer_than_the_limit() -> None:
    raw = b"To: " + b"x" * 300_000 + b"\r\n\r\nbody\r\n"
    p = parse(raw)
    assert p.to_address == ()
    assert p.body_text == "body\r\n"


# --- bad input --------------------------------------------------------------------------------


def test_nul_bytes_in_headers_and_body() -> None:
    raw = b"From: a\x00b@example.com\r\nSubject: nul\x00here\r\n\r\nbody\x00with nul\r\n"
    p = parse(raw)
    assert p.subject == "nul\ufffdhere"
    assert p.body_text == "body\ufffdwith nul\r\n"
    assert "NUL characters in a text part replaced by U+FFFD" in p.defects


def test_eight_bit_raw_headers() -> None:
    raw = (
        b"From: J\xc3\xb6rg <joerg@example.com>\r\nSubject: caf\xc3\xa9 \xe9t\xe9\r\n"
        b"To: \xff\xfe <x@example.com>\r\n\r\nbody\r\n"
    )
    p = parse(raw)
    assert p.from_address == "joerg@example.com"
    assert p.to_address == ("x@example.com",)
    assert p.subject is not None and p.subject.startswith("café ")
    assert dict(p.headers)["From"] == "Jörg <joerg@example.com>"


def test_missing_from() -> None:
    p = parse(b"To: a@example.com\r\nSubject: no sender\r\n\r\nhi\r\n")
    assert p.from_address is None
    assert "missing From header" in p.defects
    assert p.to_address == ("a@example.com",)


@pytest.mark.parametrize("charset", ["x-no-such-charset", "base64", "zlib"])
def test_bad_charset_is_decoded_anyway(charset: str) -> None:
    raw = HEAD + part(f"Content-Type: text/plain; charset={charset}", "caf\u00e9 ok".encode())
    p = parse(raw)
    assert p.body_text == "café ok"
    assert any("unknown charset" in d for d in p.defects)


def test_undeclared_utf8_in_ascii_part() -> None:
    p = parse(HEAD + b"Content-Type: text/plain; charset=us-ascii\r\n\r\nna\xc3\xafve\r\n")
    assert p.body_text == "naïve\r\n"


def test_broken_base64_keeps_what_decodes() -> None:
    raw = HEAD + part(
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        "Content-Disposition: attachment; filename=b.bin",
        "aGVsbG8gd29ybGQ=@@@!!\r\nYQ",
    )
    p = parse(raw)
    [att] = p.attachments
    assert att.data.startswith(b"hello world")
    assert any("Base64" in d for d in p.defects)


def test_missing_boundary_reads_as_text() -> None:
    raw = HEAD + b"Content-Type: multipart/mixed\r\n\r\nplain words\r\n"
    p = parse(raw)
    assert p.body_text == "plain words\r\n"
    assert any("NoBoundaryInMultipartDefect" in d for d in p.defects)


@pytest.mark.parametrize(
    "raw", [b"", b"\r\n", b"\x00" * 100, b"garbage without structure", b":\r\n:\r\n"]
)
def test_garbage_does_not_raise(raw: bytes) -> None:
    p = parse(raw)
    assert p.from_address is None


def test_random_bytes_do_not_raise() -> None:
    rng = random.Random(7)
    for _ in range(50):
        raw = HEAD + bytes(rng.randrange(256) for _ in range(rng.randrange(2000)))
        parse(raw)


def test_an_exception_inside_the_parser_becomes_a_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploding:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

    monkeypatch.setattr(mail, "_LeanFeedParser", Exploding)
    p = parse(HEAD + PLAIN)
    assert p.subject == "test"  # the headers-only fallback still read the header fields
    assert p.body_text is None
    assert "message structure unreadable: RuntimeError: boom" in p.defects


def test_an_exception_in_one_part_keeps_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mail._Parser.decode_text

    def flaky(self: mail._Parser, part: object) -> str:
        if "html" in str(part):
            raise ValueError("bad part")
        return real(self, part)  # type: ignore[arg-type]

    monkeypatch.setattr(mail._Parser, "decode_text", flaky)
    p = parse(HEAD + multipart("alternative", "alt", PLAIN, HTML))
    assert p.body_text == "plain body"
    assert p.body_html is None
    assert any("(text/html) unreadable: ValueError: bad part" in d for d in p.defects)


# --- header fields ----------------------------------------------------------------------------


def test_header_fields() -> None:
    raw = (
        b"Message-ID: <id-1@example.com>\r\n"
        b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.com>\r\n"
        b'To: "Bob, B." <bob@example.org>, carol@example.net, undisclosed-recipients:;\r\n'
        b"Cc: Dan <dan@example.org>\r\nCc: eve@example.org\r\n"
        b"Reply-To: Help <help@example.com>\r\n"
        b"Subject: =?utf-8?b?w6l0w6k=?=\r\n"
        b"Date: Tue, 02 Jan 2024 10:00:00 +0200\r\n\r\nhi\r\n"
    )
    p = parse(raw)
    assert p.message_id == "<id-1@example.com>"
    assert p.from_address == "joerg@example.com"
    assert p.to_address == ("bob@example.org", "carol@example.net")
    assert p.cc_address == ("dan@example.org", "eve@example.org")
    assert p.reply_to == "help@example.com"
    assert p.subject == "été"
    assert [name for name, _ in p.headers] == [
        "Message-ID",
        "From",
        "To",
        "Cc",
        "Cc",
        "Reply-To",
        "Subject",
        "Date",
    ]
    assert p.headers[1] == ("From", "Jörg <joerg@example.com>")
    assert p.defects == ()


@pytest.mark.parametrize(
    ("date", "offset"),
    [
        ("Tue, 02 Jan 2024 10:00:00 +0200", timedelta(hours=2)),
        ("Tue, 02 Jan 2024 10:00:00 -0000", timedelta(0)),
        ("Tue, 02 Jan 2024 10:00:00", timedelta(0)),
        ("2 Jan 2024 10:00:00 EST", timedelta(hours=-5)),
    ],
)
def test_dates_are_timezone_aware(date: str, offset: timedelta) -> None:
    p = parse(HEAD + f"Date: {date}\r\n\r\nx".encode())
    assert p.datetime_message is not None
    assert p.datetime_message.utcoffset() == offset
    assert p.datetime_message.astimezone(UTC).hour == (10 - offset.total_seconds() // 3600) % 24


@pytest.mark.parametrize("date", ["yesterday", "Tue, 99 Foo 2024 99:99:99 +9999", ""])
def test_garbage_dates_are_none(date: str) -> None:
    p = parse(HEAD + f"Date: {date}\r\n\r\nx".encode())
    assert p.datetime_message is None


# --- the shared corpus ------------------------------------------------------------------------


def _corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")
def test_every_corpus_file_parses() -> None:
    files = _corpus_files()
    assert len(files) >= 50
    folders = {p.parent.name for p in files}
    assert {"malformed", "rfc", "thirdparty"} <= folders
    for path in files:
        raw = path.read_bytes()
        parsed = parse_message(raw)
        assert_storable(parsed, raw)


def test_encoded_line_breaks_in_single_line_fields_become_spaces() -> None:
    from mailgate.mail.parse import parse_message

    raw = b"From: a@b.test\r\nSubject: =?utf-8?q?Hi=0D=0AX-Fake:_row?=\r\n\r\nbody\r\n"
    parsed = parse_message(raw)
    assert parsed.subject == "Hi X-Fake: row"


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")
def test_header_objects_shared_between_parses_do_not_change_results() -> None:
    raws = [p.read_bytes() for p in _corpus_files()]
    raws.append(b"From: =?utf-8?q?Caf=C3=A9?= <a@x.test>\r\nTo: bad <<>@\r\nDate: never\r\n\r\nbody\r\n")
    raws.append(b"From: a@x.test\r\nTo: bad <<>@\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\nbody\r\n")
    assert len(raws) > 10
    shared = mail._CachingRegistry._shared
    shared.clear()
    alone = []
    for raw in raws:  # each parse with nothing shared
        alone.append(parse_message(raw))
        shared.clear()
    forwards = [parse_message(raw) for raw in raws]
    assert shared  # something was shared
    backwards = [parse_message(raw) for raw in reversed(raws)][::-1]
    assert forwards == alone and backwards == alone


def _policy_headers(raw: bytes) -> list[tuple[str, str]]:
    """Every header field as the default policy's header objects read it (no shortcut)."""
    from email import policy
    from email.parser import BytesParser

    msg = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    out = []
    for name, value in msg.raw_items():
        try:
            text = str(policy.default.header_fetch_parse(name, value))
        except Exception:  # noqa: BLE001 -- as _all_headers does
            text = value
        out.append((mail.clean_text(name), mail.clean_text(text)))
    return out


def test_plain_unstructured_headers_read_as_the_policy_reads_them() -> None:
    """`_all_headers` skips the policy's tokenizer for plain unstructured fields: same text."""
    rnd = random.Random(7)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + [" ", " ", "\t", "=?", "?=", "(", ")", '"', "\\"]
    fields = []
    for _ in range(3000):
        value = "".join(rnd.choice(alphabet) for _k in range(rnd.randint(0, 60))).lstrip(" \t")
        if rnd.random() < 0.3:  # folded over several lines
            cut = rnd.randint(0, len(value))
            value = value[:cut] + "\r\n " + value[cut:]
        name = rnd.choice(["X-Test", "Received", "DKIM-Signature", "Comments", "Keywords", "List-Id"])
        fields.append(f"{name}: {value}".encode())
    fields.append(b'To: "Plain Name" <p@x.test>,  q@x.test')  # structured: the policy rewrites it
    fields.append(b"Date: Mon,  1 Jan 2024 00:00:00 +0000")
    fields.append(b"X-Encoded: =?utf-8?q?Caf=C3=A9?=  and   spaces\t")
    fields.append("X-Eight-Bit: Caf\u00e9".encode())
    raw = b"\r\n".join([b"From: a@b.test", *fields]) + b"\r\n\r\nbody\r\n"
    parsed = parse_message(raw, ParseLimits(max_header_bytes=1 << 20))
    assert list(parsed.headers) == _policy_headers(raw)
    assert len(parsed.headers) == len(fields) + 1
    assert ("To", "Plain Name <p@x.test>, q@x.test") in parsed.headers


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")
def test_corpus_headers_read_as_the_policy_reads_them() -> None:
    for path in _corpus_files():
        raw = path.read_bytes()
        parsed = parse_message(raw)
        if any("header" in d and "unreadable" in d for d in parsed.defects):
            continue  # the header block itself did not parse: compared by the tests above
        assert list(parsed.headers) == _policy_headers(raw), path.name


def test_fields_after_a_huge_header_block_are_read_all_the_same() -> None:
    # 256 KB of Received: fields push From (and the MIME fields) past max_header_bytes
    received = b"".join(b"Received: from relay%d.example by mx.example; Tue, 2 Jan 2024 10:00:00 +0000\r\n" % i
                        for i in range(3500))
    raw = (received + b"From: Victim <ceo@victim.example>\r\nTo: bob@example.org\r\nSubject: =?utf-8?q?pay_now?=\r\n"
           b"Message-ID: <m1@victim.example>\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=b1\r\nX-Last: not needed\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nplain body\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n"
           b"--b1--\r\n")
    assert raw.index(b"From:") > 256 * 1024
    p = parse(raw)
    assert p.from_address == "ceo@victim.example"
    assert (p.subject, p.message_id, p.to_address) == ("pay now", "<m1@victim.example>", ("bob@example.org",))
    assert p.datetime_message is not None and p.datetime_message.year == 2024
    assert (p.body_text, p.body_html) == ("plain body", "<p>html</p>")
    assert ("X-Last", "not needed") not in p.headers
    assert "read past the header limit all the same: From, To, Subject, Message-ID, Date, MIME-Version, Content-Type" \
        in p.defects
    # a field that is in the part read is not taken again from past the cut
    twice = b"From: first@example.com\r\n" + received + b"From: second@example.com\r\n\r\nbody\r\n"
    assert parse(twice).from_address == "first@example.com"


def test_fields_past_the_header_limit_are_read_within_a_bound() -> None:
    received = b"".join(b"Received: from relay%d.example by mx.example\r\n" % i for i in range(6000))
    raw = received + b"Subject: " + b"s" * 100_000 + b"\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    p = parse(raw)
    assert p.subject is None and p.from_address == "a@example.com"
    assert "Subject field past the header limit not read: too long" in p.defects


def test_many_empty_lines_cost_memory_in_proportion_to_the_bytes() -> None:
    # 33 MB of empty lines took the stdlib feed parser (and dkimpy's line split) to 1.7 GB and 11 s;
    # 4 MB here: the body is read in one piece, not as two million line objects
    import tracemalloc

    raw = b"From: a@example.com\r\nSubject: x\r\n\r\n" + b"\r\n" * (2 * 2**20)
    tracemalloc.start()
    try:
        p = parse(raw)
        prepared = prepare_message(raw, ParseLimits(), {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.body_text == "\r\n" * (2 * 2**20) and p.defects == ()
    # the stored record locates the body in the raw message instead of holding it (twice as JSON)
    stored = json.loads(prepared.parsed.json)
    assert prepared.dkim == () and stored["body_text"] is None and len(prepared.parsed.json) < 2000
    assert read_body(raw, BodyPart.from_json(stored["body_text_at"])) == p.body_text
    assert peak < 3 * len(raw), peak / len(raw)


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [("text/plain; charset=KOI8-R", "koi8-r"), ("text/csv; charset=windows-1251", "windows-1251"),
     ("text/plain", None),  # none declared
     ("text/plain; charset=x-no-such-charset", None), ("text/plain; charset=base64", None),  # not a text codec
     ('text/plain; charset="utf-8\\r\\nX-Evil: 1"', None),  # not a plain name: never given back in a header
     ("application/octet-stream; charset=utf-8", None)],  # not text
)
def test_an_attachment_keeps_its_declared_charset(content_type: str, charset: str | None) -> None:
    attached = part(f"Content-Type: {content_type}\nContent-Disposition: attachment; filename=a.txt", "abc")
    [att] = parse(HEAD + multipart("mixed", "mix", PLAIN, attached)).attachments
    assert att.charset == charset
