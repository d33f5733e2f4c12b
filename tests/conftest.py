"""Shared fixtures: configs on a temporary SQLite file, an in-process daemon, condition waits."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mailgate.config import Config, load_config
from mailgate.daemon.lifecycle import Daemon

ROOT = Path(__file__).resolve().parent.parent
INTERVIEWS = ROOT / "tests" / "interviews"


def make_config(tmp_path: Path, **tables: Any) -> Config:
    """Defaults on a fresh SQLite file in ``tmp_path``, fast polling, test interviews loaded."""
    base = load_config(None).replace(
        store={"path": str(tmp_path / "mailgate.sqlite3")},
        interviews={"modules": ("mailgate.demo.background", "mailgate.demo.email", "mailgate.demo.checkin"), "paths": (str(INTERVIEWS / "testing.py"),)},
        tasks={"poll_interval": 0.05, "workers": 4},
        sessions={"lock_timeout": 2.0},
        daemon={"grace_period": 2.0},
        smtp={"parse_processes": 0},  # parse in-process: no worker start-up per test daemon
    )
    return base.replace(**tables)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll an async predicate until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest_asyncio.fixture
async def daemon(config: Config) -> AsyncIterator[Daemon]:
    async with Daemon(config, roles=("worker",)) as d:
        yield d


def mailgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailgate", *args]


def subprocess_env(config_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MAILGATE_CONFIG"] = str(config_path)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
