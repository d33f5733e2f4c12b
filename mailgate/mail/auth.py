"""DKIM, SPF and DMARC evaluation of one inbound message, with an injectable async resolver.

`authenticate` is the entry point: it never raises, turns DNS trouble into ``temperror``, and is
bounded as a whole by a timeout. DNS goes through a `Resolver` (`DnsResolver` in production,
`StaticResolver` in tests; see :mod:`mailgate.mail.resolver`), so no lookup blocks the event loop;
dkimpy's synchronous verifier gets its keys from a dictionary filled beforehand and runs in a worker
thread or process. SPF lives in :mod:`mailgate.mail.spf`; DKIM, DMARC and the combined result here.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import logging
import re
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

from mailgate.mail.resolver import (
    DnsBudgetSpent,
    DnsNotFound,
    DnsResolver,
    DnsTempError,
    MailAuthError,
    QueryBudget,
    Resolver,
    StaticResolver,
    _norm,
)
from mailgate.mail.spf import SpfResult, check_spf, spf_identity

logger = logging.getLogger(__name__)

__all__ = [
    "AuthResults", "DkimResult", "DmarcResult", "DnsBudgetSpent", "DnsNotFound", "DnsResolver", "DnsTempError", "MailAuthError",
    "QueryBudget", "Resolver", "SpfResult", "StaticResolver", "authenticate", "check_dkim", "check_spf", "dkim_key_names",
    "fetch_dkim_keys", "organizational_domain", "verify_dkim",
]

_T = TypeVar("_T")
MAX_DKIM_SIGNATURES = 5  # the default of [smtp] max_dkim_signatures
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DkimResult:
    """One DKIM-Signature: pass, fail, neutral, temperror or permerror; or policy (with a
    `reason`) for the signatures past the per-message limit, which are not checked."""

    domain: str
    selector: str
    result: str
    reason: str = ""


@dataclass(frozen=True)
class DmarcResult:
    """DMARC for the From domain: pass, fail or none (also temperror/permerror), the policy
    (none, quarantine, reject) its record asks for, and why, when that is not plain."""

    domain: str
    result: str
    policy: str
    reason: str = ""


@dataclass(frozen=True)
class AuthResults:
    """All results for one message plus an RFC 8601 Authentication-Results header value."""

    dkim: tuple[DkimResult, ...]
    spf: SpfResult
    dmarc: DmarcResult
    header: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict` reads it back."""
        # written out: dataclasses.asdict deep-copies, which cost more than all the rest per message
        return {
            "dkim": [_with_reason({"domain": d.domain, "selector": d.selector, "result": d.result}, d.reason)
                     for d in self.dkim],
            "spf": {"domain": self.spf.domain, "result": self.spf.result},
            "dmarc": _with_reason({"domain": self.dmarc.domain, "result": self.dmarc.result,
                                   "policy": self.dmarc.policy}, self.dmarc.reason),
            "header": self.header,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthResults:
        """Rebuild from `to_dict` output; raises `MailAuthError` on anything else."""
        try:
            dkim_results = tuple(
                DkimResult(**_strs(d, "domain", "selector", "result"), reason=_reason(d)) for d in data["dkim"]
            )
            spf = SpfResult(**_strs(data["spf"], "domain", "result"))
            dmarc = DmarcResult(**_strs(data["dmarc"], "domain", "result", "policy"), reason=_reason(data["dmarc"]))
            header = data["header"]
            if not isinstance(header, str):
                raise TypeError("header is not a string")
        except (KeyError, TypeError, AttributeError) as exc:
            raise MailAuthError(f"not a stored authentication result: {exc}") from exc
        return cls(dkim_results, spf, dmarc, header)


def _with_reason(item: dict[str, str], reason: str) -> dict[str, str]:
    # written only when there is one: the results of ordinary messages are stored as before
    if reason:
        item["reason"] = reason
    return item


def _reason(data: Mapping[str, Any]) -> str:
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise TypeError("reason is not a string")
    return reason


def _strs(data: Mapping[str, Any], *keys: str) -> dict[str, str]:
    values = {k: data[k] for k in keys}
    if not all(isinstance(v, str) for v in values.values()):
        raise TypeError(f"non-string value among {keys}")
    return values


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


_BLANK_LINE = re.compile(rb"\A\r?\n|\r?\n\r?\n")  # the end of the header block, as dkimpy finds it
_ANY_SIGNATURE = re.compile(rb"(?im)^dkim-signature[ \t]*:")
_LINE_END = re.compile(rb"\r?\n")


def _dkim_prepare(raw: bytes) -> tuple[dkim.DKIM | None, list[_Signature]]:
    # dkimpy splits the whole message into a list of lines to find its header block (33 MB of
    # empty lines made 17 million objects, 1.4 GB); it is given the header block alone, and the
    # body joined with CRLF as its parser would, in one pass. A message without a signature
    # needs no dkimpy at all.
    end = _BLANK_LINE.search(raw)
    head = raw[: end.end()] if end else raw
    if not _ANY_SIGNATURE.search(head):
        return None, []
    try:
        verifier = _StreamingDKIM(head, logger=_DKIM_LOG)
        if end:
            verifier.raw, verifier.body_start = raw, end.end()
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
    return verifier, _signatures(headers, readable=verifier is not None)


class _StreamingDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's verifier, with the body hash computed block by block from the raw message.

    dkimpy canonicalizes a body in three whole-body passes (relaxed: two substitutions and a
    trailing-line cut, each a full copy), which put a worker at 6.7 times a 25 MB message. Here the
    body hash is checked by `_body_hash` (the same canonicalization, one block at a time), and
    dkimpy is left the header signature only: it gets the signature's tags without ``bh``, which
    it then does not check again. Anything out of the ordinary (a ``tlsrpt`` key, an unknown
    algorithm or canonicalization, an ``l=`` that is not a plain number) goes to dkimpy as before,
    with the body joined with CRLF as its parser would.
    """

    raw: bytes = b""
    body_start: int | None = None

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes], sig_header: Any,
                           dnsfunc: Any) -> Any:
        length = sig.get(b"l") if not self.tlsrpt else None
        algorithm = dkim.HASH_ALGORITHMS.get(sig.get(b"a", b""))
        try:
            canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError:
            canon = None
        if (self.body_start is None or self.tlsrpt or self.seqtlsrpt or b"bh" not in sig or algorithm is None
                or canon is None or (length is not None and not re.fullmatch(rb"[0-9]{1,76}", length))):
            if self.body_start is not None:  # dkimpy's own way, on the whole body
                self.body, self.body_start = _LINE_END.sub(b"\r\n", self.raw[self.body_start :]), None
            return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)
        bodyhash = _body_hash(self.raw, self.body_start, canon.body_algorithm.name == b"relaxed", algorithm,
                              None if length is None else int(length))
        bh = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
        if bodyhash != bh:  # dkimpy's words, which _dkim_verify_one reads
            raise dkim.ValidationError(
                f"body hash mismatch (got {base64.b64encode(bodyhash)!r}, expected {sig[b'bh']!r})")
        rest = {k: v for k, v in sig.items() if k != b"bh"}
        return super().verify_sig_process(rest, include_headers, sig_header, dnsfunc)


_BODY_BLOCK = 1 << 20
_CRLF_RUN = b"\r\n" * 65536
_WSP_EOL = re.compile(rb"[\t ]+\r\n")
_WSP = re.compile(rb"[\t ]+")


def _body_hash(raw: bytes, start: int, relaxed: bool, algorithm: Any, limit: int | None) -> bytes:
    """The DKIM body hash (RFC 6376 section 3.7) of ``raw[start:]`` with its line ends made CRLF,
    as dkimpy computes it (simple or relaxed body canonicalization, ``l=`` ``limit``), reading the
    body in blocks cut at line ends; empty lines are counted, not kept, until something follows."""
    h = algorithm()
    left = limit

    def emit(data: bytes) -> None:
        nonlocal left
        if left is None:
            h.update(data)
        elif left > 0:
            h.update(data[:left])
            left -= min(left, len(data))

    pending = 0  # CRLFs (empty lines) not hashed yet: they count only if more content follows
    content = False
    pos, size = start, len(raw)
    while pos < size:
        cut = raw.find(b"\n", min(pos + _BODY_BLOCK, size) - 1)  # a block ends a line: no rule spans two
        end = size if cut < 0 else cut + 1
        block = _LINE_END.sub(b"\r\n", raw[pos:end])
        pos = end
        if relaxed:
            block = _WSP.sub(b" ", _WSP_EOL.sub(b"\r\n", block))
        kept = len(block.rstrip(b"\r\n"))
        run = len(block) - kept
        if run % 2 == 0 and block.endswith(_CRLF_RUN[: run] if run <= len(_CRLF_RUN) else b"\r\n" * (run // 2)):
            pairs = run // 2
        else:  # a lone CR among the line ends: count whole CRLFs from the end
            pairs, at = 0, len(block)
            while block.endswith(b"\r\n", 0, at):
                pairs, at = pairs + 1, at - 2
        body = block[: len(block) - 2 * pairs]
        del block
        if body:
            while pending:
                emit(_CRLF_RUN[: 2 * min(pending, 65536)])
                pending -= min(pending, 65536)
            emit(body)
            content = True
        pending += pairs
    # dkimpy's strip_trailing_lines leaves one CRLF; relaxed then makes a body of only that empty
    if content or not relaxed:
        emit(b"\r\n")
    return h.digest()  # type: ignore[no-any-return]


def _signatures(headers: list[list[bytes]], readable: bool) -> list[_Signature]:
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
        usable = bool(_LABELS.fullmatch(domain) and _LABELS.fullmatch(selector)) and readable
        signatures.append(_Signature(domain, selector, usable))
    return signatures


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_SIGNATURE_FIELD = re.compile(rb"(?im)^dkim-signature[ \t]*:(.*(?:\r?\n[ \t].*)*)")
_FWS = re.compile(rb"[ \t\r\n]+")


def dkim_key_names(raw: bytes | bytearray, max_signatures: int = MAX_DKIM_SIGNATURES) -> list[str]:
    """The DNS names of the keys the first `max_signatures` DKIM-Signatures of `raw` need, from
    its header block (the others are not checked: see `verify_dkim`).

    A quick scan, cheap enough for the event loop, so that the keys can be fetched before the
    message goes to a worker process, which verifies the signatures together with the parsing.
    `verify_dkim` decides with dkimpy's own reading of the message: a key this scan missed is
    asked for there, and one it names needlessly is not used.
    """
    end = _HEADER_END.search(raw)
    names = set()
    fields = _SIGNATURE_FIELD.finditer(raw, 0, end.start() if end else len(raw))
    for _, field in zip(range(max_signatures), fields, strict=False):
        tags: dict[bytes, bytes] = {}
        for item in _FWS.sub(b"", field.group(1)).split(b";"):
            name, eq, value = item.partition(b"=")
            if eq:
                tags.setdefault(name, value)
        try:
            sig = _Signature(_norm(tags.get(b"d", b"").decode("ascii")), _norm(tags.get(b"s", b"").decode("ascii")), True)
        except UnicodeDecodeError:
            continue
        if _LABELS.fullmatch(sig.domain) and _LABELS.fullmatch(sig.selector):
            names.add(sig.key_name)
    return sorted(names)


def _dkim_verify_all(
    verifier: dkim.DKIM | None, signatures: list[_Signature], keys: Mapping[str, object],
    max_signatures: int = MAX_DKIM_SIGNATURES,
) -> tuple[DkimResult, ...]:
    results = []
    for idx, sig in enumerate(signatures[:max_signatures]):
        result = "permerror"
        key = keys.get(sig.key_name)
        if isinstance(key, DnsTempError):
            result = "temperror"
        elif sig.usable and verifier is not None and isinstance(key, bytes):
            result = _dkim_verify_one(verifier, idx, key)
        results.append(DkimResult(sig.domain, sig.selector, result))
    return tuple(results) + _not_checked(signatures, max_signatures)


def _not_checked(signatures: list[_Signature], max_signatures: int) -> tuple[DkimResult, ...]:
    """One result for all the signatures past the limit: each would cost a DNS query and an RSA
    verification, and a sender may add any number (500 in 45 KB cost 294 queries)."""
    rest = len(signatures) - max_signatures
    if rest <= 0:
        return ()
    return (DkimResult("", "", "policy", f"not checked: {rest} signatures past the first {max_signatures} "
                                         "([smtp] max_dkim_signatures)"),)


@functools.lru_cache(maxsize=256)
def _key_usable(key: bytes) -> bool:
    """Whether a key record is usable; remembered, since one key signs many messages."""
    try:
        dkim.evaluate_pk(b"", key)
    except Exception:  # noqa: BLE001 -- unusable or revoked key record (RFC 6376 section 3.6.1)
        return False
    return True


def _dkim_verify_one(verifier: dkim.DKIM, idx: int, key: bytes) -> str:
    if not _key_usable(key):
        return "permerror"
    try:
        return "pass" if verifier.verify(idx=idx, dnsfunc=lambda _name, timeout=5: key) else "fail"
    except dkim.ValidationError as exc:
        return "fail" if "body hash mismatch" in str(exc) else "permerror"
    except Exception as exc:  # noqa: BLE001 -- malformed signature, weak key, unknown algorithm
        logger.debug("DKIM signature %d unverifiable: %s: %s", idx, type(exc).__name__, exc, extra={"event": "mail.dkim_unverifiable"})
        return "permerror"


def verify_raw(raw: bytes, signatures: list[_Signature], keys: Mapping[str, object],
               max_signatures: int = MAX_DKIM_SIGNATURES) -> tuple[DkimResult, ...]:
    """`_dkim_verify_all` from the raw bytes alone, so that it can run in another process."""
    verifier, _ = _dkim_prepare(raw)
    return _dkim_verify_all(verifier, signatures, keys, max_signatures)


def verify_dkim(raw: bytes, keys: Mapping[str, object],
                max_signatures: int = MAX_DKIM_SIGNATURES) -> tuple[tuple[DkimResult, ...], list[str]]:
    """Verify the first `max_signatures` DKIM-Signatures of `raw` with `keys` (as `fetch_dkim_keys`
    returns them), and record the rest as not checked (one ``policy`` result); never raises, and
    needs no DNS, so it runs in a worker process.

    Returns (results, []), or ((), the key names missing from `keys`) when `dkim_key_names`
    did not name every key dkimpy needs: fetch those and call again.
    """
    verifier, signatures = _dkim_prepare(raw)
    missing = sorted({s.key_name for s in signatures[:max_signatures] if s.usable and s.key_name not in keys})
    if missing:
        return (), missing
    return _dkim_verify_all(verifier, signatures, keys, max_signatures), []


async def fetch_dkim_keys(names: list[str], resolver: Resolver) -> dict[str, object]:
    """The key record (bytes) of each name, or the `DnsNotFound` / `DnsTempError` it met."""
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
    return keys


async def check_dkim(
    raw: bytes, resolver: Resolver, run: _DkimRun | None = None, executor: Executor | None = None,
    max_signatures: int = MAX_DKIM_SIGNATURES,
) -> tuple[DkimResult, ...]:
    """Verify the first `max_signatures` DKIM-Signatures of `raw`, one result each (empty when
    there is none), and one ``policy`` result for the rest, which are not checked.

    Keys are fetched through `resolver` first; dkimpy then verifies in a worker thread, since
    RSA is CPU work. Ed25519 signatures need PyNaCl and read as permerror without it.
    """
    run = run or _DkimRun()
    verifier, signatures = await asyncio.to_thread(_dkim_prepare, raw)
    run.signatures = signatures[:max_signatures]
    checked = signatures[:max_signatures]
    keys = await fetch_dkim_keys(sorted({s.key_name for s in checked if s.usable}), resolver)
    if executor is not None and any(s.usable for s in checked):
        return await asyncio.get_running_loop().run_in_executor(executor, verify_raw, raw, signatures, keys,
                                                                max_signatures)
    return await asyncio.to_thread(_dkim_verify_all, verifier, signatures, keys, max_signatures)



# --- DMARC (RFC 7489) -----------------------------------------------------------------------


@functools.cache
def _public_suffix_list() -> PublicSuffixList:
    # The package ships the list: loading it reads no network, and costs about 0.3 s once.
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The organizational domain of `domain` (RFC 7489 section 3.2): its public suffix from the
    Public Suffix List (ICANN and private sections, so ``github.io`` is a suffix) plus one label.
    A domain that is itself a public suffix, or that the list cannot read, is its own."""
    name = _norm(domain)
    try:
        org = _public_suffix_list().privatesuffix(name)
    except Exception:  # noqa: BLE001 -- a name the list's code cannot read is compared as itself
        org = None
    return org or name


def warm_up() -> None:
    """Load the Public Suffix List now, so that no message waits for it."""
    _public_suffix_list()


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
        text = f"dkim={d.result}" + (f" reason={_pvalue(d.reason)}" if d.reason else "")
        text += f" header.d={_pvalue(d.domain)}" if d.domain else ""
        text += f" header.s={_pvalue(d.selector)}" if d.selector else ""
        items.append(text)
    prop = "smtp.helo" if helo_identity else "smtp.mailfrom"
    items.append(f"spf={spf.result}" + (f" {prop}={_pvalue(spf.domain)}" if spf.domain else ""))
    items.append(
        f"dmarc={dmarc.result}" + (f" reason={_pvalue(dmarc.reason)}" if dmarc.reason else "")
        + (f" header.from={_pvalue(dmarc.domain)}" if dmarc.domain else "")
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
    raw: bytes | bytearray,
    *,
    client_ip: str,
    mail_from: str,
    helo: str,
    from_domain: str | None,
    resolver: Resolver,
    authserv_id: str,
    timeout: float = 5.0,
    executor: Executor | None = None,
    dkim_results: tuple[DkimResult, ...] | None = None,
    max_dkim_signatures: int = MAX_DKIM_SIGNATURES,
) -> AuthResults:
    """DKIM (every signature), SPF and DMARC for one message; never raises.

    `dkim_results`, when given, are the message's DKIM results already (`verify_dkim`), and only
    SPF and DMARC are looked up.

    `from_domain` is the domain of the header From address; None (no usable From) makes DMARC a
    permerror. DNS failures become temperror, and so does every part still unfinished when
    `timeout` seconds have passed (a DKIM verification already running in its thread finishes
    there, but its result is dropped).
    """
    helo_identity = not mail_from.strip().strip("<>").strip()
    _sender, spf_domain = spf_identity(mail_from, helo)
    from_dom = _norm(from_domain or "")
    run = _DkimRun()
    tasks: list[asyncio.Task[Any]] = []
    dkim_task: asyncio.Task[tuple[DkimResult, ...]] | None = None
    spf_task: asyncio.Task[SpfResult] | None = None
    dmarc_task: asyncio.Task[_DmarcPolicy | None] | None = None
    try:
        spf_task = asyncio.create_task(check_spf(resolver, client_ip, mail_from, helo))
        tasks = [spf_task]
        if dkim_results is None:
            dkim_task = asyncio.create_task(check_dkim(bytes(raw), resolver, run, executor, max_dkim_signatures))
            tasks.append(dkim_task)
        if from_dom:
            dmarc_task = asyncio.create_task(discover_dmarc(resolver, from_dom))
            tasks.append(dmarc_task)
        async with asyncio.timeout(timeout):
            await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        logger.info("mail authentication timed out after %.1fs", timeout, extra={"event": "mail.auth_timeout"})
    except Exception:  # noqa: BLE001 -- whatever is finished is still reported
        logger.exception("mail authentication failed", extra={"event": "mail.auth_failed"})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if dkim_results is None:
        dkim_results = _outcome(dkim_task, run.unfinished())
    spf = _outcome(spf_task, SpfResult(spf_domain, "temperror"))
    unknown = _DmarcPolicy("temperror", "", "")
    policy = _outcome(dmarc_task, unknown)
    if not from_dom:
        # RFC 7489 section 6.6.1: a message without one usable From domain cannot be evaluated;
        # it is recorded as such, never as a message that has no DMARC policy.
        dmarc = DmarcResult("", "permerror", "none", "no usable From address")
    elif policy is unknown:
        dmarc = DmarcResult(from_dom, "temperror", "none")
    else:
        dmarc = evaluate_dmarc(from_dom, policy, dkim_results, spf)
    header = format_header(authserv_id, dkim_results, spf, dmarc, helo_identity)
    return AuthResults(dkim_results, spf, dmarc, header)
