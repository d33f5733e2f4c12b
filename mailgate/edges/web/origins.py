"""Who the server is to the browser, and who the browser is: the page's origin, the server's own
origins, the Host a request names, and the client's address, believing forwarded headers
(``Forwarded``, ``X-Forwarded-*``) only from ``[web] trusted_proxies``.

A browser's WebSocket handshake carries the page's ``Origin``; a hostile page can aim at this server
only under a name it controls, so a request is refused unless its Host is one of ours (an IP
literal, ``localhost``, or the host of ``[web] public_url``): that stops DNS rebinding, where a
hostile name resolves to this server and the page's origin then "matches" the Host it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from mailgate.config import WebConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None if ``value`` is no origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def host_name(host: str) -> str:
    """The name part of a Host header value (no port, no IPv6 brackets), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``[web] trusted_proxies`` as networks (an address is a network of one)."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    value = value.strip().strip('"')
    if value.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        value = value[1:value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:  # an IPv4 address with a port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Seen:
    """A request as the browser made it: its scheme and Host, and the client's address."""

    scheme: str
    host: str
    client: str


class Origins:
    """The origin policy of one web server (built once from ``[web]``)."""

    def __init__(self, config: WebConfig) -> None:
        self.public = normalise_origin(config.public_url) if config.public_url else None
        self.public_host = host_name(urlsplit(config.public_url).netloc) if self.public else None
        self.allowed = {o for o in (normalise_origin(v) for v in config.allowed_origins) if o}
        self.trusted = networks(config.trusted_proxies)

    def trusts(self, address: str | None) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in net for net in self.trusted)

    def seen(self, request: web.Request) -> Seen:
        """The scheme, Host and client address of ``request``, as its trusted proxy reports them."""
        peer = request.remote or ""
        scheme, host, client = request.scheme, request.host, peer
        if not self.trusts(peer):
            return Seen(scheme, host, client)
        headers = request.headers
        forwarded = headers.get("Forwarded")
        if forwarded:
            last = _forwarded_pairs(forwarded.split(",")[-1])  # the element our proxy added
            scheme = last.get("proto", scheme)
            host = last.get("host", host)
            client = self._client([_forwarded_pairs(e).get("for", "") for e in forwarded.split(",")], peer)
        else:
            if headers.get("X-Forwarded-Proto"):
                scheme = headers["X-Forwarded-Proto"].split(",")[-1].strip()
            if headers.get("X-Forwarded-Host"):
                host = headers["X-Forwarded-Host"].split(",")[-1].strip()
            if headers.get("X-Forwarded-For"):
                client = self._client(headers["X-Forwarded-For"].split(","), peer)
        return Seen(scheme.lower(), host, client)

    def _client(self, hops: list[str], peer: str) -> str:
        """The rightmost address not of a trusted proxy: proxies append, so the ones to its left could
        be made up by the client."""
        client = peer
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:
                break
            client = str(ip)
            if not any(ip in net for net in self.trusted):
                break
        return client

    def host_is_ours(self, host: str) -> bool:
        name = host_name(host)
        return (is_ip(name) or name == "localhost" or name.endswith(".localhost")
                or (self.public_host is not None and name == self.public_host))

    def check(self, request: web.Request) -> tuple[Seen, str | None]:
        """What the request looks like from the browser, and why it is refused (None: it is not)."""
        seen = self.seen(request)
        if not self.host_is_ours(seen.host):
            return seen, (f"Host {seen.host!r} is not this server's; browsers must use the name in [web] public_url"
                          f"{f' ({self.public_host})' if self.public_host else ' (which is not set)'} or an IP address")
        origin = request.headers.get("Origin")
        if origin is None:
            return seen, None  # not a browser; the token still decides
        page = normalise_origin(origin)
        own = normalise_origin(f"{seen.scheme}://{seen.host}")
        if page is not None and page in (self.public, own) or page in self.allowed:
            return seen, None
        return seen, f"origin {origin!r} is not allowed; add it to [web] allowed_origins"


def _forwarded_pairs(element: str) -> dict[str, str]:
    """One element of an RFC 7239 ``Forwarded`` header as lower-case names to unquoted values."""
    pairs: dict[str, str] = {}
    for part in element.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            pairs[name.strip().lower()] = value.strip().strip('"')
    return pairs
