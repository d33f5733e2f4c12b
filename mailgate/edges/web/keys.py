"""Typed keys of the aiohttp application's state."""

from __future__ import annotations

from aiohttp import web

from mailgate.core.inbound import Inbound
from mailgate.core.runtime import Runtime
from mailgate.edges.web.hub import Hub
from mailgate.edges.web.origins import Origins

RUNTIME = web.AppKey("runtime", Runtime)
INBOUND: web.AppKey[Inbound | None] = web.AppKey("inbound")
HUB = web.AppKey("hub", Hub)
ORIGINS = web.AppKey("origins", Origins)
