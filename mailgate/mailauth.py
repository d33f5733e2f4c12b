"""DKIM, SPF and DMARC evaluation of one inbound message, with an injectable async resolver.

`authenticate` is the entry point: it never raises, turns DNS trouble into ``temperror``, and is
bounded as a whole by a timeout. DNS goes through a `Resolver` (`DnsResolver` in production,
`StaticResolver` in tests), so no lookup blocks the event loop; dkimpy's synchronous verifier
gets its keys from a dictionary filled beforehand and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import dkim
import dns.asyncresolver
import dns.exception
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value

from .errors import MailgateError

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4: DNS-querying terms per check
SPF_VOID_LIMIT = 2  # RFC 7208 section 4.6.4: lookups answering NXDOMAIN or no data
SPF_MX_LIMIT = 10  # RFC 7208 section 4.6.4: address lookups per "mx" mechanism
_ORG_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu"})


class MailAuthError(MailgateError):
    """Root of the errors of this module."""


class DnsNotFound(MailAuthError):
    """The name does not exist or has no records of the asked type."""


class DnsTempError(MailAuthError):
    """The lookup failed for now (timeout, SERVFAIL, no reachable server)."""


class Resolver(Protocol):
    """Asynchronous DNS as mail authentication needs it. Each TXT string is one record with its
    character-strings joined; every method raises `DnsNotFound` or `DnsTempError`."""

    async def txt(self, name: str) -> list[str]: ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def mx(self, name: str) -> list[tuple[int, str]]: ...


class DnsResolver:
    """`Resolver` on dnspython's asyncio resolver, each query bounded by `timeout` seconds."""

    def __init__(
        self, timeout: float = 3.0, nameservers: list[str] | None = None, port: int = 53
    ) -> None:
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        except dns.exception.DNSException as exc:
            raise MailAuthError(f"cannot set up DNS resolution: {exc}") from exc
        if nameservers is not None:
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        self._timeout = timeout

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(name, rdtype, lifetime=self._timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN) as exc:
            raise DnsNotFound(f"{rdtype} {name}: {type(exc).__name__}") from exc
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTempError(f"{rdtype} {name}: {type(exc).__name__}") from exc
        except (dns.exception.DNSException, ValueError, UnicodeError) as exc:  # malformed names
            raise DnsNotFound(f"{rdtype} {name}: {type(exc).__name__}") from exc

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def a(self, name: str) -> list[str]:
        return [r.address for r in await self._query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [r.address for r in await self._query(name, "AAAA")]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        answer = await self._query(name, "MX")
        return [(int(r.preference), r.exchange.to_text(omit_final_dot=True)) for r in answer]


class StaticResolver:
    """`Resolver` answering from a dict ``{(type, name): values}`` for tests.

    Types are "TXT", "A", "AAAA", "MX"; names match case-insensitively without the final dot.
    A missing key or an empty list raises `DnsNotFound`; an exception instance (or class) as the
    value is raised. `queries` records every (type, name) asked, in order.
    """

    def __init__(self, records: Mapping[tuple[str, str], Any]) -> None:
        self._records = {(t.upper(), _norm(n)): v for (t, n), v in records.items()}
        self.queries: list[tuple[str, str]] = []

    async def _get(self, rtype: str, name: str) -> list[Any]:
        key = (rtype, _norm(name))
        self.queries.append(key)
        value: Any = self._records.get(key)
        if isinstance(value, BaseException) or (
            isinstance(value, type) and issubclass(value, BaseException)
        ):
            raise value
        if not value:
            raise DnsNotFound(f"{rtype} {name}")
        return list(value)

    async def txt(self, name: str) -> list[str]:
        return await self._get("TXT", name)

    async def a(self, name: str) -> list[str]:
        return await self._get("A", name)

    async def aaaa(self, name: str) -> list[str]:
        return await self._get("AAAA", name)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self._get("MX", name)


@dataclass(frozen=True)
class DkimResult:
    """One DKIM-Signature: pass, fail, neutral, temperror or permerror."""

    domain: str
    selector: str
    result: str


@dataclass(frozen=True)
class SpfResult:
    """SPF for the MAIL FROM domain (or HELO when MAIL FROM is empty): pass, fail, softfail,
    neutral, none, temperror or permerror."""

    domain: str
    result: str


@dataclass(frozen=True)
class DmarcResult:
    """DMARC for the From domain: pass, fail or none (also temperror/permerror), and the policy
    (none, quarantine, reject) its record asks for."""

    domain: str
    result: str
    policy: str


@dataclass(frozen=True)
class AuthResults:
    """All results for one message plus an RFC 8601 Authentication-Results header value."""

    dkim: tuple[DkimResult, ...]
    spf: SpfResult
    dmarc: DmarcResult
    header: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict` reads it back."""
        return asdict(self) | {"dkim": [asdict(d) for d in self.dkim]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthResults:
        """Rebuild from `to_dict` output; raises `MailAuthError` on anything else."""
        try:
            dkim_results = tuple(
                DkimResult(**_strs(d, "domain", "selector", "result")) for d in data["dkim"]
            )
            spf = SpfResult(**_strs(data["spf"], "domain", "result"))
            dmarc = DmarcResult(**_strs(data["dmarc"], "domain", "result", "policy"))
            header = data["header"]
            if not isinstance(header, str):
                raise TypeError("header is not a string")
        except (KeyError, TypeError, AttributeError) as exc:
            raise MailAuthError(f"not a stored authentication result: {exc}") from exc
        return cls(dkim_results, spf, dmarc, header)


def _strs(data: Mapping[str, Any], *keys: str) -> dict[str, str]:
    values = {k: data[k] for k in keys}
    if not all(isinstance(v, str) for v in values.values()):
        raise TypeError(f"non-string value among {keys}")
    return values


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


# --- DKIM (RFC 6376) ------------------------------------------------------------------------


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """dkimpy logs what is wrong with hostile input at error level; that is our debug level."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_DKIM_LOG = _QuietLog(logging.getLogger(__name__ + ".dkimpy"), {})
_LABELS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")


@dataclass
class _Signature:
    domain: str
    selector: str
    usable: bool

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


class _DkimRun:
    """Progress of DKIM checking, readable after a timeout cut it short."""

    def __init__(self) -> None:
        self.signatures: list[_Signature] | None = None

    def unfinished(self) -> tuple[DkimResult, ...]:
        if self.signatures is None:  # not even the headers were read: report one unknown
            return (DkimResult("", "", "temperror"),)
        return tuple(DkimResult(s.domain, s.selector, "temperror") for s in self.signatures)


def _dkim_prepare(raw: bytes) -> tuple[dkim.DKIM | None, list[_Signature]]:
    try:
        verifier = dkim.DKIM(raw, logger=_DKIM_LOG)
        headers = verifier.headers
    except Exception:  # noqa: BLE001 -- dkimpy cannot read the header block; see below
        verifier = None
        headers = [
            [m.group(1), m.group(2)]
            for m in re.finditer(
                rb"(?im)^(dkim-signature):(.*(?:\r?\n[ \t].*)*)",
                re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0],
            )
        ]
    signatures = []
    for name, value in headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags = parse_tag_value(value)
            domain = _norm(tags.get(b"d", b"").decode("ascii"))
            selector = _norm(tags.get(b"s", b"").decode("ascii"))
        except (InvalidTagValueList, UnicodeDecodeError):
            signatures.append(_Signature("", "", usable=False))
            continue
        usable = (
            bool(_LABELS.fullmatch(domain) and _LABELS.fullmatch(selector)) and verifier is not None
        )
        signatures.append(_Signature(domain, selector, usable))
    return verifier, signatures


def _dkim_verify_all(
    verifier: dkim.DKIM | None, signatures: list[_Signature], keys: Mapping[str, object]
) -> tuple[DkimResult, ...]:
    results = []
    for idx, sig in enumerate(signatures):
        result = "permerror"
        key = keys.get(sig.key_name)
        if isinstance(key, DnsTempError):
            result = "temperror"
        elif sig.usable and verifier is not None and isinstance(key, bytes):
            result = _dkim_verify_one(verifier, idx, key)
        results.append(DkimResult(sig.domain, sig.selector, result))
    return tuple(results)


def _dkim_verify_one(verifier: dkim.DKIM, idx: int, key: bytes) -> str:
    try:
        dkim.evaluate_pk(b"", key)
    except Exception:  # noqa: BLE001 -- unusable or revoked key record (RFC 6376 section 3.6.1)
        return "permerror"
    try:
        return "pass" if verifier.verify(idx=idx, dnsfunc=lambda _name, timeout=5: key) else "fail"
    except dkim.ValidationError as exc:
        return "fail" if "body hash mismatch" in str(exc) else "permerror"
    except Exception as exc:  # noqa: BLE001 -- malformed signature, weak key, unknown algorithm
        logger.debug("DKIM signature %d unverifiable: %s: %s", idx, type(exc).__name__, exc)
        return "permerror"


def verify_raw(raw: bytes, signatures: list[_Signature], keys: Mapping[str, object]) -> tuple[DkimResult, ...]:
    """`_dkim_verify_all` from the raw bytes alone, so that it can run in another process."""
    verifier, _ = _dkim_prepare(raw)
    return _dkim_verify_all(verifier, signatures, keys)


async def check_dkim(
    raw: bytes, resolver: Resolver, run: _DkimRun | None = None, executor: Executor | None = None
) -> tuple[DkimResult, ...]:
    """Verify every DKIM-Signature of `raw`, one result each (empty when there is none).

    Keys are fetched through `resolver` first; dkimpy then verifies in a worker thread, since
    RSA is CPU work. Ed25519 signatures need PyNaCl and read as permerror without it.
    """
    run = run or _DkimRun()
    verifier, signatures = await asyncio.to_thread(_dkim_prepare, raw)
    run.signatures = signatures
    names = sorted({s.key_name for s in signatures if s.usable})
    answers = await asyncio.gather(*(resolver.txt(n) for n in names), return_exceptions=True)
    keys: dict[str, object] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, list):
            records = [r for r in answer if re.search(r"(?:^|;)\s*p\s*=", r)]
            keys[name] = records[0].encode("ascii", "replace") if records else DnsNotFound(name)
        elif isinstance(answer, DnsNotFound):
            keys[name] = answer
        else:  # DnsTempError, or any failure of the resolver itself
            keys[name] = DnsTempError(f"{name}: {answer!r}")
    if executor is not None and any(s.usable for s in signatures):
        return await asyncio.get_running_loop().run_in_executor(executor, verify_raw, raw, signatures, keys)
    return await asyncio.to_thread(_dkim_verify_all, verifier, signatures, keys)


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
                net = ipaddress.ip_network(rest[1:], strict=False)
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
            net = ipaddress.ip_network(term.target)
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
                if self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
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


def _spf_identity(mail_from: str, helo: str) -> tuple[str, str]:
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
    sender, domain = _spf_identity(mail_from, helo)
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
        logger.debug("SPF permerror for %s: %s", domain, exc)
        result = "permerror"
    except _SpfTempError as exc:
        logger.debug("SPF temperror for %s: %s", domain, exc)
        result = "temperror"
    return SpfResult(domain, result)


# --- DMARC (RFC 7489) -----------------------------------------------------------------------


def organizational_domain(domain: str) -> str:
    """The organizational domain of `domain` by a small heuristic, not the Public Suffix List:
    the last two labels, or three when the TLD has two letters and the second-level label is
    one of co, com, org, net, ac, gov, edu (example.co.uk). It is wrong for other multi-label
    public suffixes (e.g. example.pvt.k12.ma.us, user.github.io), where it may treat
    unrelated domains as aligned under relaxed alignment."""
    labels = _norm(domain).split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _ORG_SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    a, b = _norm(domain), _norm(from_domain)
    if not a:
        return False
    return a == b if mode == "s" else organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True)
class _DmarcPolicy:
    policy: str
    adkim: str
    aspf: str


async def _dmarc_record(resolver: Resolver, domain: str) -> dict[str, str] | None:
    try:
        txt = await resolver.txt(f"_dmarc.{domain}")
    except DnsNotFound:
        return None
    records = [t for t in txt if re.match(r"v\s*=\s*DMARC1\s*(?:;|$)", t, re.I)]
    if len(records) != 1:  # RFC 7489 section 6.6.3: none, or several, means no policy
        return None
    tags: dict[str, str] = {}
    for item in records[0].split(";"):
        key, eq, value = item.partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip().lower())
    return tags


async def discover_dmarc(resolver: Resolver, from_domain: str) -> _DmarcPolicy | None:
    """The DMARC policy that applies to `from_domain` (RFC 7489 section 6.6.3), or None.

    Raises DnsTempError when a lookup fails for now.
    """
    domain = _norm(from_domain)
    tags = await _dmarc_record(resolver, domain)
    subdomain = False
    if tags is None and organizational_domain(domain) != domain:
        tags = await _dmarc_record(resolver, organizational_domain(domain))
        subdomain = True
    if tags is None:
        return None
    valid = ("none", "quarantine", "reject")
    policy = tags.get("p", "")
    if policy not in valid:
        if "rua" not in tags:  # an invalid p= without reports to send: the record is void
            return None
        policy = "none"
    if subdomain and tags.get("sp") in valid:
        policy = tags["sp"]
    return _DmarcPolicy(policy, tags.get("adkim", "r")[:1], tags.get("aspf", "r")[:1])


def evaluate_dmarc(
    from_domain: str,
    policy: _DmarcPolicy | None,
    dkim_results: tuple[DkimResult, ...],
    spf: SpfResult,
) -> DmarcResult:
    """Pass when an aligned DKIM pass or an aligned SPF pass exists (RFC 7489 section 4.2)."""
    if policy is None:
        return DmarcResult(from_domain, "none", "none")
    dkim_aligned = [d for d in dkim_results if _aligned(d.domain, from_domain, policy.adkim)]
    spf_aligned = _aligned(spf.domain, from_domain, policy.aspf)
    if any(d.result == "pass" for d in dkim_aligned) or (spf_aligned and spf.result == "pass"):
        return DmarcResult(from_domain, "pass", policy.policy)
    if any(d.result == "temperror" for d in dkim_aligned) or (
        spf_aligned and spf.result == "temperror"
    ):
        return DmarcResult(from_domain, "temperror", policy.policy)
    return DmarcResult(from_domain, "fail", policy.policy)


# --- everything together --------------------------------------------------------------------


def _pvalue(value: str) -> str:
    """An RFC 8601 property value: bare when domain-like, else a quoted-string, ASCII only."""
    value = "".join(ch for ch in value if " " <= ch <= "~")
    if re.fullmatch(r"[A-Za-z0-9._@+-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_header(
    authserv_id: str,
    dkim_results: tuple[DkimResult, ...],
    spf: SpfResult,
    dmarc: DmarcResult,
    helo_identity: bool,
) -> str:
    """The Authentication-Results header value (RFC 8601) for these results."""
    items = [_pvalue(authserv_id) if authserv_id.strip() else "localhost"]
    if not dkim_results:
        items.append("dkim=none")
    for d in dkim_results:
        text = f"dkim={d.result}"
        text += f" header.d={_pvalue(d.domain)}" if d.domain else ""
        text += f" header.s={_pvalue(d.selector)}" if d.selector else ""
        items.append(text)
    prop = "smtp.helo" if helo_identity else "smtp.mailfrom"
    items.append(f"spf={spf.result}" + (f" {prop}={_pvalue(spf.domain)}" if spf.domain else ""))
    items.append(
        f"dmarc={dmarc.result}" + (f" header.from={_pvalue(dmarc.domain)}" if dmarc.domain else "")
    )
    return "; ".join(items)


def _outcome(task: asyncio.Task[_T] | None, default: _T) -> _T:
    """The task's result, or `default` when it did not finish or failed."""
    if task is None or not task.done() or task.cancelled():
        return default
    exc = task.exception()
    if exc is not None:
        expected = isinstance(exc, MailAuthError)  # e.g. DnsTempError from the DMARC lookup
        logger.log(
            logging.DEBUG if expected else logging.WARNING,
            "mail authentication step failed: %r",
            exc,
        )
        return default
    return task.result()


async def authenticate(
    raw: bytes,
    *,
    client_ip: str,
    mail_from: str,
    helo: str,
    from_domain: str | None,
    resolver: Resolver,
    authserv_id: str,
    timeout: float = 5.0,
    executor: Executor | None = None,
) -> AuthResults:
    """DKIM (every signature), SPF and DMARC for one message; never raises.

    `from_domain` is the domain of the header From address; None (no usable From) makes DMARC a
    permerror. DNS failures become temperror, and so does every part still unfinished when
    `timeout` seconds have passed (a DKIM verification already running in its thread finishes
    there, but its result is dropped).
    """
    helo_identity = not mail_from.strip().strip("<>").strip()
    _sender, spf_domain = _spf_identity(mail_from, helo)
    from_dom = _norm(from_domain or "")
    run = _DkimRun()
    tasks: list[asyncio.Task[Any]] = []
    dkim_task: asyncio.Task[tuple[DkimResult, ...]] | None = None
    spf_task: asyncio.Task[SpfResult] | None = None
    dmarc_task: asyncio.Task[_DmarcPolicy | None] | None = None
    try:
        dkim_task = asyncio.create_task(check_dkim(raw, resolver, run, executor))
        spf_task = asyncio.create_task(check_spf(resolver, client_ip, mail_from, helo))
        tasks = [dkim_task, spf_task]
        if from_dom:
            dmarc_task = asyncio.create_task(discover_dmarc(resolver, from_dom))
            tasks.append(dmarc_task)
        async with asyncio.timeout(timeout):
            await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        logger.info("mail authentication timed out after %.1fs", timeout)
    except Exception:  # noqa: BLE001 -- whatever is finished is still reported
        logger.exception("mail authentication failed")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    dkim_results = _outcome(dkim_task, run.unfinished())
    spf = _outcome(spf_task, SpfResult(spf_domain, "temperror"))
    unknown = _DmarcPolicy("temperror", "", "")
    policy = _outcome(dmarc_task, unknown)
    if not from_dom:
        dmarc = DmarcResult("", "permerror", "none")
    elif policy is unknown:
        dmarc = DmarcResult(from_dom, "temperror", "none")
    else:
        dmarc = evaluate_dmarc(from_dom, policy, dkim_results, spf)
    header = format_header(authserv_id, dkim_results, spf, dmarc, helo_identity)
    return AuthResults(dkim_results, spf, dmarc, header)
