"""Throw-away PostgreSQL databases for tests, on the server of ``MAILGATE_TEST_PG`` (the machine's own
by default: 127.0.0.1:5432, trust authentication). Each test creates its own database and drops it."""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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


def create_database() -> str:
    """A new empty database; returns its DSN. Runs its own loop: call it outside any running loop."""
    return asyncio.run(create_database_async())


def drop_database(dsn: str) -> None:
    asyncio.run(drop_database_async(dsn))
