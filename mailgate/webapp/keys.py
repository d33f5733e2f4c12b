"""Typed keys of the aiohttp application's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..inbound import Inbound
from ..runtime import Runtime
from .metrics import Metrics

if TYPE_CHECKING:
    from .ws import Hub

RUNTIME = web.AppKey("runtime", Runtime)
INBOUND: web.AppKey[Inbound | None] = web.AppKey("inbound")
HUB: web.AppKey[Hub] = web.AppKey("hub")
METRICS = web.AppKey("metrics", Metrics)
