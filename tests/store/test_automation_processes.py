"""Automations across real processes: 20 creates of one unique automation racing from two Python
processes give one row, on every backend (AUTOMATIONS.md §5.4). Both processes open their store,
say ``ready`` and wait for ``go``, so that their creates overlap."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.store.base import Store
from mailgate.store.postgres.backend import PgStore
from mailgate.store.sealed import SealedStore
from mailgate.store.sqlite.backend import SqliteStore
from tests.store.conftest import Clock

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]

RACER = """
import asyncio, sys
from mailgate.store.base import NewAutomation
from mailgate.store.postgres.backend import PgStore
from mailgate.store.sqlite.backend import SqliteStore

async def main(kind, where, name):
    store = SqliteStore(where) if kind == "sqlite" else PgStore(where, pool_size=10)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()
    outcomes = await asyncio.gather(*[store.create_automation(NewAutomation(
        f"{name}-{i}", "app.Singleton", None, "{}", f"key-{name}-{i}", "{}", unique_key="")) for i in range(10)])
    await store.close()
    print(" ".join(f"{rec.id}:{int(created)}" for rec, created in outcomes), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_twenty_creates_from_two_processes_give_one_row(make_store: Callable[[Clock], Store], clock: Clock) -> None:
    store = make_store(clock)
    await store.open()
    try:
        await store.migrate()
        backend = store.inner if isinstance(store, SealedStore) else store  # the racers write through the backend
        assert isinstance(backend, (SqliteStore, PgStore))
        kind, where = ("sqlite", backend.path) if isinstance(backend, SqliteStore) else ("postgres", backend.dsn)
        racers = [await asyncio.create_subprocess_exec(sys.executable, "-c", RACER, kind, where, name, cwd=ROOT,
                                                       stdin=PIPE, stdout=PIPE) for name in ("p1", "p2")]
        try:
            async with asyncio.timeout(60):
                for racer in racers:
                    assert racer.stdout is not None and (await racer.stdout.readline()).strip() == b"ready"
                outputs = [out.decode() for out, _ in await asyncio.gather(*[r.communicate(b"go\n") for r in racers])]
        finally:
            for racer in racers:
                if racer.returncode is None:
                    racer.kill()
                    await racer.wait()
        assert [racer.returncode for racer in racers] == [0, 0], outputs
        results = [pair.split(":") for out in outputs for pair in out.split()]
        assert len(results) == 20
        assert sum(int(created) for _, created in results) == 1
        assert len({automation_id for automation_id, _ in results}) == 1  # every create got the one row
        rows = await store.list_automations(cls="app.Singleton")
        assert [r.id for r in rows] == [results[0][0]]
    finally:
        await store.close()
