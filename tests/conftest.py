"""Shared fixtures: a config on a temporary SQLite file and an in-process daemon.

The helpers behind them (``make_config``, ``wait_until``, ``wait_for``, the daemon as a subprocess)
are in :mod:`tests.helpers`. A test module changes the daemon by overriding ``config``,
``daemon_roles`` or ``resolver``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.resolver import Resolver
from tests.helpers import make_config


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker",)


@pytest.fixture
def resolver() -> Resolver | None:
    return None


@pytest_asyncio.fixture
async def daemon(config: Config, daemon_roles: tuple[str, ...], resolver: Resolver | None) -> AsyncIterator[Daemon]:
    async with Daemon(config, roles=daemon_roles, resolver=resolver) as d:
        yield d
