"""The parse of the shared corpus and of adversarial MIME shapes, pinned: `parse_message` and the
stored JSON (`parse_for_store`) must give exactly what they gave before the memory-lean parser
(snapshot made with the line-per-string feed parser). Regenerate only for an intended change:

    python tests/unit/test_mail_parse_snapshot.py --regenerate
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import pytest

from mailgate.core.inbound import parse_for_store
from mailgate.mail.parse import ParsedMessage, ParseLimits, parse_message

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "eml"
SNAPSHOT = Path(__file__).resolve().parent / "data" / "parse_snapshot.json"
_B64 = base64.encodebytes(bytes(range(256)) * 40)


def _mp(boundary: bytes, parts: list[bytes], eol: bytes = b"\r\n", close: bool = True, sub: bytes = b"mixed",
        preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = b"Content-Type: multipart/" + sub + b"; boundary=\"" + boundary + b"\"" + eol + eol + preamble
    for p in parts:
        out += b"--" + boundary + eol + p + eol
    if close:
        out += b"--" + boundary + b"--" + eol + epilogue
    return out


def edge_cases() -> dict[str, bytes]:
    """Messages whose MIME shape exercises the feed parser's corners (line ends, boundaries, EOF)."""
    head = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: edge\r\n"
    text = b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n"
    b64 = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n" \
          b"Content-Disposition: attachment; filename=a.bin\r\n\r\n" + _B64.replace(b"\n", b"\r\n")
    cases: dict[str, bytes] = {
        "single": head + b"\r\n" + b"body\r\n" * 3,
        "single no final eol": head + b"\r\nbody\r\nlast",
        "single empty lines": head + b"\r\n" + b"\r\n" * 5000,
        "single lf": head.replace(b"\r\n", b"\n") + b"\nbody\nmore\n",
        "single cr only": head.replace(b"\r\n", b"\r") + b"\rbody\rmore\r",
        "no header-body separator": head + b"not a header line\r\nbody\r\n",
        "no body": head,
        "headers only, separator": head + b"\r\n",
        "nul and 8bit": head + b"Content-Type: text/plain; charset=us-ascii\r\n\r\nnul\x00 caf\xc3\xa9 \xff\r\n",
        "latin1 declared": head + b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n",
        "unknown charset": head + b"Content-Type: text/plain; charset=x-nonsense\r\n\r\ncaf\xc3\xa9\r\n",
        "base64 charset": head + b"Content-Type: text/plain; charset=base64\r\n\r\nabc\r\n",
        "utf-7 charset": head + b"Content-Type: text/plain; charset=utf-7\r\n\r\nHi Mom -+Jjo--!\r\n",
        "qp body": head + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                   b"caf=C3=A9 soft=\r\nbreak\r\n",
        "base64 body": head + b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                       + base64.encodebytes(b"<p>hi</p>" * 100).replace(b"\n", b"\r\n"),
        "mixed": head + _mp(b"b1", [text, b64]),
        "mixed lf": (head + _mp(b"b1", [text, b64])).replace(b"\r\n", b"\n"),
        "mixed cr": (head + _mp(b"b1", [text, b64])).replace(b"\r\n", b"\r"),
        "mixed no close": head + _mp(b"b1", [text, b64], close=False),
        "mixed no close no eol": head + _mp(b"b1", [text, b64], close=False)[:-2],
        "mixed preamble epilogue": head + _mp(b"b1", [text, b64], preamble=b"pre\r\namble\r\n", epilogue=b"epi\r\nlogue"),
        "mixed epilogue eol only": head + _mp(b"b1", [text], epilogue=b"\r\n"),
        "mixed close with ws": head + _mp(b"b1", [text]).replace(b"--b1--", b"--b1--  \t"),
        "double boundary": head + _mp(b"b1", [text]).replace(b"--b1\r\n", b"--b1\r\n--b1\r\n"),
        "empty part": head + _mp(b"b1", [b"", text]),
        "part without headers": head + _mp(b"b1", [b"\r\njust text\r\n"]),
        "part eof right after headers": head + b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: text/plain\r\n",
        "no start boundary": head + b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n",
        "no boundary": head + b"Content-Type: multipart/mixed\r\n\r\nsome\r\ntext\r\n",
        "boundary lookalike in body": head + _mp(b"b1", [text + b"--b1x not it\r\n---b1\r\n--b1 \r\n-- b1\r\n"]),
        "nested": head + _mp(b"outer", [_mp(b"inner", [text, text], sub=b"alternative"), b64]),
        "nested outer boundary ends inner": head + _mp(b"outer", [_mp(b"inner", [text], close=False), text]),
        "nested no eol before boundary": head + b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
                                         b"Content-Type: text/plain\r\n\r\nabc--o\r\n--o--\r\n",
        "digest": head + _mp(b"d", [b"From: c@z.test\r\nSubject: in digest\r\n\r\ninner body\r\n", text], sub=b"digest"),
        "rfc822": head + _mp(b"b1", [text, b"Content-Type: message/rfc822\r\n\r\n" + head + b"\r\ninner\r\n"]),
        "rfc822 multipart inner": head + _mp(b"b1", [text, b"Content-Type: message/rfc822\r\n\r\n" + head + _mp(b"i", [text, b64])]),
        "delivery-status": head + _mp(b"r", [text, b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
                                                   b"Final-Recipient: rfc822; a@b\r\nAction: failed\r\n\r\n"], sub=b"report"),
        "bad base64 chars": head + _mp(b"b1", [text, b64.replace(b"AAEC", b"AA!C", 1)]),
        "bad base64 padding": head + _mp(b"b1", [text, b64[:-6]]),
        "bad base64 length": head + _mp(b"b1", [text, b64 + b"A"]),
        "base64 padding mid stream": head + _mp(b"b1", [text, b64.replace(b"\r\n", b"==\r\n", 1)]),
        "base64 spaces": head + _mp(b"b1", [text, b64.replace(b"\r\n", b" \r\n")]),
        "base64 attachment lf only": (head + _mp(b"b1", [text, b64])).replace(b"\r\n", b"\n"),
        "qp attachment": head + _mp(b"b1", [text, b"Content-Type: application/x-a\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na=3Db=\r\nc"]),
        "uuencode attachment": head + _mp(b"b1", [text, b"Content-Type: application/x-a\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
                                                        b"begin 644 a\r\n#86)C\r\n`\r\nend\r\n"]),
        "8bit attachment": head + _mp(b"b1", [text, b"Content-Type: application/x-a\r\n\r\n\x00\xff\xfe\r\n\r\n"]),
        "cr in base64 part": head + _mp(b"b1", [text, b64.replace(b"\r\n", b"\r")]),
        "alternative": head + _mp(b"alt", [text, b"Content-Type: text/html\r\n\r\n<p>hi</p>\r\n"], sub=b"alternative"),
        "related start": head + _mp(b"rel", [b"Content-Type: image/png\r\nContent-ID: <img1>\r\n\r\nPNG\r\n",
                                             b"Content-Type: text/html\r\nContent-ID: <root>\r\n\r\n<img src=cid:img1>\r\n"],
                                    sub=b"related; start=\"<root>\""),
        "multipart cte base64": head.replace(b"Subject", b"Content-Transfer-Encoding: base64\r\nSubject") + _mp(b"b1", [text]),
        "part limit": head + _mp(b"many", [text] * 30),
        "depth limit": head + _mp(b"d0", [_mp(b"d1", [_mp(b"d2", [_mp(b"d3", [text])])])]),
        "headers over limit": b"Received: " + b"x" * 3000 + b"\r\n" + head + b"\r\nbody\r\n",
        "long line": head + b"\r\n" + b"y" * 200_000 + b"\r\n",
        "many empty lines in a part": head + _mp(b"e", [b"Content-Type: text/plain\r\n\r\n" + b"\r\n" * 3000]),
        "chunk edge": head + b"\r\n" + b"z" * 65535 + b"\r\n" + b"w" * 65534 + b"\r\r\n\r",
    }
    return cases


_LIMITS = {"part limit": ParseLimits(max_parts=10), "depth limit": ParseLimits(max_depth=2),
           "headers over limit": ParseLimits(max_header_bytes=1000)}


def _record(parsed: ParsedMessage) -> str:
    data = {k: v for k, v in parsed.__dict__.items() if k != "attachments"}
    data["datetime_message"] = repr(parsed.datetime_message)
    data["attachments"] = [{**{k: v for k, v in a.__dict__.items() if k != "data"},
                            "data": hashlib.sha256(a.data).hexdigest()} for a in parsed.attachments]
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def digests(raw: bytes, limits: ParseLimits) -> list[str]:
    """The parse record (attachment data included) and the stored JSON, each as a hash."""
    record = _record(parse_message(raw, limits))
    stored = parse_for_store(raw, limits)
    return [hashlib.sha256(record.encode("utf-8", "surrogatepass")).hexdigest(),
            hashlib.sha256(repr(stored).encode("utf-8", "surrogatepass")).hexdigest()]


def messages() -> dict[str, tuple[bytes, ParseLimits]]:
    out = {f"edge: {k}": (v, _LIMITS.get(k, ParseLimits())) for k, v in edge_cases().items()}
    if CORPUS.is_dir():
        for path in sorted(p for p in CORPUS.rglob("*") if p.is_file()):
            out[f"corpus: {path.relative_to(CORPUS)}"] = (path.read_bytes(), ParseLimits())
    return out


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")
def test_corpus_and_edge_cases_parse_as_in_the_snapshot() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    msgs = messages()
    assert set(msgs) == set(expected)
    wrong = [name for name, (raw, limits) in msgs.items() if digests(raw, limits) != expected[name]]
    assert not wrong, wrong


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    SNAPSHOT.write_text(json.dumps({k: digests(*v) for k, v in messages().items()}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
