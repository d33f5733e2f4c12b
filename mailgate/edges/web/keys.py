"""Typed keys of the aiohttp application's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from mailgate.core.inbound import Inbound
from mailgate.core.runtime import Runtime
from mailgate.edges.web.metrics import Metrics

if TYPE_CHECKING:
    from mailgate.edges.web.ws import Hub

RUNTIME = web.AppKey("runtime", Runtime)
INBOUND: web.AppKey[Inbound | None] = web.AppKey("inbound")
HUB: web.AppKey[Hub] = web.AppKey("hub")
METRICS = web.AppKey("metrics", Metrics)
