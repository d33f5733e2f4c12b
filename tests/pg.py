"""Throw-away PostgreSQL databases for tests, on the server of ``MAILGATE_TEST_PG`` (the machine's own
by default: 127.0.0.1:5432, trust authentication). Each test creates its own database and drops it.

A test that stops and starts the server gets a server of its own instead: :func:`private_cluster`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")

ADMIN_DSN = os.environ.get("MAILGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(name: str) -> str:
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database_async() -> str:
    name = f"mailgate_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_for(name)


async def drop_database_async(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a loop of its own, in a thread of its own if this one runs a loop already
    (Playwright's sync API does)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def create_database() -> str:
    """A new empty database; returns its DSN."""
    return run_async(create_database_async())


def drop_database(dsn: str) -> None:
    run_async(drop_database_async(dsn))


# -- a private PostgreSQL cluster, for a test that stops and starts its server ---------------------

PG_BIN = Path(os.environ.get("MAILGATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivateCluster:
    """A PostgreSQL server of one test's own (``initdb`` into a temporary folder, trust
    authentication, 127.0.0.1 on a free port), which the test may stop and start: never the
    machine's shared server, which other test runs use at the same time."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = port
        self.log = folder / "postgres.log"
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
                     "-w", "-t", "30", *args)

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        self._pg_ctl("start")

    def stop(self) -> None:
        """Stop the server as an operator would (``-m fast``: sessions cut, a clean shutdown)."""
        self._pg_ctl("-m", "fast", "stop")


def _as_postgres(*argv: str) -> None:
    """Run a PostgreSQL tool as the ``postgres`` OS user when this is root (initdb refuses root)."""
    cmd = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
    done = subprocess.run(cmd, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started :class:`PrivateCluster`, stopped and removed at the end. Skips the test when the
    PostgreSQL server binaries (``MAILGATE_TEST_PG_BIN``) are absent, or when this is root and
    there is no ``postgres`` OS user to run them as."""
    import pytest

    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (set MAILGATE_TEST_PG_BIN)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
    # a short path: the server's Unix socket lives in it (sun_path holds 107 bytes)
    folder = Path(tempfile.mkdtemp(prefix="mgpg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        cluster = PrivateCluster(folder, _free_port())
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
                     "-E", "UTF8", "--no-sync")
        cluster.start()
        try:
            yield cluster
        finally:
            if (cluster.data / "postmaster.pid").exists():
                _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
