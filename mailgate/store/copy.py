"""``mailgate db copy``: the SQLite store copied whole into an empty PostgreSQL database, then verified.

The one place that knows both schemas: it reads SQLite with the standard library (read-only, one
snapshot) and writes PostgreSQL with asyncpg (binary COPY, in batches), so neither backend gains
methods that only a migration needs.

Consistency. The source is read in one SQLite read transaction: with WAL that is one snapshot, however
long the copy runs. The target is written in one PostgreSQL transaction that is committed only after
every table has been verified inside it: a copy that fails or does not match leaves the target as it
was (migrated and empty), so it can simply be run again. A daemon still writing to the SQLite file is
caught twice: a live session lease, claimed task or claimed automation refuses the copy before it starts, and a commit by
another connection during the copy (``PRAGMA data_version``) rolls it back at the end.

Memory. Rows travel in batches of at most ``BATCH_ROWS`` rows or ``BATCH_BYTES`` bytes; raw messages
(25 MB and more each) are fetched one at a time, so memory holds about one batch plus one message.

Verification. For each table, both sides are read in primary-key order and every row is serialised
canonically (typed, length-prefixed; raw messages by their bytes) into a SHA-256, the same function on
both sides; the counts and the digests must be equal, and each bigserial sequence must be past every
id the source ever handed out.

Not copied: ``session_leases`` (held only while an action runs: a stopped daemon holds none) and
``schema_migrations`` (the target is migrated by :class:`PgStore` itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg

from mailgate.errors import MailgateError
from mailgate.store.postgres.backend import PgStore
from mailgate.store.postgres.errors import store_error, where
from mailgate.store.sqlite.backend import SqliteStore

Kind = Literal["text", "int", "float", "bool", "bytes"]
Stage = Literal["copy", "verify"]
# (stage, table, rows done, rows in the table)
ProgressCallback = Callable[[Stage, str, int, int], None]

BATCH_ROWS = 500
BATCH_BYTES = 8 * 1024 * 1024
LOCK_TIMEOUT = "10s"  # waiting longer for the target's tables means something else uses the database


class CopyRefused(MailgateError):
    """The copy cannot start, or could not finish cleanly; nothing was written to the target."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, Kind], ...]
    key: tuple[str, ...]  # primary key: the order rows are read, copied and hashed in
    serial: str | None = None  # the bigserial column whose sequence must pass the copied ids
    fetch: int = 100  # rows per read from SQLite (one for raw messages: each may be 25 MB or more)
    # SQLite tables holding some of the columns, joined on the key (SQLite keeps a queued message's
    # bytes in a table of their own, where writing the queue's row does not copy them)
    sqlite_joined: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def serial_of(self, row: Sequence[Any]) -> int:
        """The row's id in the bigserial column (0 for tables without one)."""
        return int(row[self.column_names.index(self.serial)]) if self.serial is not None else 0

    def select(self, *, postgres: bool) -> str:
        cols = ", ".join(f'"{c}"' for c in self.column_names)
        # PostgreSQL's "C" collation orders text by its bytes, as SQLite's BINARY does: the same order
        # on both sides, whatever the target database's default collation.
        order = ", ".join(f'"{k}"' + (' COLLATE "C"' if postgres and dict(self.columns)[k] == "text" else "")
                          for k in self.key)
        using = ", ".join(f'"{k}"' for k in self.key)
        source = " JOIN ".join([f'"{self.name}"', *([] if postgres else [f'"{t}" USING ({using})' for t in self.sqlite_joined])])
        return f'SELECT {cols} FROM {source} ORDER BY {order}'


def _cols(spec: str) -> tuple[tuple[str, Kind], ...]:
    out: list[tuple[str, Kind]] = []
    for item in spec.split():
        name, _, kind = item.partition(":")
        out.append((name, kind or "text"))  # type: ignore[arg-type]
    return tuple(out)


# Every table the copy moves, with its columns as both migrations define them (see the module docstring
# for the two it leaves out). tests/store/test_copy.py holds this list to both schemas.
TABLES: tuple[Table, ...] = (
    Table("settings", _cols("name value"), ("name",), fetch=BATCH_ROWS),
    Table("sessions", _cols("id interview answers version:int owner created_at:float modified_at:float "
                            "accessed_at:float allow_cron:bool"), ("id",)),
    Table("mailboxes", _cols("local_part session_id key idx owner created_at:float expires_at:float"),
          ("local_part",), fetch=BATCH_ROWS),
    Table("tasks", _cols("seq:int id session_id interview action arguments user ui_notification state attempts:int "
                         "max_attempts:int worker lease_until:float created_at:float started_at:float "
                         "finished_at:float result error_type error_message error_trace variables automation_id"),
          ("seq",), serial="seq"),
    Table("events", _cols("id:int session_id kind payload created_at:float"), ("id",), serial="id"),
    Table("cron_periods", _cols("type period holder claimed_at:float"), ("type", "period"), fetch=BATCH_ROWS),
    Table("stashes", _cols("key data created_at:float expires_at:float ttl:float"), ("key",), fetch=BATCH_ROWS),
    Table("raw_messages", _cols("sha256 size:int raw:bytes"), ("sha256",), fetch=1),
    Table("emails", _cols("seq:int id local_part session_id message_id sha256 dedupe size:int envelope parsed "
                          "authentication received_at:float"), ("seq",), serial="seq"),
    # messages answered 250 but not processed yet: the new daemon processes them (a claim's lease runs out)
    Table("inbound_queue", _cols("seq:int id sha256 size:int raw:bytes envelope received_at:float attempts:int "
                                 "worker lease_until:float"), ("seq",), serial="seq", fetch=1,
          sqlite_joined=("inbound_raw",)),
    # automations with their history, messages and journal: a claim's lease runs out in the new daemon
    Table("automations", _cols("seq:int id cls session_id state data version:int unique_key key owner wake_at:float "
                               "claim_holder claim_until:float created_at:float updated_at:float finished_at:float"),
          ("seq",), serial="seq"),
    Table("automation_steps", _cols("seq:int id automation_id previous_id split_id node state message result error_type "
                                    "error_message error_trace wake_at:float attempts:int created_at:float "
                                    "started_at:float finished_at:float assignee_user assignee_privileges submitted_by"),
          ("seq",), serial="seq"),
    Table("automation_messages", _cols("seq:int id automation_id broadcast_class message token data sender state result "
                                       "created_at:float delivered_at:float"), ("seq",), serial="seq"),
    Table("automation_journal", _cols("step_id call_index:int kind result created_at:float"), ("step_id", "call_index")),
)
NOT_COPIED = ("session_leases", "schema_migrations")
SQLITE_ONLY = tuple(t for table in TABLES for t in table.sqlite_joined)  # copied as part of another table


# -- reports ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableCheck:
    """One table compared: counts and content digests on both sides, and the target's next id."""

    table: str
    source_rows: int
    target_rows: int
    source_sha256: str
    target_sha256: str
    next_id: int | None = None  # what the target's sequence hands out next (tables with a bigserial)
    min_next_id: int | None = None  # past every id the source used (its max, and sqlite_sequence)

    @property
    def ok(self) -> bool:
        same = self.source_rows == self.target_rows and self.source_sha256 == self.target_sha256
        return same and (self.next_id is None or self.min_next_id is None or self.next_id >= self.min_next_id)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "source_rows": self.source_rows, "target_rows": self.target_rows,
                "source_sha256": self.source_sha256, "target_sha256": self.target_sha256,
                "next_id": self.next_id, "ok": self.ok}


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str  # server and database, never the password
    checks: tuple[TableCheck, ...]
    committed: bool | None  # False: left as it was (a verification failed); None: only verified
    seconds: float = 0.0
    bytes: int = 0  # raw message bytes copied
    not_copied: tuple[str, ...] = field(default=NOT_COPIED)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def rows(self) -> int:
        return sum(c.target_rows for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "committed": self.committed, "source": self.source, "target": self.target,
                "rows": self.rows, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "tables": [c.to_dict() for c in self.checks], "not_copied": list(self.not_copied)}


# -- canonical rows and their digest -----------------------------------------------------------------
def _normalise(kind: Kind, value: Any, table: str, column: str) -> Any:
    """A value as the target holds it: PostgreSQL's types (SQLite's 0/1 becomes a boolean), and text
    without NUL, which PostgreSQL's ``text`` cannot hold (U+FFFD instead, as PgStore writes it)."""
    if value is None:
        return None
    try:
        if kind == "text":
            return value.replace("\x00", "\ufffd") if isinstance(value, str) else str(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return bool(value)
        return bytes(value)
    except (TypeError, ValueError) as exc:
        raise CopyRefused(f"the SQLite store holds {value!r} in {table}.{column}, which is not {kind}: "
                          f"{exc}; nothing was copied") from None


def _encode(kind: Kind, value: Any) -> bytes:
    if value is None:
        return b"N"
    if kind == "bytes":
        data = bytes(value)
    elif kind == "float":
        data = float(value).hex().encode()  # exact: PostgreSQL's double precision is the same IEEE double
    elif kind == "bool":
        data = b"1" if value else b"0"
    else:
        data = str(value).encode("utf-8", "surrogatepass")
    return kind[0].encode() + len(data).to_bytes(8, "big") + data


class Digest:
    """SHA-256 over the rows of one table, in key order, each value typed and length-prefixed."""

    def __init__(self, table: Table) -> None:
        self.kinds = [kind for _, kind in table.columns]
        self.hash = hashlib.sha256()
        self.rows = 0

    def add(self, row: Sequence[Any]) -> None:
        self.rows += 1
        self.hash.update(b"R")
        for kind, value in zip(self.kinds, row, strict=True):
            self.hash.update(_encode(kind, value))

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def _size(row: Sequence[Any]) -> int:
    return sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)


# -- the source: SQLite, read-only, one snapshot ------------------------------------------------------
class Source:
    """The SQLite store opened read-only, inside one read transaction (one snapshot)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not Path(path).is_file():
            raise CopyRefused(f"no SQLite store at {path}; check [store] path of the config (--config)")
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        try:
            # check_same_thread=False: reads run in a worker thread (asyncio.to_thread), one at a time
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self.conn.execute("BEGIN")
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts at a read
            self.version = self._data_version()
        except sqlite3.Error as exc:
            raise CopyRefused(f"cannot read the SQLite store {path}: {exc}") from None

    def _data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise CopyRefused(f"cannot read the SQLite store {self.path}: {exc}") from None

    def changed(self) -> bool:
        """Whether another connection committed since the snapshot began (ends the snapshot)."""
        self.conn.execute("COMMIT")
        return self._data_version() != self.version

    def check(self, latest: int, now: float) -> None:
        """Refuse a source that is not at the latest schema, has other columns than the copy knows,
        or looks in use by a running daemon."""
        has_log = self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
        version = int(self.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0]) if has_log else 0
        if version != latest:
            raise CopyRefused(f"the SQLite store {self.path} is at schema version {version}, not {latest}; "
                              "run: mailgate db migrate (with the daemon stopped), then copy again")
        for table in TABLES:
            found = list(dict.fromkeys(r[1] for name in (table.name, *table.sqlite_joined)
                                       for r in self.query(f'PRAGMA table_info("{name}")')))
            if sorted(found) != sorted(table.column_names):
                raise CopyRefused(f"the SQLite table {table.name} has the columns {', '.join(found)}; this copy knows "
                                  f"{', '.join(table.column_names)} (a mailgate version mismatch)")
        lease = self.query("SELECT session_id, expires_at FROM session_leases WHERE expires_at > ? LIMIT 1", (now,))
        task = self.query("SELECT id, lease_until FROM tasks WHERE state = 'running' AND lease_until > ? LIMIT 1", (now,))
        run = self.query("SELECT id, claim_until FROM automations WHERE claim_until > ? LIMIT 1", (now,))
        if lease or task or run:
            what = (f"session {lease[0][0]} is locked" if lease else f"task {task[0][0]} is claimed by a worker" if task
                    else f"automation {run[0][0]} is claimed by a runner")
            until = (lease or task or run)[0][1]
            raise CopyRefused(f"a daemon seems to be using the SQLite store ({what} for {until - now:.0f} s more); "
                              "stop it first (systemctl stop mailgate); if it was killed, wait until then")

    def counts(self) -> dict[str, int]:
        return {t.name: int(self.query(f'SELECT COUNT(*) FROM "{t.name}"')[0][0]) for t in TABLES}

    def used_ids(self) -> dict[str, int]:
        """The highest id each AUTOINCREMENT table ever handed out (deleted rows included)."""
        if not self.query("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"):
            return {}
        return {str(name): int(seq) for name, seq in self.query("SELECT name, seq FROM sqlite_sequence")}

    async def rows(self, table: Table) -> AsyncIterator[tuple[Any, ...]]:
        """The table's rows in key order, normalised; read in a thread, ``table.fetch`` at a time."""
        try:
            cursor = self.conn.execute(table.select(postgres=False))
        except sqlite3.Error as exc:
            raise CopyRefused(f"cannot read {table.name} from the SQLite store {self.path}: {exc}") from None
        while True:
            try:
                batch = await asyncio.to_thread(cursor.fetchmany, table.fetch)
            except sqlite3.Error as exc:
                raise CopyRefused(f"cannot read {table.name} from the SQLite store {self.path}: {exc}") from None
            if not batch:
                return
            for row in batch:
                yield tuple(_normalise(kind, v, table.name, name)
                            for (name, kind), v in zip(table.columns, row, strict=True))


# -- the target: PostgreSQL ---------------------------------------------------------------------------
def _target_error(exc: BaseException, dsn: str) -> MailgateError:
    """One line for a target that cannot be used, saying what to do (about --to, not the config)."""
    at = where(dsn)
    if isinstance(exc, (ValueError, asyncpg.ClientConfigurationError)):
        return CopyRefused(f"the target is not a PostgreSQL connection string ({exc}); "
                           "write it as postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    if isinstance(exc, TimeoutError):
        return CopyRefused(f"{at} did not answer in time; check that it runs and that this host reaches it")
    if isinstance(exc, OSError):
        return CopyRefused(f"{at} is unreachable ({exc}); check that it runs and that this host reaches it")
    if getattr(exc, "sqlstate", None) == "3D000":
        return CopyRefused(f"{at}: the database does not exist; create it first (createdb), then copy")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return CopyRefused(f"{at} refused the login ({exc}); check the user and password in --to")
    return store_error(exc, dsn)


async def _connect(dsn: str, timeout: float) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=timeout, server_settings={"application_name": "mailgate db copy"})
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ValueError) as exc:
        raise _target_error(exc, dsn) from None


async def _migrate_target(dsn: str, timeout: float) -> None:
    store = PgStore(dsn, pool_size=1, connect_timeout=timeout)
    try:
        await store.open()
        await store.migrate()
    finally:
        await store.close()


async def _refuse_unless_empty(conn: asyncpg.Connection) -> None:
    names = [t.name for t in TABLES] + ["session_leases"]
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    # No daemon may write to the target while it is filled: writers wait until the copy commits.
    await conn.execute(f"LOCK TABLE {', '.join(names)} IN SHARE ROW EXCLUSIVE MODE")
    used = [n for n in names if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{n}")')]
    if used:
        raise CopyRefused(f"the target database already holds mailgate data (in {', '.join(used)}); db copy only fills "
                          "an empty database: create a new one (createdb) and copy into it")


async def _target_rows(conn: asyncpg.Connection, table: Table) -> AsyncIterator[tuple[Any, ...]]:
    """The target's rows in key order, through a server-side cursor (needs a transaction)."""
    async for record in conn.cursor(table.select(postgres=True), prefetch=table.fetch):
        yield tuple(record)


async def _next_id(conn: asyncpg.Connection, table: Table) -> int | None:
    if table.serial is None:
        return None
    seq = await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", table.name, table.serial)
    last, called = await conn.fetchrow(f"SELECT last_value, is_called FROM {seq}")  # a name PostgreSQL gave
    return int(last) + 1 if called else int(last)


async def _set_sequence(conn: asyncpg.Connection, table: Table, past: int) -> None:
    """Make the table's sequence hand out ids above ``past`` (every id the source ever used)."""
    assert table.serial is not None
    if past > 0:
        await conn.execute("SELECT setval(pg_get_serial_sequence($1, $2), $3, true)", table.name, table.serial, past)
    else:
        await conn.execute("SELECT setval(pg_get_serial_sequence($1, $2), 1, false)", table.name, table.serial)


class _Tables:
    """What the copy and the verification share: the source, the target connection, progress."""

    def __init__(self, source: Source, conn: asyncpg.Connection, on_progress: ProgressCallback | None) -> None:
        self.source = source
        self.conn = conn
        self.progress = on_progress or (lambda stage, table, done, total: None)
        self.totals = source.counts()
        self.used = source.used_ids()
        self.bytes = 0

    async def copy(self, table: Table) -> tuple[Digest, int]:
        """Copy one table in batches; the digest of what was sent and the highest id among it."""
        total = self.totals[table.name]
        digest, batch, size, top = Digest(table), [], 0, 0
        self.progress("copy", table.name, 0, total)
        async for row in self.source.rows(table):
            digest.add(row)
            batch.append(row)
            size += _size(row)
            top = max(top, table.serial_of(row))
            if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
                await self._write(table, batch)
                self.progress("copy", table.name, digest.rows, total)
                batch, size = [], 0
        if batch:
            await self._write(table, batch)
        self.progress("copy", table.name, digest.rows, max(total, digest.rows))
        if table.serial is not None:
            await _set_sequence(self.conn, table, max(top, self.used.get(table.name, 0)))
        return digest, top

    async def _write(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        await self.conn.copy_records_to_table(table.name, records=rows, columns=table.column_names)
        self.bytes += sum(len(v) for row in rows for v in row if isinstance(v, bytes))  # raw messages

    async def check(self, table: Table, source: Digest, source_top: int) -> TableCheck:
        """Read the target's table back and compare it with the source's digest."""
        total = self.totals[table.name]
        target = Digest(table)
        self.progress("verify", table.name, 0, total)
        async for row in _target_rows(self.conn, table):
            target.add(row)
            if target.rows % table.fetch == 0:
                self.progress("verify", table.name, target.rows, total)
        self.progress("verify", table.name, target.rows, total)
        past = max(source_top, self.used.get(table.name, 0))
        return TableCheck(table.name, source.rows, target.rows, source.hexdigest(), target.hexdigest(),
                          next_id=await _next_id(self.conn, table),
                          min_next_id=past + 1 if table.serial is not None else None)


async def _source_digest(source: Source, table: Table) -> tuple[Digest, int]:
    digest, top = Digest(table), 0
    async for row in source.rows(table):
        digest.add(row)
        top = max(top, table.serial_of(row))
    return digest, top


class _Mismatch(Exception):
    """Rolls the copy's transaction back when the verification found a difference."""

    def __init__(self, checks: tuple[TableCheck, ...]) -> None:
        super().__init__("mismatch")
        self.checks = checks


async def copy_to_postgres(source_path: str, dsn: str, *, on_progress: ProgressCallback | None = None,
                           connect_timeout: float = 10.0, clock: Callable[[], float] = time.time) -> CopyReport:
    """Copy the SQLite store at ``source_path`` whole into the empty PostgreSQL database ``dsn``.

    The target is migrated first. Raises CopyRefused (nothing written) for a source that is behind
    its migrations or in use, or a target that already holds data; StoreError when PostgreSQL
    cannot be reached. A verification mismatch is returned as a report with ``committed=False``.
    """
    started = time.monotonic()
    source = Source(source_path)
    try:
        source.check(SqliteStore(source_path).latest_migration(), clock())
        conn = await _connect(dsn, connect_timeout)  # first: its errors speak of --to
        try:
            await _migrate_target(dsn, connect_timeout)
            tables = _Tables(source, conn, on_progress)
            try:
                async with conn.transaction():
                    await _refuse_unless_empty(conn)
                    copied = [(table, *await tables.copy(table)) for table in TABLES]
                    checks = tuple([await tables.check(table, digest, top) for table, digest, top in copied])
                    if not all(c.ok for c in checks):
                        raise _Mismatch(checks)
                    if source.changed():
                        raise CopyRefused(f"the SQLite store {source_path} changed during the copy: a daemon or another "
                                          "command wrote to it; stop it (systemctl stop mailgate) and copy again "
                                          "(nothing was copied)")
                committed = True
            except _Mismatch as exc:
                checks, committed = exc.checks, False
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise store_error(exc, dsn) from None
        finally:
            await conn.close()
    finally:
        source.close()
    return CopyReport(source_path, where(dsn), checks, committed, time.monotonic() - started, tables.bytes)


async def verify_copy(source_path: str, dsn: str, *, on_progress: ProgressCallback | None = None,
                      connect_timeout: float = 10.0) -> CopyReport:
    """Compare the SQLite store with a PostgreSQL database table by table (counts, digests, next
    ids), reading both sides again; nothing is written."""
    started = time.monotonic()
    source = Source(source_path)
    try:
        conn = await _connect(dsn, connect_timeout)
        try:
            tables = _Tables(source, conn, on_progress)
            checks = []
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    for table in TABLES:
                        digest, top = await _source_digest(source, table)
                        checks.append(await tables.check(table, digest, top))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise store_error(exc, dsn) from None
        finally:
            await conn.close()
    finally:
        source.close()
    return CopyReport(source_path, where(dsn), tuple(checks), committed=None, seconds=time.monotonic() - started)
