"""Bodies left in the raw message (`parse_with_body_parts`) read back exactly as `parse_message` gives
them, over the shared corpus and the adversarial MIME shapes of the parse snapshot: every body there
is located (``inline_body=0``) and decoded again from the raw bytes with `read_body`."""

from __future__ import annotations

import pytest

from mailgate.mail.parse import (
    BodyPart,
    ParseLimits,
    parse_message,
    parse_with_body_parts,
    read_body,
)
from tests.unit.test_mail_parse_snapshot import CORPUS, messages


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")
def test_every_body_of_the_corpus_reads_back_from_the_raw_message_as_parsed() -> None:
    located, kept = 0, []
    for name, (raw, limits) in messages().items():
        whole = parse_message(raw, limits, attachment_data=False)
        lean, text_at, html_at = parse_with_body_parts(raw, limits, inline_body=0)
        for body, at, lean_body in ((whole.body_text, text_at, lean.body_text), (whole.body_html, html_at, lean.body_html)):
            if at is None:  # no such body, an empty one, or one not read from the data as it is (kept as text)
                assert lean_body == body, name
                if body:
                    kept.append(name)
                continue
            located += 1
            assert lean_body is None, name
            assert read_body(raw, BodyPart.from_json(at.to_json())) == body, name
        # everything else is the same record, defects included
        assert lean.__dict__ | {"body_text": None, "body_html": None} == \
            whole.__dict__ | {"body_text": None, "body_html": None}, name
    assert located >= 80  # base64, quoted-printable, 8-bit, unknown charsets, cut header blocks, multiparts
    assert len(kept) <= 3, kept  # multiparts whose boundary never comes: their whole content is the text


def test_a_short_body_stays_text_and_a_long_one_is_located() -> None:
    raw = b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "é".encode() * 1000
    short, at, _ = parse_with_body_parts(raw, ParseLimits(), inline_body=1000)
    assert short.body_text == "é" * 1000 and at is None
    long, at, _ = parse_with_body_parts(raw, ParseLimits(), inline_body=999)
    assert long.body_text is None and at == BodyPart(raw.index(b"\r\n\r\n") + 4, len(raw), "", "utf-8")
    assert read_body(raw, at) == "é" * 1000


@pytest.mark.parametrize("value", [None, "x", [1, 2, "", ""][:3], [2, 1, "", "utf-8"], ["0", 1, "", "utf-8"], [0, 1, 2, 3]])
def test_a_damaged_location_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a body part location"):
        BodyPart.from_json(value)


def test_a_location_past_the_message_is_refused() -> None:
    with pytest.raises(ValueError, match="of a message of 10 bytes"):
        read_body(b"0123456789", BodyPart(5, 11, "", "us-ascii"))
