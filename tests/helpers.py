"""What the tests share: configs on a temporary SQLite file, condition waits, the daemon as a subprocess.

Fixtures built on these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailgate.config import Config, load_config
from mailgate.config import tables as config_tables
from mailgate.core.runtime import Runtime
from mailgate.daemon.lifecycle import Daemon

ROOT = Path(__file__).resolve().parent.parent
INTERVIEWS = ROOT / "tests" / "interviews"


def make_config(tmp_path: Path, *, store_dsn: str | None = None, **tables: Any) -> Config:
    """Defaults on a fresh SQLite file in ``tmp_path`` (or, given ``store_dsn``, on that PostgreSQL
    database), fast polling, test interviews loaded."""
    store: dict[str, Any] = {"path": str(tmp_path / "mailgate.sqlite3")}
    if store_dsn is not None:
        store.update(backend="postgres", dsn=store_dsn)
    base = load_config(None).replace(
        store=store,
        interviews={"modules": ("mailgate.demo.background", "mailgate.demo.email", "mailgate.demo.checkin"), "paths": (str(INTERVIEWS / "testing.py"),)},
        tasks={"poll_interval": 0.05, "workers": 4},
        sessions={"lock_timeout": 2.0},
        daemon={"grace_period": 2.0},
        smtp={"parse_processes": 0},  # parse in-process: no worker start-up per test daemon
    )
    return base.replace(**tables)


def config_toml(config: Config) -> str:
    """``config`` as the text of a config file (every key of every table), for a daemon subprocess."""
    lines = []
    for name in config_tables():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in vars(getattr(config, name)).items())
    return "\n".join(lines) + "\n"  # JSON strings, numbers, booleans and lists read the same in TOML


def runtime_of(daemon: Daemon) -> Runtime:
    """The runtime of a started daemon."""
    assert daemon.runtime is not None
    return daemon.runtime


# -- waiting on a condition with a deadline (never a sleep as synchronisation) -------------------

def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Poll a predicate (async or not) on the loop until true; fail the test after ``timeout`` seconds."""

    async def check() -> bool:
        result = predicate()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def queue_processed(runtime: Runtime, timeout: float = 10.0) -> None:
    """Wait until the inbound queue is empty: the SMTP 250 comes once a message is queued, its
    e-mails (and their tasks and events) once the processor has stored them, right after."""
    async def empty() -> bool:
        return await runtime.store.count_inbound() == 0

    await wait_until(empty, timeout, "the inbound queue to be processed")


# -- the real daemon as a subprocess -----------------------------------------------------------

def mailgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailgate", *args]


def subprocess_env(config_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MAILGATE_CONFIG"] = str(config_path)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_mailgate(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m mailgate ARGS`` with stdout and stderr to ``log``.

    A file, not a pipe: a full pipe would block the daemon.
    """
    with log.open("wb") as out:
        return subprocess.Popen(mailgate_cmd(*args), env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float, what: str) -> re.Match[str]:
    """The first match of ``pattern`` in the log; fail if the process exits or ``timeout`` passes first."""
    found: list[re.Match[str]] = []

    def logged() -> bool:
        text = log.read_text(errors="replace")
        match = re.search(pattern, text)
        if match:
            found.append(match)
            return True
        if proc.poll() is not None:
            raise AssertionError(f"mailgate exited with {proc.returncode} before {what}:\n{text}")
        return False

    wait_for(logged, timeout, f"{what} (/{pattern}/ in {log.name})")
    return found[0]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM and the exit code; past ``timeout`` the process is killed (exit code ``-SIGKILL``)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process that still runs (a fixture's clean-up after a failed test)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
