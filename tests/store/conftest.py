"""The store backends the contract suites run on, as the ``store`` fixture's parameters.

A new backend adds one line to ``BACKENDS``; ``tests/store/test_contract*.py`` then run on it
unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.store.base import Store
from mailgate.store.sqlite.backend import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# A backend: given the test's temporary folder, a factory of (unopened) stores on one fresh
# database; called again, the factory opens another store on the same database (a restart).
Backend = Callable[[Path], Callable[[Clock], Store]]


def sqlite_backend(tmp_path: Path) -> Callable[[Clock], Store]:
    path = str(tmp_path / "contract.sqlite3")
    return lambda clock: SqliteStore(path, clock=clock)


BACKENDS: dict[str, Backend] = {
    "sqlite": sqlite_backend,
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Clock], Store]:
    return BACKENDS[request.param](tmp_path)


@pytest_asyncio.fixture
async def store(make_store: Callable[[Clock], Store], clock: Clock) -> AsyncIterator[Store]:
    s = make_store(clock)
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


