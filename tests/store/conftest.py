"""The store backends the contract suites run on, as the ``store`` fixture's parameters.

A new backend adds one line to ``BACKENDS``; ``tests/store/test_contract*.py`` then run on it
unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mailgate.config import StoreConfig
from mailgate.store.base import Store
from mailgate.store.postgres.backend import PgStore
from mailgate.store.sealed import SealedStore
from mailgate.store.sealing import keyring_from
from mailgate.store.sqlite.backend import SqliteStore
from tests.pg import create_database, drop_database


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[Callable[[Clock], Store]]:
    path = str(tmp_path / "contract.sqlite3")
    yield lambda clock: SqliteStore(path, clock=clock)


@contextmanager
def postgres_backend(tmp_path: Path) -> Iterator[Callable[[Clock], Store]]:
    dsn = create_database()
    try:
        yield lambda clock: PgStore(dsn, clock=clock, pool_size=4)
    finally:
        drop_database(dsn)


# One fixed key for the sealed backends: the contract holds with encryption at rest on
SEALED_KEY = StoreConfig(encryption_key="x" * 43 + "=")


@contextmanager
def sealed(backend: Callable[[Path], Any], tmp_path: Path) -> Iterator[Callable[[Clock], Store]]:
    keyring = keyring_from(SEALED_KEY)
    assert keyring is not None
    with backend(tmp_path) as factory:
        yield lambda clock: SealedStore(factory(clock), keyring)


# A backend: given the test's temporary folder, a context that yields a factory of (unopened)
# stores on one fresh database (called again, the factory opens another store on the same database:
# a restart), and removes the database at its end.
BACKENDS: dict[str, Callable[[Path], Any]] = {
    "sqlite": sqlite_backend,
    "postgres": postgres_backend,
    "sqlite-sealed": lambda tmp_path: sealed(sqlite_backend, tmp_path),
    "postgres-sealed": lambda tmp_path: sealed(postgres_backend, tmp_path),
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Clock], Store]]:
    with BACKENDS[request.param](tmp_path) as factory:
        yield factory


@pytest_asyncio.fixture
async def store(make_store: Callable[[Clock], Store], clock: Clock) -> AsyncIterator[Store]:
    s = make_store(clock)
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


