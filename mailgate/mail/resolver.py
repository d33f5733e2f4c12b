"""DNS for message authentication: the `Resolver` interface, the dnspython one, and a static one.

`DnsResolver` runs on dnspython's asyncio resolver, each query bounded by its timeout, so no lookup
blocks the event loop; `StaticResolver` answers from a dict for tests. Both raise `DnsNotFound`
(NXDOMAIN, no data) or `DnsTempError` (timeout, SERVFAIL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailgate.errors import MailgateError


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


class MailAuthError(MailgateError):
    """Root of the errors of this module."""


class DnsNotFound(MailAuthError):
    """The name does not exist or has no records of the asked type."""


class DnsTempError(MailAuthError):
    """The lookup failed for now (timeout, SERVFAIL, no reachable server)."""


class DnsBudgetSpent(DnsTempError):
    """The message's budget of DNS queries is spent; the lookup was not made."""


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


class QueryBudget:
    """A `Resolver` that passes at most `limit` queries for one message to `resolver`; past that
    each query raises `DnsBudgetSpent` (a temperror for the check that asked).

    DMARC's own lookups (``_dmarc.*``) are counted but never refused: RFC 7489 section 6.6.3
    makes at most two per message, and without them a DMARC policy could not be applied at all.
    `used` and `refused` count the queries made and refused.
    """

    def __init__(self, resolver: Resolver, limit: int) -> None:
        self._resolver = resolver
        self.limit = limit
        self.used = 0
        self.refused = 0

    def _spend(self, rtype: str, name: str) -> None:
        if self.used >= self.limit and not _norm(name).startswith("_dmarc."):
            self.refused += 1
            raise DnsBudgetSpent(f"{rtype} {name}: not asked, the message used its {self.limit} DNS queries")
        self.used += 1

    async def txt(self, name: str) -> list[str]:
        self._spend("TXT", name)
        return await self._resolver.txt(name)

    async def a(self, name: str) -> list[str]:
        self._spend("A", name)
        return await self._resolver.a(name)

    async def aaaa(self, name: str) -> list[str]:
        self._spend("AAAA", name)
        return await self._resolver.aaaa(name)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        self._spend("MX", name)
        return await self._resolver.mx(name)
