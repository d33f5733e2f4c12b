"""Orphaned automations (class or open node gone) in ``/healthz`` and ``mailgate healthcheck``
(AUTOMATIONS.md §4.1 Lifecycle): counted from what the runner found when it claimed them, no scan."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.cli.main import cmd_healthcheck
from mailgate.mail.auth import StaticResolver
from tests.automations.test_runner import cfg, settled
from tests.helpers import runtime_of as rt
from tests.helpers import wait_until

pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:  # noqa: S310 - a local URL
        return json.loads(response.read())  # type: ignore[no-any-return]


async def healthcheck(config: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = await cmd_healthcheck(argparse.Namespace(json=False), config)
    return code, capsys.readouterr().out.splitlines()


async def test_healthcheck_reports_orphans_until_they_are_moved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = cfg(tmp_path, automations={"recheck_interval": 0.2}, web={"host": "127.0.0.1", "port": port},
                 daemon={"roles": ("web", "worker")})
    async with Daemon(config, roles=("web", "worker"), clock=time.time, resolver=StaticResolver({})) as d:
        runner = rt(d).automation_runner
        cls = rt(d).automation_classes.resolve("Inbox")
        made = [(await cls.start_async())[0] for _ in range(3)]
        for m in made:
            await settled(d, m.id)
        assert (await asyncio.to_thread(healthz, port))["orphaned_automations"] == 0
        code, lines = await healthcheck(config, capsys)
        assert code == 0 and [line.split(":")[0] for line in lines] == ["config", "store", "web"]
        for m in made[:2]:
            await rt(d).store.goto_automation(m.id, "ghost", uuid.uuid4().hex)
        await wait_until(lambda: runner.orphaned() == sorted(m.id for m in made[:2]), 5, "the runner to find both orphans")
        assert (await asyncio.to_thread(healthz, port))["orphaned_automations"] == 2
        code, lines = await healthcheck(config, capsys)
        assert code == 1
        assert lines[-1].startswith("automations: FAILED (2 orphaned (class or open node gone)"), lines
        # found again at every recheck while orphaned: still counted after several recheck intervals
        started = time.monotonic()
        await wait_until(lambda: time.monotonic() - started > 1.0 and len(runner.orphaned()) == 2, 5, "later rechecks")
        # one moved back to a node its class has: it runs, and is no longer counted
        await rt(d).automations.goto(made[0].id, "wait")
        await wait_until(lambda: runner.orphaned() == [made[1].id], 5, "the moved automation to run")
        assert (await asyncio.to_thread(healthz, port))["orphaned_automations"] == 1
        # one killed: not claimed again, forgotten after two recheck intervals
        await rt(d).automations.kill(made[1].id)
        await wait_until(lambda: runner.orphaned() == [], 5, "the killed orphan to be forgotten")
        code, lines = await healthcheck(config, capsys)
        assert code == 0 and [line.split(":")[0] for line in lines] == ["config", "store", "web"]


async def test_a_process_without_the_worker_role_says_it_cannot_know(tmp_path: Path) -> None:
    """No runner here, so no orphans found: ``null``, not a reassuring 0."""
    port = free_port()
    config = cfg(tmp_path, web={"host": "127.0.0.1", "port": port}, daemon={"roles": ("web",)})
    async with Daemon(config, roles=("web",), clock=time.time, resolver=StaticResolver({})):
        health = await asyncio.to_thread(healthz, port)
        assert health["ok"] is True and health["orphaned_automations"] is None
