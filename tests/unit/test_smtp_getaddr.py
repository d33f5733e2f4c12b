"""MailgateSMTP._getaddr: the shortcut for plain ``<local@domain>`` paths reads what aiosmtpd reads."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from mailgate.edges.smtp.server import _PLAIN_PATH, MailgateSMTP


def _server(local_part_limit: int = 0) -> MailgateSMTP:
    server = object.__new__(MailgateSMTP)  # _getaddr reads nothing but local_part_limit
    server.local_part_limit = local_part_limit
    return server


PIECES = ["a", "Z", "0", "9", "x.y", ".", "..", "@", "-", "_", "+", "!", "'", "~", "=", "{", "|",
          "é", '"', '"q u"', "\\", " ", "\t", "(c)", "(", ")", "[", "]", "[1.2.3.4]", "<", ">", ",", ":", ";"]
TAILS = ["", " ", "\t", "  SIZE=100", " BODY=8BITMIME SMTPUTF8", "SIZE=1", " (comment) SIZE=1", "(x)", " >"]


def _aiosmtpd_reads(server: MailgateSMTP, arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's own parser; where it raises (it does, on some malformed paths), (None, None)."""
    try:
        return SMTP._getaddr(server, arg)
    except Exception:  # noqa: BLE001
        return None, None


def _random_arg(rnd: random.Random) -> str:
    if rnd.random() < 0.3:  # a plain path, as nearly all mail has
        word = "".join(rnd.choice("abcXYZ019!#$%&'*+/=?^_`{|}~-") for _ in range(rnd.randint(1, 6)))
        local = ".".join([word] * rnd.randint(1, 3))
        domain = ".".join(rnd.choice(["example", "org", "a-1", "x"]) for _ in range(rnd.randint(1, 3)))
        return f"<{local}@{domain}>" + rnd.choice(TAILS)
    local = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 4)))
    domain = "".join(rnd.choice(["example", ".", "org", "-", "a1", "_", "[", "]", " "]) for _ in range(rnd.randint(0, 4)))
    lead = rnd.choice(["", "", "", " "])
    core = f"{local}@{domain}" if rnd.random() < 0.9 else local
    angle = rnd.random() < 0.9
    return lead + (f"<{core}>" if angle else core) + rnd.choice(TAILS)


def test_random_paths_read_as_aiosmtpd_reads_them() -> None:
    rnd = random.Random(25)
    server = _server()
    plain = broken = 0
    for _ in range(20_000):
        arg = _random_arg(rnd)
        plain += _PLAIN_PATH.match(arg) is not None
        try:
            SMTP._getaddr(server, arg)
        except Exception:  # noqa: BLE001
            broken += 1
        assert server._getaddr(arg) == _aiosmtpd_reads(server, arg), arg
    assert plain > 1_000  # the shortcut was taken often, not only the fallback
    assert broken > 10  # and paths that break aiosmtpd's parser were among them


@pytest.mark.parametrize("arg", [
    "<user@example.org>", "<user@example.org> SIZE=1000 BODY=8BITMIME", "<first.last+tag@mail.example.org>\t",
    "<a@b>(comment)", "<a@b> (comment) SIZE=1", " <a@b>", "<\"quoted local\"@example.org>", "<a@[127.0.0.1]>",
    "<a..b@example.org>", "<.a@example.org>", "<a@example..org>", "<@relay.example:a@example.org>", "<>", "",
    "user@example.org", "<user@example.org", "<a@b>>", "<a@[example.org>", "a@",
])
def test_typical_and_tricky_paths(arg: str) -> None:
    server = _server()
    assert server._getaddr(arg) == _aiosmtpd_reads(server, arg)


def test_local_part_limit_applies_to_the_shortcut() -> None:
    server = _server(local_part_limit=64)
    assert server._getaddr(f"<{'a' * 64}@example.org>") == (f"{'a' * 64}@example.org", "")
    assert server._getaddr(f"<{'a' * 65}@example.org>") == (None, None)
    assert SMTP._getaddr(server, f"<{'a' * 65}@example.org>") == (None, None)


@pytest.mark.parametrize("arg", ["<Postmaster>", "<postmaster> SIZE=10", "<POSTMASTER>", "postmaster"])
def test_the_bare_postmaster_passes_the_parser_unchanged(arg: str) -> None:
    """RFC 5321 4.5.1: ``RCPT TO:<Postmaster>`` (no domain) must be accepted. Neither the shortcut
    nor aiosmtpd's parser refuses it: the domain-less address reaches the RCPT hook as written, and
    the core (``Inbound.check_recipient``) accepts exactly ``postmaster`` in any case."""
    server = _server()
    address, rest = server._getaddr(arg)
    assert address is not None and address.lower() == "postmaster"
    assert (address, rest) == _aiosmtpd_reads(server, arg)
