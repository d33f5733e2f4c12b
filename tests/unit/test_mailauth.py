"""Unit tests for mailgate.mail.auth: DKIM, SPF, DMARC with a static resolver."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from typing import Any, cast

import dkim
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from mailgate.mail.auth import (
    AuthResults,
    DkimResult,
    DmarcResult,
    DnsBudgetSpent,
    DnsNotFound,
    DnsResolver,
    DnsTempError,
    MailAuthError,
    QueryBudget,
    SpfResult,
    StaticResolver,
    authenticate,
    check_dkim,
    check_spf,
    dkim_key_names,
    fetch_dkim_keys,
    organizational_domain,
    verify_dkim,
)
from tests.keys import RsaKey


@pytest.fixture(scope="module")
def key1() -> RsaKey:
    return RsaKey(1)


@pytest.fixture(scope="module")
def key2() -> RsaKey:
    return RsaKey(2)


MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


def sign(message: bytes, key: RsaKey, domain: str = "example.com", selector: str = "sel") -> bytes:
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return header + message


# --- DKIM -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_dkim_pass(key1: RsaKey) -> None:
    resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): [key1.record]})
    results = await check_dkim(sign(MESSAGE, key1), resolver)
    assert results == (DkimResult("example.com", "sel", "pass"),)
    assert resolver.queries == [("TXT", "sel._domainkey.example.com")]


@pytest.mark.asyncio
async def test_dkim_fail_after_tampering_the_body(key1: RsaKey) -> None:
    resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): [key1.record]})
    signed = sign(MESSAGE, key1).replace(b"Hello Bob.", b"Hello Eve.")
    assert await check_dkim(signed, resolver) == (DkimResult("example.com", "sel", "fail"),)


@pytest.mark.asyncio
async def test_dkim_fail_after_tampering_a_signed_header(key1: RsaKey) -> None:
    resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): [key1.record]})
    signed = sign(MESSAGE, key1).replace(b"Subject: hello", b"Subject: HELLO")
    assert await check_dkim(signed, resolver) == (DkimResult("example.com", "sel", "fail"),)


@pytest.mark.asyncio
async def test_two_signatures_one_good_one_bad(key1: RsaKey, key2: RsaKey) -> None:
    # The relay's signature is made with key2 but DNS publishes key1 for its selector.
    signed = sign(sign(MESSAGE, key1), key2, domain="relay.example.net", selector="r1")
    resolver = StaticResolver(
        {
            ("TXT", "sel._domainkey.example.com"): [key1.record],
            ("TXT", "r1._domainkey.relay.example.net"): [key1.record],
        }
    )
    assert await check_dkim(signed, resolver) == (
        DkimResult("relay.example.net", "r1", "fail"),
        DkimResult("example.com", "sel", "pass"),
    )


@pytest.mark.asyncio
async def test_dkim_key_lookup_errors(key1: RsaKey) -> None:
    signed = sign(sign(MESSAGE, key1), key1, domain="other.example", selector="s2")
    resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): DnsTempError("servfail")})
    assert await check_dkim(signed, resolver) == (
        DkimResult("other.example", "s2", "permerror"),  # no key published
        DkimResult("example.com", "sel", "temperror"),
    )


@pytest.mark.asyncio
async def test_dkim_revoked_or_garbage_key_is_permerror(key1: RsaKey) -> None:
    for record in (
        "v=DKIM1; p=",
        "v=DKIM1; k=rsa; p=bm90IGEga2V5",
        "v=DKIM1; k=rsa; p=not base64 !!",
    ):
        resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): [record]})
        assert await check_dkim(sign(MESSAGE, key1), resolver) == (
            DkimResult("example.com", "sel", "permerror"),
        ), record


@pytest.mark.asyncio
async def test_dkim_malformed_signature_header() -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; garbage\r\n" + MESSAGE
    resolver = StaticResolver({})
    assert await check_dkim(raw, resolver) == (DkimResult("", "", "permerror"),)
    assert resolver.queries == []


@pytest.mark.asyncio
async def test_keys_fetched_first_then_verified_without_dns(key1: RsaKey, key2: RsaKey) -> None:
    """The inbound path: key names from the header block, keys fetched, then one verification."""
    raw = sign(sign(MESSAGE, key1), key2, domain="Other.Example", selector="s2")
    assert dkim_key_names(raw) == ["s2._domainkey.other.example", "sel._domainkey.example.com"]
    resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): [key1.record],
                               ("TXT", "s2._domainkey.other.example"): [key1.record]})  # the wrong key for s2
    keys = await fetch_dkim_keys(dkim_key_names(raw), resolver)
    assert verify_dkim(raw, keys) == (
        (DkimResult("other.example", "s2", "fail"), DkimResult("example.com", "sel", "pass")), [])
    assert verify_dkim(raw, keys) == ((await check_dkim(raw, resolver)), [])
    # a key the caller did not fetch is asked for, not guessed
    assert verify_dkim(raw, {"sel._domainkey.example.com": keys["sel._domainkey.example.com"]}) == (
        (), ["s2._domainkey.other.example"])
    missing = await fetch_dkim_keys(["nokey._domainkey.example.com"], resolver)
    assert isinstance(missing["nokey._domainkey.example.com"], DnsNotFound)
    assert verify_dkim(sign(MESSAGE, key1), missing | {"sel._domainkey.example.com": DnsTempError("x")}) == (
        (DkimResult("example.com", "sel", "temperror"),), [])


@pytest.mark.asyncio
async def test_key_names_scan_and_dkimpy_agree_on_the_results(key1: RsaKey) -> None:
    signed = sign(MESSAGE, key1)
    assert dkim_key_names(MESSAGE + b"DKIM-Signature: v=1; d=body.example; s=x; b=; bh=\r\n") == []
    assert dkim_key_names(signed.replace(b"\r\n", b"\n")) == ["sel._domainkey.example.com"]
    assert dkim_key_names(b"dkim-signature : v=1; d=Example.COM.; s=\r\n sel; b=x\r\n" + MESSAGE) == ["sel._domainkey.example.com"]
    assert dkim_key_names(b"") == []
    resolver = StaticResolver({("TXT", "sel._domainkey.example.com"): [key1.record]})
    odd = [
        signed,
        signed.replace(b"\r\n", b"\n"),
        b"not a header line\r\n" + signed,  # dkimpy cannot read the header block: permerror
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; garbage\r\n" + MESSAGE,
        b"DKIM-Signature: v=1; d=ex\xe4mple.com; s=sel; b=x\r\n" + MESSAGE,
        signed.replace(b"DKIM-Signature", b"X-Hidden: 1\r\nDKIM-Signature", 1),
    ]
    for raw in odd:
        keys = await fetch_dkim_keys(dkim_key_names(raw), resolver)
        results, missing = verify_dkim(raw, keys)
        if missing:  # the scan missed a key: the caller fetches it and verifies again
            keys.update(await fetch_dkim_keys(missing, resolver))
            results, missing = verify_dkim(raw, keys)
        assert missing == [] and results == await check_dkim(raw, resolver), raw[:60]


@pytest.mark.asyncio
async def test_no_dkim_signature() -> None:
    assert await check_dkim(MESSAGE, StaticResolver({})) == ()


# --- SPF ------------------------------------------------------------------------------------


def spf_resolver(records: dict[str, str | list[str] | BaseException]) -> StaticResolver:
    """TXT records only; a plain string is one record."""
    return StaticResolver(
        {("TXT", name): [v] if isinstance(v, str) else v for name, v in records.items()}
    )


async def spf(
    resolver: StaticResolver,
    ip: str,
    mail_from: str = "alice@example.com",
    helo: str = "mx.example.com",
) -> str:
    result = await check_spf(resolver, ip, mail_from, helo)
    return result.result


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("record", "ip", "expected"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.10", "pass"),
        ("v=spf1 ip4:192.0.2.0/24 -all", "198.51.100.1", "fail"),
        ("v=spf1 ip4:192.0.2.0/24 ~all", "198.51.100.1", "softfail"),
        ("v=spf1 ip4:192.0.2.0/24 ?all", "198.51.100.1", "neutral"),
        ("v=spf1 ip4:192.0.2.0/24", "198.51.100.1", "neutral"),
        ("v=spf1 -ip4:192.0.2.10 +all", "192.0.2.10", "fail"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::1", "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db9::1", "fail"),
        ("v=spf1 ip6:2001:db8::/32 -all", "192.0.2.10", "fail"),
        ("v=spf1 ip4:192.0.2.10 -all", "::ffff:192.0.2.10", "pass"),
        ("V=SPF1 IP4:192.0.2.10 -ALL", "192.0.2.10", "pass"),
        ("v=spf1 ip4:192.0.2.300 -all", "192.0.2.10", "permerror"),
        ("v=spf1 ip4:192.0.2.10 frobnicate -all", "192.0.2.10", "permerror"),
        ("v=spf1 ip4:192.0.2.10 unknown-mod=ignored -all", "192.0.2.10", "pass"),
        ("v=spf1 redirect=a.example redirect=b.example", "192.0.2.10", "permerror"),
        ("v=spf10 +all", "192.0.2.10", "none"),
    ],
)
async def test_spf_ip_mechanisms(record: str, ip: str, expected: str) -> None:
    assert await spf(spf_resolver({"example.com": record}), ip) == expected


@pytest.mark.asyncio
async def test_spf_no_record_and_two_records() -> None:
    assert await spf(spf_resolver({}), "192.0.2.1") == "none"
    assert await spf(spf_resolver({"example.com": "some other text"}), "192.0.2.1") == "none"
    two = spf_resolver({"example.com": ["v=spf1 -all", "v=spf1 +all"]})
    assert await spf(two, "192.0.2.1") == "permerror"


@pytest.mark.asyncio
async def test_spf_include() -> None:
    resolver = spf_resolver(
        {
            "example.com": "v=spf1 include:_spf.provider.net -all",
            "_spf.provider.net": "v=spf1 ip4:203.0.113.0/28 -all",
        }
    )
    assert await spf(resolver, "203.0.113.5") == "pass"
    assert await spf(resolver, "203.0.113.99") == "fail"  # the include's fail is "no match"


@pytest.mark.asyncio
async def test_spf_include_errors() -> None:
    missing = spf_resolver({"example.com": "v=spf1 include:nothing.example -all"})
    assert await spf(missing, "192.0.2.1") == "permerror"
    temp = spf_resolver(
        {"example.com": "v=spf1 include:flaky.example -all", "flaky.example": DnsTempError("x")}
    )
    assert await spf(temp, "192.0.2.1") == "temperror"


@pytest.mark.asyncio
async def test_spf_redirect() -> None:
    resolver = spf_resolver(
        {
            "example.com": "v=spf1 redirect=_spf.example.net",
            "_spf.example.net": "v=spf1 ip4:192.0.2.7 ~all",
        }
    )
    assert await spf(resolver, "192.0.2.7") == "pass"
    assert await spf(resolver, "192.0.2.8") == "softfail"
    dangling = spf_resolver({"example.com": "v=spf1 redirect=nowhere.example"})
    assert await spf(dangling, "192.0.2.7") == "permerror"


@pytest.mark.asyncio
async def test_spf_a_and_mx_with_cidr() -> None:
    resolver = StaticResolver(
        {
            ("TXT", "example.com"): ["v=spf1 a/24 mx:mail.example.com//64 -all"],
            ("A", "example.com"): ["192.0.2.1"],
            ("MX", "mail.example.com"): [(10, "mx1.example.com"), (20, "mx2.example.com")],
            ("AAAA", "mx2.example.com"): ["2001:db8:1:2::25"],
        }
    )
    assert await spf(resolver, "192.0.2.200") == "pass"  # a/24
    assert await spf(resolver, "2001:db8:1:2::99") == "pass"  # mx//64 via the second MX
    assert await spf(resolver, "198.51.100.1") == "fail"


@pytest.mark.asyncio
async def test_spf_lookup_limit_is_permerror() -> None:
    records: dict[str, str | list[str] | BaseException] = {
        f"l{i}.example": f"v=spf1 include:l{i + 1}.example" for i in range(11)
    }
    records["example.com"] = "v=spf1 include:l0.example -all"
    records["l11.example"] = "v=spf1 +all"
    assert await spf(spf_resolver(records), "192.0.2.1") == "permerror"
    # Ten lookups are allowed.
    records["example.com"] = "v=spf1 include:l2.example -all"
    assert await spf(spf_resolver(records), "192.0.2.1") == "pass"


@pytest.mark.asyncio
async def test_spf_void_lookup_limit_is_permerror() -> None:
    three = spf_resolver({"example.com": "v=spf1 a:n1.example a:n2.example a:n3.example +all"})
    assert await spf(three, "192.0.2.1") == "permerror"
    two = spf_resolver({"example.com": "v=spf1 a:n1.example a:n2.example +all"})
    assert await spf(two, "192.0.2.1") == "pass"


@pytest.mark.asyncio
async def test_spf_temperror() -> None:
    assert (
        await spf(spf_resolver({"example.com": DnsTempError("timeout")}), "192.0.2.1")
        == "temperror"
    )
    resolver = StaticResolver(
        {
            ("TXT", "example.com"): ["v=spf1 a:flaky.example -all"],
            ("A", "flaky.example"): DnsTempError("x"),
        }
    )
    assert await spf(resolver, "192.0.2.1") == "temperror"


@pytest.mark.asyncio
async def test_spf_empty_mail_from_checks_helo() -> None:
    resolver = spf_resolver({"mx.sender.example": "v=spf1 ip4:192.0.2.5 -all"})
    result = await check_spf(resolver, "192.0.2.5", "", "mx.sender.example")
    assert result == SpfResult("mx.sender.example", "pass")
    result = await check_spf(resolver, "192.0.2.5", "<>", "mx.sender.example")
    assert result == SpfResult("mx.sender.example", "pass")


@pytest.mark.asyncio
async def test_spf_macros() -> None:
    resolver = StaticResolver(
        {
            ("TXT", "example.com"): ["v=spf1 exists:%{ir}.%{l1r-}._spf.%{d} -all"],
            # RFC 7208 section 7.4: %{l1r-} of "alice-bounces" is "alice".
            ("A", "10.2.0.192.alice._spf.example.com"): ["127.0.0.2"],
        }
    )
    assert await spf(resolver, "192.0.2.10", mail_from="alice-bounces@example.com") == "pass"
    assert await spf(resolver, "192.0.2.11", mail_from="alice-bounces@example.com") == "fail"
    bad = spf_resolver({"example.com": "v=spf1 exists:%{x}.example -all"})
    assert await spf(bad, "192.0.2.10") == "permerror"


@pytest.mark.asyncio
async def test_spf_bad_inputs() -> None:
    resolver = spf_resolver({"example.com": "v=spf1 +all"})
    assert await spf(resolver, "not-an-ip") == "permerror"
    assert (await check_spf(resolver, "192.0.2.1", "", "[192.0.2.1]")).result == "none"


# --- DMARC ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("www.example.de", "example.de"),
        ("x.example.com.au", "example.com.au"),
        ("Example.COM.", "example.com"),
        # from the Public Suffix List, not a two- or three-label guess
        ("victim.github.io", "victim.github.io"),
        ("www.victim.github.io", "victim.github.io"),
        ("github.io", "github.io"),  # a public suffix is its own organizational domain
        ("com", "com"),
        ("a.b.example.pvt.k12.ma.us", "example.pvt.k12.ma.us"),
        ("shop.example.com.br", "example.com.br"),
        ("x.example.uk", "example.uk"),
        ("mail.example.co.uk", "example.co.uk"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.asyncio
async def test_relaxed_alignment_does_not_join_two_owners_of_a_private_suffix(key1: RsaKey) -> None:
    # attacker.github.io has a valid SPF pass and DKIM signature of its own; the From claims
    # victim.github.io, whose DMARC record says reject. Under the two-label guess both are
    # "github.io" and relaxed alignment passed the spoof.
    spoof = MESSAGE.replace(b"alice@example.com", b"ceo@victim.github.io")
    signed = sign(spoof, key1, domain="attacker.github.io")
    resolver = StaticResolver({
        ("TXT", "sel._domainkey.attacker.github.io"): [key1.record],
        ("TXT", "attacker.github.io"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("TXT", "_dmarc.victim.github.io"): ["v=DMARC1; p=reject"],
        ("TXT", "_dmarc.github.io"): ["v=DMARC1; p=none"],
    })
    results = await auth(signed, resolver, mail_from="x@attacker.github.io", from_domain="victim.github.io")
    assert results.dkim == (DkimResult("attacker.github.io", "sel", "pass"),)
    assert results.spf == SpfResult("attacker.github.io", "pass")
    assert results.dmarc == DmarcResult("victim.github.io", "fail", "reject")
    # the owner's own subdomain still aligns
    own = await auth(sign(spoof, key1, domain="mail.victim.github.io"),
                     StaticResolver({("TXT", "sel._domainkey.mail.victim.github.io"): [key1.record],
                                     ("TXT", "_dmarc.victim.github.io"): ["v=DMARC1; p=reject"]}),
                     mail_from="x@attacker.github.io", from_domain="victim.github.io")
    assert own.dmarc == DmarcResult("victim.github.io", "pass", "reject")


@pytest.mark.asyncio
async def test_relaxed_alignment_under_co_uk(key1: RsaKey) -> None:
    resolver = StaticResolver({
        ("TXT", "sel._domainkey.mail.example.co.uk"): [key1.record],
        ("TXT", "sel._domainkey.other.co.uk"): [key1.record],
        ("TXT", "_dmarc.example.co.uk"): ["v=DMARC1; p=reject"],
    })
    same = await auth(sign(MESSAGE, key1, domain="mail.example.co.uk"), resolver, from_domain="news.example.co.uk",
                      client_ip="203.0.113.9")
    assert same.dmarc == DmarcResult("news.example.co.uk", "pass", "reject")
    other = await auth(sign(MESSAGE, key1, domain="other.co.uk"), resolver, from_domain="example.co.uk",
                       client_ip="203.0.113.9")
    assert other.dmarc == DmarcResult("example.co.uk", "fail", "reject")


@pytest.mark.asyncio
async def test_dmarc_record_of_a_subdomain_is_looked_up_at_its_organizational_domain() -> None:
    resolver = StaticResolver({("TXT", "_dmarc.victim.github.io"): ["v=DMARC1; p=none; sp=reject"]})
    results = await auth(MESSAGE, resolver, from_domain="news.victim.github.io", client_ip="203.0.113.9")
    assert results.dmarc == DmarcResult("news.victim.github.io", "fail", "reject")
    assert ("TXT", "_dmarc.github.io") not in resolver.queries


def auth_resolver(
    key: RsaKey, dmarc: str | None = "v=DMARC1; p=reject", txt: dict[str, Any] | None = None
) -> StaticResolver:
    table: dict[tuple[str, str], Any] = {
        ("TXT", "sel._domainkey.example.com"): [key.record],
        ("TXT", "sel._domainkey.mail.example.com"): [key.record],
        ("TXT", "sel._domainkey.other.net"): [key.record],
        ("TXT", "example.com"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("TXT", "other.net"): ["v=spf1 ip4:198.51.100.0/24 -all"],
    }
    if dmarc is not None:
        table[("TXT", "_dmarc.example.com")] = [dmarc]
    for name, value in (txt or {}).items():
        table[("TXT", name)] = value
    return StaticResolver(table)


async def auth(raw: bytes, resolver: Any, **kwargs: Any) -> AuthResults:
    args: dict[str, Any] = {
        "client_ip": "192.0.2.25",
        "mail_from": "alice@example.com",
        "helo": "mx.example.com",
        "from_domain": "example.com",
        "authserv_id": "mx.example.org",
    }
    args.update(kwargs)
    return await authenticate(raw, resolver=resolver, **args)


@pytest.mark.asyncio
async def test_everything_passes_and_the_header_says_so(key1: RsaKey) -> None:
    results = await auth(sign(MESSAGE, key1), auth_resolver(key1))
    assert results.dkim == (DkimResult("example.com", "sel", "pass"),)
    assert results.spf == SpfResult("example.com", "pass")
    assert results.dmarc == DmarcResult("example.com", "pass", "reject")
    assert results.header == (
        "mx.example.org; dkim=pass header.d=example.com header.s=sel; "
        "spf=pass smtp.mailfrom=example.com; dmarc=pass header.from=example.com"
    )


@pytest.mark.asyncio
async def test_dmarc_pass_through_aligned_dkim_alone(key1: RsaKey) -> None:
    results = await auth(sign(MESSAGE, key1), auth_resolver(key1), client_ip="203.0.113.9")
    assert results.spf.result == "fail"
    assert results.dmarc == DmarcResult("example.com", "pass", "reject")


@pytest.mark.asyncio
async def test_dmarc_pass_through_aligned_spf_alone(key1: RsaKey) -> None:
    results = await auth(MESSAGE, auth_resolver(key1))
    assert results.dkim == ()
    assert results.dmarc.result == "pass"
    assert "dkim=none;" in results.header


@pytest.mark.asyncio
async def test_dmarc_fail_with_p_reject_when_nothing_aligns(key1: RsaKey) -> None:
    signed = sign(MESSAGE, key1, domain="other.net")
    results = await auth(
        signed, auth_resolver(key1), client_ip="198.51.100.7", mail_from="bounce@other.net"
    )
    assert results.dkim == (DkimResult("other.net", "sel", "pass"),)
    assert results.spf == SpfResult("other.net", "pass")
    assert results.dmarc == DmarcResult("example.com", "fail", "reject")
    assert results.header.endswith(
        "spf=pass smtp.mailfrom=other.net; dmarc=fail header.from=example.com"
    )


@pytest.mark.asyncio
async def test_dmarc_relaxed_and_strict_alignment(key1: RsaKey) -> None:
    signed = sign(MESSAGE, key1, domain="mail.example.com")
    relaxed = await auth(signed, auth_resolver(key1), client_ip="203.0.113.9")
    assert relaxed.dmarc.result == "pass"
    strict = await auth(
        signed, auth_resolver(key1, "v=DMARC1; p=quarantine; adkim=s"), client_ip="203.0.113.9"
    )
    assert strict.dmarc == DmarcResult("example.com", "fail", "quarantine")
    spf_strict = await auth(
        MESSAGE,
        auth_resolver(
            key1, "v=DMARC1; p=reject; aspf=s", txt={"bounces.example.com": ["v=spf1 +all"]}
        ),
        mail_from="x@bounces.example.com",
    )
    assert spf_strict.spf.result == "pass"
    assert spf_strict.dmarc.result == "fail"


@pytest.mark.asyncio
async def test_dmarc_subdomain_policy_from_the_organizational_record(key1: RsaKey) -> None:
    resolver = auth_resolver(key1, "v=DMARC1; p=reject; sp=quarantine")
    results = await auth(MESSAGE, resolver, from_domain="news.example.com", client_ip="203.0.113.9")
    assert results.dmarc == DmarcResult("news.example.com", "fail", "quarantine")
    assert ("TXT", "_dmarc.news.example.com") in resolver.queries
    assert ("TXT", "_dmarc.example.com") in resolver.queries


@pytest.mark.asyncio
async def test_dmarc_none_without_a_record_and_with_a_bad_one(key1: RsaKey) -> None:
    assert (await auth(MESSAGE, auth_resolver(key1, None))).dmarc == DmarcResult(
        "example.com", "none", "none"
    )
    bad = await auth(MESSAGE, auth_resolver(key1, "v=DMARC1; p=bogus"))
    assert bad.dmarc == DmarcResult("example.com", "none", "none")
    with_rua = await auth(
        MESSAGE, auth_resolver(key1, "v=DMARC1; p=bogus; rua=mailto:d@example.com")
    )
    assert with_rua.dmarc == DmarcResult("example.com", "pass", "none")


@pytest.mark.asyncio
async def test_dmarc_temperror_and_missing_from(key1: RsaKey) -> None:
    resolver = auth_resolver(key1, txt={"_dmarc.example.com": DnsTempError("servfail")})
    assert (await auth(MESSAGE, resolver)).dmarc == DmarcResult("example.com", "temperror", "none")
    none = await auth(MESSAGE, auth_resolver(key1), from_domain=None)
    assert none.dmarc == DmarcResult("", "permerror", "none", "no usable From address")
    assert none.header.endswith('; dmarc=permerror reason="no usable From address"')


@pytest.mark.asyncio
async def test_helo_identity_in_the_header(key1: RsaKey) -> None:
    resolver = auth_resolver(key1, txt={"mx.example.com": ["v=spf1 ip4:192.0.2.25 -all"]})
    results = await auth(MESSAGE, resolver, mail_from="")
    assert results.spf == SpfResult("mx.example.com", "pass")
    assert "spf=pass smtp.helo=mx.example.com;" in results.header
    assert results.dmarc.result == "pass"  # the HELO domain aligns with example.com (relaxed)


@pytest.mark.asyncio
async def test_hostile_values_are_quoted_in_the_header() -> None:
    raw = b'DKIM-Signature: v=1; d=ev"il.com; s=a b\r\n' + MESSAGE
    resolver = StaticResolver({})
    results = await auth(raw, resolver, from_domain='ex"ample.com;\r\nX-Injected: 1')
    assert "\r" not in results.header and "\n" not in results.header
    assert 'dkim=permerror header.d="ev\\"il.com" header.s="a b";' in results.header
    assert results.header.endswith('header.from="ex\\"ample.com;x-injected: 1"')
    assert ("TXT", 'a b._domainkey.ev"il.com') not in resolver.queries


class SlowResolver(StaticResolver):
    """Answers like StaticResolver, but DMARC and SPF lookups never come back."""

    async def txt(self, name: str) -> list[str]:
        if name.startswith("_dmarc.") or name == "example.com":
            await asyncio.sleep(3600)
        return await super().txt(name)


@pytest.mark.asyncio
async def test_timeout_makes_unfinished_parts_temperror(key1: RsaKey) -> None:
    resolver = SlowResolver({("TXT", "sel._domainkey.example.com"): [key1.record]})
    start = time.monotonic()
    results = await auth(sign(MESSAGE, key1), resolver, timeout=0.5)
    assert time.monotonic() - start < 3
    assert results.dkim == (DkimResult("example.com", "sel", "pass"),)
    assert results.spf == SpfResult("example.com", "temperror")
    assert results.dmarc == DmarcResult("example.com", "temperror", "none")


class HangingResolver(StaticResolver):
    async def txt(self, name: str) -> list[str]:
        await asyncio.sleep(3600)
        return []


@pytest.mark.asyncio
async def test_timeout_before_dkim_keys_arrive(key1: RsaKey) -> None:
    results = await auth(sign(MESSAGE, key1), HangingResolver({}), timeout=0.3)
    assert results.dkim == (DkimResult("example.com", "sel", "temperror"),)
    assert results.header.startswith(
        "mx.example.org; dkim=temperror header.d=example.com header.s=sel;"
    )


class BrokenResolver(StaticResolver):
    async def _get(self, rtype: str, name: str) -> list[Any]:
        raise RuntimeError("resolver bug")


@pytest.mark.asyncio
async def test_authenticate_never_raises(key1: RsaKey) -> None:
    results = await auth(sign(MESSAGE, key1), BrokenResolver({}))
    assert results.dkim == (DkimResult("example.com", "sel", "temperror"),)
    assert results.spf.result == "temperror"
    assert results.dmarc.result == "temperror"
    garbage = await auth(b"\x00\xff" * 1000, StaticResolver({}), from_domain="")
    assert garbage.dkim == () and garbage.dmarc.result == "permerror"


@pytest.mark.asyncio
async def test_to_dict_and_back(key1: RsaKey) -> None:
    results = await auth(sign(MESSAGE, key1), auth_resolver(key1))
    data = json.loads(json.dumps(results.to_dict()))
    assert data["dkim"] == [{"domain": "example.com", "selector": "sel", "result": "pass"}]
    plain = dataclasses.asdict(results)
    plain["dkim"] = [{k: v for k, v in d.items() if k != "reason"} for d in plain["dkim"]]
    plain["dmarc"] = {k: v for k, v in plain["dmarc"].items() if k != "reason"}
    assert data == plain  # a reason is written only when there is one: ordinary results are stored as before
    assert list(data) == [f.name for f in dataclasses.fields(AuthResults)]
    assert AuthResults.from_dict(data) == results
    for bad in (
        {},
        {"dkim": [{"domain": 1}], "spf": {}, "dmarc": {}, "header": ""},
        {**data, "header": 5},
    ):
        with pytest.raises(MailAuthError):
            AuthResults.from_dict(bad)


# --- the dnspython resolver against a local fake DNS server ---------------------------------


class FakeDns(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        if name == "silent.test":
            return
        response = dns.message.make_response(query)
        if name == "servfail.test":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name == "txt.test" and question.rdtype == dns.rdatatype.TXT:
            response.answer.append(
                dns.rrset.from_text(name + ".", 60, "IN", "TXT", '"v=spf1 " "-all"')
            )
        elif name == "txt.test" and question.rdtype == dns.rdatatype.MX:
            response.answer.append(
                dns.rrset.from_text(name + ".", 60, "IN", "MX", "10 mx.txt.test.")
            )
        elif name == "txt.test" and question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", "192.0.2.1"))
        elif name != "txt.test":
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.mark.asyncio
async def test_dns_resolver_maps_answers_and_errors() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        FakeDns, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        resolver = DnsResolver(timeout=0.5, nameservers=["127.0.0.1"], port=port)
        assert await resolver.txt("txt.test") == ["v=spf1 -all"]
        assert await resolver.mx("txt.test") == [(10, "mx.txt.test")]
        assert await resolver.a("txt.test") == ["192.0.2.1"]
        with pytest.raises(DnsNotFound):
            await resolver.aaaa("txt.test")  # the name exists, without AAAA data
        with pytest.raises(DnsNotFound):
            await resolver.txt("nxdomain.test")
        with pytest.raises(DnsTempError):
            await resolver.txt("servfail.test")
        start = time.monotonic()
        with pytest.raises(DnsTempError):
            await resolver.txt("silent.test")
        assert time.monotonic() - start < 2
    finally:
        transport.close()


# --- bounded work per message ----------------------------------------------------------------


def many_signatures(key: RsaKey, count: int) -> bytes:
    """`count` DKIM-Signatures, each by its own domain (d0.example ... ), on MESSAGE."""
    raw = MESSAGE
    for n in range(count):
        raw = sign(raw, key, domain=f"d{n}.example")
    return raw


@pytest.mark.asyncio
async def test_only_the_first_signatures_are_checked_and_looked_up(key1: RsaKey) -> None:
    raw = many_signatures(key1, 8)  # the last signed is the first header: d7, d6, ... d0
    assert len(dkim_key_names(raw)) == 5
    assert dkim_key_names(raw, 2) == ["sel._domainkey.d6.example", "sel._domainkey.d7.example"]
    resolver = StaticResolver({("TXT", f"sel._domainkey.d{n}.example"): [key1.record] for n in range(8)})
    results = await check_dkim(raw, resolver, max_signatures=3)
    assert [(d.domain, d.result) for d in results] == [
        ("d7.example", "pass"), ("d6.example", "pass"), ("d5.example", "pass"), ("", "policy")]
    assert results[-1].reason == "not checked: 5 signatures past the first 3 ([smtp] max_dkim_signatures)"
    assert len(resolver.queries) == 3
    keys = await fetch_dkim_keys(dkim_key_names(raw, 3), resolver)
    assert verify_dkim(raw, keys, 3) == (results, [])
    header = (await auth(raw, resolver, max_dkim_signatures=3)).header
    assert 'dkim=policy reason="not checked: 5 signatures past the first 3 ([smtp] max_dkim_signatures)";' in header


@pytest.mark.asyncio
async def test_five_hundred_signatures_cost_a_bounded_number_of_dns_queries() -> None:
    # the finding: 500 DKIM-Signature headers in a 45 KB message caused 294 DNS queries
    raw = b"".join(f"DKIM-Signature: v=1; a=rsa-sha256; d=signer{n}.example; s=sel1; h=from; bh=; b=\r\n".encode()
                   for n in range(500)) + MESSAGE
    assert 40_000 < len(raw) < 50_000
    resolver = StaticResolver({})
    results = await auth(raw, resolver)
    key_queries = [q for q in resolver.queries if "._domainkey." in q[1]]
    assert len(key_queries) == 5
    assert [d.result for d in results.dkim[5:]] == ["policy"] and len(results.dkim) == 6
    assert AuthResults.from_dict(json.loads(json.dumps(results.to_dict()))) == results


@pytest.mark.asyncio
async def test_query_budget_refuses_past_the_limit_but_never_dmarc() -> None:
    inner = StaticResolver({("TXT", "a.example"): ["x"], ("TXT", "_dmarc.a.example"): ["v=DMARC1; p=reject"]})
    budget = QueryBudget(inner, 2)
    assert await budget.txt("a.example") == ["x"]
    with pytest.raises(DnsNotFound):
        await budget.a("a.example")
    with pytest.raises(DnsBudgetSpent):
        await budget.mx("a.example")
    assert await budget.txt("_dmarc.a.example") == ["v=DMARC1; p=reject"]  # counted, not refused
    assert (budget.used, budget.refused) == (3, 1)
    assert len(inner.queries) == 3


@pytest.mark.asyncio
async def test_spf_sprawl_stops_at_the_budget_and_dmarc_still_decides() -> None:
    # an SPF record whose ten mx terms would cost over a hundred queries within RFC 7208's limits
    table: dict[tuple[str, str], Any] = {
        ("TXT", "sprawl.example"): ["v=spf1 " + " ".join(f"mx:m{n}.example.com" for n in range(10)) + " -all"],
        ("TXT", "_dmarc.example.com"): ["v=DMARC1; p=reject"],
    }
    for n in range(10):
        table[("MX", f"m{n}.example.com")] = [(10, f"h{n}-{k}.example.com") for k in range(10)]
    budget = QueryBudget(StaticResolver(table), 12)
    results = await auth(MESSAGE, budget, client_ip="203.0.113.9", mail_from="x@sprawl.example")
    assert results.spf == SpfResult("sprawl.example", "temperror")
    assert results.dmarc == DmarcResult("example.com", "fail", "reject")
    assert budget.used <= 12 + 2 and budget.refused >= 1
