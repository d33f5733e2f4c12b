"""SPF (RFC 7208) evaluation through an async `Resolver`."""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from mailgate.mail.resolver import DnsNotFound, DnsTempError, MailAuthError, Resolver, _norm

logger = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")

SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4: DNS-querying terms per check
SPF_VOID_LIMIT = 2  # RFC 7208 section 4.6.4: lookups answering NXDOMAIN or no data
SPF_MX_LIMIT = 10  # RFC 7208 section 4.6.4: address lookups per "mx" mechanism


@dataclass(frozen=True)
class SpfResult:
    """SPF for the MAIL FROM domain (or HELO when MAIL FROM is empty): pass, fail, softfail,
    neutral, none, temperror or permerror."""

    domain: str
    result: str



# --- SPF (RFC 7208) -------------------------------------------------------------------------


class _SpfPermError(MailAuthError):
    pass


class _SpfTempError(MailAuthError):
    pass


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(r"([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(.*)", re.I | re.S)
_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=(.*)", re.I | re.S)
_DOMAIN_CIDR = re.compile(r"(?::([^/]+))?(?:/(\d{1,2}))?(?://(\d{1,3}))?", re.S)
_MECHANISM_NAMES = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_MACRO_LETTERS = "slodiphv"  # c, r and t belong to exp= only, which is not evaluated here


@functools.lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``ip_network(text, strict=False)``, remembered: the same records come back message after
    message, and parsing a network costs more than the rest of an ip4 check."""
    return ipaddress.ip_network(text, strict=False)


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(domain) <= 253 and len(labels) >= 2 and all(0 < len(x) <= 63 for x in labels)


@dataclass(frozen=True)
class _Term:
    qualifier: str
    mechanism: str
    target: str  # expanded domain-spec, or the network for ip4/ip6
    cidr4: int
    cidr6: int


class _SpfCheck:
    """One check_host() evaluation (RFC 7208 section 4) with its shared lookup budgets."""

    def __init__(self, resolver: Resolver, ip: IPAddress, sender: str, helo: str) -> None:
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.lookups = 0
        self.voids = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise _SpfPermError("more than 10 DNS-querying terms")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > SPF_VOID_LIMIT:
            raise _SpfPermError("more than 2 void lookups")

    async def dns(self, call: Awaitable[_T], void: bool = True) -> _T | None:
        try:
            return await call
        except DnsNotFound:
            if void:
                self.count_void()
            return None
        except DnsTempError as exc:
            raise _SpfTempError(str(exc)) from exc

    async def check_host(self, domain: str) -> str:
        """The SPF result for `domain`; raises _SpfPermError/_SpfTempError for those results."""
        if not _valid_domain(domain):
            return "none"
        txt = await self.dns(self.resolver.txt(domain), void=False) or []
        records = [t for t in txt if re.match(r"v=spf1(?: |$)", t, re.I)]
        if not records:
            return "none"
        if len(records) > 1:
            raise _SpfPermError(f"{domain} publishes {len(records)} SPF records")
        terms, redirect = self.parse(records[0], domain)
        for term in terms:
            if await self.matches(term, domain):
                return _QUALIFIERS[term.qualifier or "+"]
        if redirect is None:
            return "neutral"
        self.count_lookup()
        result = await self.check_host(redirect)
        if result == "none":
            raise _SpfPermError(f"redirect target {redirect} has no SPF record")
        return result

    def parse(self, record: str, domain: str) -> tuple[list[_Term], str | None]:
        terms: list[_Term] = []
        modifiers: dict[str, str] = {}
        for word in record.split()[1:]:
            mech = _MECHANISM.fullmatch(word)
            mod = _MODIFIER.fullmatch(word)
            if mod is not None and mod.group(1).lower() not in _MECHANISM_NAMES:
                name = mod.group(1).lower()
                if name in modifiers and name in ("redirect", "exp"):
                    raise _SpfPermError(f"repeated {name}=")
                modifiers[name] = (
                    self.expand(mod.group(2), domain) if name == "redirect" else mod.group(2)
                )
                continue
            if mech is None:
                raise _SpfPermError(f"unknown term {word[:60]!r}")
            qualifier, name, rest = mech.group(1), mech.group(2).lower(), mech.group(3)
            terms.append(self.parse_mechanism(qualifier, name, rest, domain))
        return terms, modifiers.get("redirect")

    def parse_mechanism(self, qualifier: str, name: str, rest: str, domain: str) -> _Term:
        if name == "all" and not rest:
            return _Term(qualifier, name, "", 32, 128)
        if name in ("ip4", "ip6") and rest.startswith(":"):
            try:
                net = _network(rest[1:])
            except ValueError as exc:
                raise _SpfPermError(f"bad network {rest[1:60]!r}") from exc
            if net.version != (4 if name == "ip4" else 6):
                raise _SpfPermError(f"{name} with {rest[1:60]!r}")
            return _Term(qualifier, name, str(net), 32, 128)
        if name in ("include", "exists") and rest.startswith(":") and len(rest) > 1:
            return _Term(qualifier, name, self.expand(rest[1:], domain), 32, 128)
        if name in ("a", "mx", "ptr"):
            m = _DOMAIN_CIDR.fullmatch(rest)
            if m and not (name == "ptr" and (m.group(2) or m.group(3))):
                cidr4, cidr6 = int(m.group(2) or 32), int(m.group(3) or 128)
                if cidr4 <= 32 and cidr6 <= 128:
                    target = self.expand(m.group(1), domain) if m.group(1) else domain
                    return _Term(qualifier, name, target, cidr4, cidr6)
        raise _SpfPermError(f"malformed {name}{rest[:60]!r}")

    async def matches(self, term: _Term, domain: str) -> bool:
        name = term.mechanism
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            net = _network(term.target)
            return net.version == self.ip.version and self.ip in net
        self.count_lookup()
        if name == "include":
            result = await self.check_host(term.target)
            if result == "none":
                raise _SpfPermError(f"included {term.target} has no SPF record")
            return result == "pass"
        if name == "exists":
            return bool(await self.dns(self.resolver.a(term.target)))
        if name == "ptr":
            return False  # deprecated (RFC 7208 section 5.5); the Resolver has no PTR lookups
        if name == "a":
            return self.in_any(await self.addresses(term.target) or [], term)
        hosts = await self.dns(self.resolver.mx(term.target)) or []
        if len(hosts) > SPF_MX_LIMIT:
            raise _SpfPermError(f"{term.target} has more than 10 MX records")
        for _pref, host in sorted(hosts):
            if (
                host
                and host != "."
                and self.in_any(await self.addresses(host, void=False) or [], term)
            ):
                return True
        return False

    async def addresses(self, name: str, void: bool = True) -> list[str] | None:
        query = self.resolver.a(name) if self.ip.version == 4 else self.resolver.aaaa(name)
        return await self.dns(query, void=void)

    def in_any(self, addresses: list[str], term: _Term) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for address in addresses:
            try:
                if self.ip in _network(f"{address}/{prefix}"):
                    return True
            except ValueError:
                continue
        return False

    def expand(self, spec: str, domain: str) -> str:
        """Expand SPF macros (RFC 7208 section 7) in a domain-spec."""
        out: list[str] = []
        i = 0
        while i < len(spec):
            ch = spec[i]
            if ch != "%":
                out.append(ch)
                i += 1
                continue
            nxt = spec[i + 1 : i + 2]
            if nxt in ("%", "_", "-"):
                out.append({"%": "%", "_": " ", "-": "%20"}[nxt])
                i += 2
                continue
            m = re.match(r"\{([a-zA-Z])(\d*)(r?)([.\-+,/_=]*)\}", spec[i + 1 :])
            if nxt != "{" or m is None or m.group(1).lower() not in _MACRO_LETTERS:
                raise _SpfPermError(f"bad macro in {spec[:60]!r}")
            out.append(
                self.macro(m.group(1), m.group(2), bool(m.group(3)), m.group(4) or ".", domain)
            )
            i += 1 + m.end()
        expanded = "".join(out)
        while len(expanded) > 253 and "." in expanded:  # RFC 7208 section 7.3: drop left labels
            expanded = expanded.split(".", 1)[1]
        return expanded

    def macro(self, letter: str, digits: str, reverse: bool, delimiters: str, domain: str) -> str:
        local, _, sender_domain = self.sender.rpartition("@")
        if self.ip.version == 4:
            ip_text, version = str(self.ip), "in-addr"
        else:
            ip_text, version = ".".join(self.ip.exploded.replace(":", "")), "ip6"
        value = {
            "s": self.sender,
            "l": local,
            "o": sender_domain,
            "d": domain,
            "i": ip_text,
            "p": "unknown",  # would need a validated PTR name; RFC 7208 section 7.3 allows this
            "h": self.helo,
            "v": version,
        }[letter.lower()]
        parts = re.split("[" + re.escape(delimiters) + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            if int(digits) == 0:
                raise _SpfPermError("macro keeps zero labels")
            parts = parts[-int(digits) :]
        value = ".".join(parts)
        return urllib.parse.quote(value, safe="") if letter.isupper() else value


def spf_identity(mail_from: str, helo: str) -> tuple[str, str]:
    """(sender, domain) to check: MAIL FROM, or postmaster@HELO when MAIL FROM is empty."""
    sender = mail_from.strip().strip("<>").strip()
    if not sender:
        return f"postmaster@{helo}", _norm(helo)
    local, at, domain = sender.rpartition("@")
    if not at or not local:
        return f"postmaster@{domain}", _norm(domain)
    return sender, _norm(domain)


async def check_spf(resolver: Resolver, client_ip: str, mail_from: str, helo: str) -> SpfResult:
    """SPF result for the client, MAIL FROM and HELO (RFC 7208 check_host)."""
    sender, domain = spf_identity(mail_from, helo)
    try:
        ip = ipaddress.ip_address(client_ip.strip().strip("[]"))
    except ValueError:
        return SpfResult(domain, "permerror")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # RFC 7208 section 5: an IPv4-mapped client is an IPv4 client
    check = _SpfCheck(resolver, ip, sender, helo)
    try:
        result = await check.check_host(domain)
    except _SpfPermError as exc:
        logger.debug("SPF permerror for %s: %s", domain, exc, extra={"event": "mail.spf_permerror"})
        result = "permerror"
    except _SpfTempError as exc:
        logger.debug("SPF temperror for %s: %s", domain, exc, extra={"event": "mail.spf_temperror"})
        result = "temperror"
    return SpfResult(domain, result)

