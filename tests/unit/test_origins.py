"""The /ws origin policy: own origins, Host names, forwarded headers believed only from trusted proxies."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from mailgate.config import WebConfig
from mailgate.edges.web.origins import Origins, normalise_origin


def request(peer: str, headers: dict[str, str]) -> Any:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 4711) if name == "peername" else default
    return make_mocked_request("GET", "/ws", headers=headers, transport=transport)


def test_normalise_origin() -> None:
    assert normalise_origin("HTTPS://Help.Example.org:443/") == "https://help.example.org"
    assert normalise_origin("http://[::1]:8025") == "http://[::1]:8025"
    assert normalise_origin("null") is None and normalise_origin("https://x:99999") is None


@pytest.mark.parametrize(
    ("peer", "headers", "refused"),
    [
        # direct, by address: the page's own origin
        ("203.0.113.9", {"Host": "127.0.0.1:8025", "Origin": "http://127.0.0.1:8025"}, None),
        # DNS rebinding: a hostile name that resolves to us
        ("203.0.113.9", {"Host": "evil.test:8025", "Origin": "http://evil.test:8025"}, "not this server's"),
        # behind a TLS proxy that passes Host on: public_url says the page is https
        ("203.0.113.9", {"Host": "help.example.org", "Origin": "https://help.example.org"}, None),
        ("203.0.113.9", {"Host": "help.example.org", "Origin": "https://app.example.org"}, None),  # allowed_origins
        ("203.0.113.9", {"Host": "help.example.org", "Origin": "https://evil.test"}, "is not allowed"),
        # forwarded headers from a peer that is not a trusted proxy are ignored
        ("203.0.113.9", {"Host": "127.0.0.1:8025", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "127.0.0.1:8443",
                         "Origin": "https://127.0.0.1:8443"}, "is not allowed"),
        ("203.0.113.9", {"Host": "127.0.0.1", "Forwarded": "proto=https;host=evil.test", "Origin": "https://evil.test"},
         "is not allowed"),
        # ... and believed from one
        ("10.1.2.3", {"Host": "127.0.0.1:8025", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "127.0.0.1:8443",
                      "Origin": "https://127.0.0.1:8443"}, None),
        ("10.1.2.3", {"Host": "127.0.0.1", "Forwarded": 'for=192.0.2.1;proto=https;host="help.example.org"',
                      "Origin": "https://help.example.org"}, None),
        ("10.1.2.3", {"Host": "127.0.0.1", "X-Forwarded-Host": "evil.test", "Origin": "http://evil.test"},
         "not this server's"),
    ],
)
def test_origin_policy(peer: str, headers: dict[str, str], refused: str | None) -> None:
    origins = Origins(WebConfig(public_url="https://help.example.org/", allowed_origins=("https://app.example.org",),
                                trusted_proxies=("10.0.0.0/8",)))
    _, refusal = origins.check(request(peer, headers))
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal


def test_without_public_url_only_addresses_and_localhost_are_ours() -> None:
    origins = Origins(WebConfig())
    assert origins.check(request("127.0.0.1", {"Host": "localhost:8025", "Origin": "http://localhost:8025"}))[1] is None
    assert origins.check(request("127.0.0.1", {"Host": "[::1]:8025", "Origin": "http://[::1]:8025"}))[1] is None
    refusal = origins.check(request("127.0.0.1", {"Host": "help.example.org"}))[1]
    assert refusal is not None and "public_url" in refusal


def test_the_client_address_is_the_nearest_untrusted_hop() -> None:
    origins = Origins(WebConfig(trusted_proxies=("10.0.0.0/8", "::1")))
    seen = origins.seen(request("10.0.0.5", {"Host": "127.0.0.1", "X-Forwarded-For": "6.6.6.6, 192.0.2.7, 10.0.0.4"}))
    assert seen.client == "192.0.2.7"  # 6.6.6.6 may be made up by the client
    seen = origins.seen(request("10.0.0.5", {"Host": "127.0.0.1", "Forwarded": 'for="[2001:db8::7]:4711", for=10.0.0.4'}))
    assert seen.client == "2001:db8::7"
    seen = origins.seen(request("192.0.2.50", {"Host": "127.0.0.1", "X-Forwarded-For": "6.6.6.6"}))
    assert seen.client == "192.0.2.50"  # not a trusted proxy: its header is ignored
