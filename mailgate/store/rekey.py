"""``mailgate db rekey``: every sealed column re-sealed under the current ``[store] encryption_key``.

Row by row, table by table (in key order, in batches of one short transaction each), every value that
is clear (written before encryption was switched on) or sealed under another key is opened and sealed
under the current key; what is sealed under it already is left alone. So it is idempotent and
resumable: run it again after an interruption, and a run that re-seals nothing proves the rotation
is complete, after which the old key can leave ``old_encryption_keys``.

Safe while daemons run, on either backend: each batch reads and writes its rows in one transaction
that holds them (SQLite: ``BEGIN IMMEDIATE``, the database's write lock, for one batch; PostgreSQL:
``SELECT ... FOR UPDATE``), so a daemon's save waits for the batch and is never overwritten by an older
value; the plain text of a re-sealed value is unchanged, so nothing a daemon holds goes stale. A queued
message that a processor holds right now keeps its clear content hash (the processor delivers it as it
claimed it); it is counted as ``busy``, and the next run converts what is left. Daemons must run with
the new key as ``encryption_key`` (the old one in ``old_encryption_keys``): rows they write under an
older key are re-sealed by the next run.

Old values linger where the database keeps space it freed (SQLite's free pages and WAL, PostgreSQL's
dead row versions) until it reuses it: ``vacuum`` rewrites the store without them (SQLite ``VACUUM``,
which holds the write lock while it runs; PostgreSQL ``VACUUM FULL`` per table, which locks each one):
best with the daemons stopped, after switching encryption on or retiring a key that may be exposed.

Clear content hashes (``raw_messages``, ``emails``, ``inbound_queue``) become keyed hashes, and the
e-mails that point to a message move with it in the same transaction; so do clear automation
``unique_key`` values (a SHA-256 of the unique fields' values, see :mod:`mailgate.store.sealed_automations`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mailgate.config import StoreConfig
from mailgate.errors import ConfigError, MailgateError
from mailgate.store.sealed import RAW_OVERHEAD, SEALED, aad, raw_aad
from mailgate.store.sealed_automations import journal_row
from mailgate.store.sealing import (
    Keyring,
    bytes_key_id,
    is_keyed_hash,
    keyed_hash,
    text_key_id,
)

BATCH = 200
RAW_BATCH = 50
RAW_BYTES = 8 * 1024 * 1024  # a batch of raw messages stops here (one may be 25 MB or more): short write locks
# (stage, table, rows done, rows in the table)
RekeyProgress = Callable[[str, str, int, int], None]
# what re-sealing one row did: written under the current key, left for the next run, or nothing to do
Redone = Literal["resealed", "busy"] | None

# table -> the column that orders it (its primary key); e-mails and queued messages are handled apart
ORDER = {"settings": "name", "sessions": "id", "mailboxes": "local_part", "tasks": "seq", "events": "id",
         "automation_steps": "seq", "automation_messages": "seq"}  # automations and their journal: apart


@dataclass
class TableRekey:
    table: str
    rows: int = 0  # rows read
    resealed: int = 0  # rows written under the current key
    busy: int = 0  # rows left for the next run (a queued message being processed)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "rows": self.rows, "resealed": self.resealed, "busy": self.busy}


@dataclass
class RekeyReport:
    key_id: str
    tables: list[TableRekey] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def resealed(self) -> int:
        return sum(t.resealed for t in self.tables)

    @property
    def busy(self) -> int:
        return sum(t.busy for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "resealed": self.resealed, "busy": self.busy, "seconds": round(self.seconds, 3),
                "complete": self.resealed == 0 and self.busy == 0, "tables": [t.to_dict() for t in self.tables]}


class Tx(Protocol):
    """One transaction of a batch: SQL with ``?`` placeholders, on either backend."""

    lock: str  # appended to a SELECT that must hold its rows (PostgreSQL's FOR UPDATE)
    # where a queued message's bytes are: ``inbound_queue.raw`` (PostgreSQL), or the row of the same
    # ``seq`` in ``inbound_raw`` (SQLite, migration 0006)
    inbound_raw_apart: bool

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...


class Db(Protocol):
    def transaction(self) -> Any: ...  # an async context manager yielding a Tx

    async def vacuum(self) -> None: ...

    async def close(self) -> None: ...


class _Rekeyer:
    def __init__(self, ring: Keyring, index_key: bytes, now: float) -> None:
        self.ring, self.index_key, self.now, self.kid = ring, index_key, now, ring.current_id

    def text(self, table: str, column: str, row: str, value: str | None) -> str | None:
        """The value re-sealed under the current key, or None when it is already (or NULL)."""
        if value is None or text_key_id(value) == self.kid:
            return None
        where = f"{table}.{column} of {row}"
        return self.ring.seal_text(self.ring.open_text(value, aad(table, column, row), where), aad(table, column, row))

    def raw(self, value: bytes, old_hash: str, new_hash: str, where: str) -> bytes | None:
        if old_hash == new_hash and bytes_key_id(value) == self.kid:
            return None
        return self.ring.seal_bytes(self.ring.open_bytes(value, raw_aad(old_hash), where), raw_aad(new_hash))

    def hash(self, value: str) -> str:
        return value if is_keyed_hash(value) else keyed_hash(self.index_key, value)


async def rekey(db: Db, ring: Keyring, index_key: bytes, now: float,
                on_progress: RekeyProgress | None = None, vacuum: bool = False) -> RekeyReport:
    """Re-seal every sealed column of the store behind ``db`` under ``ring``'s current key."""
    started = time.monotonic()
    rk = _Rekeyer(ring, index_key, now)
    report = RekeyReport(rk.kid)
    progress = on_progress or (lambda *_: None)
    for table, order in ORDER.items():
        row_col, cols = SEALED[table]
        report.tables.append(await _plain_table(db, rk, table, order, row_col, cols, progress))
    report.tables.append(await _automations(db, rk, progress))
    report.tables.append(await _journal(db, rk, progress))
    report.tables.append(await _raw_messages(db, rk, progress))
    report.tables.append(await _emails(db, rk, progress))
    report.tables.append(await _inbound(db, rk, progress))
    if vacuum:
        progress("vacuum", "all", 0, 1)
        await db.vacuum()
        progress("vacuum", "all", 1, 1)
    report.seconds = time.monotonic() - started
    return report


def _q(column: str) -> str:
    return f'"{column}"'  # tasks.user: a keyword in PostgreSQL


async def _count(db: Db, table: str) -> int:
    async with db.transaction() as tx:
        return int((await tx.fetch(f"SELECT COUNT(*) FROM {table}"))[0][0])


async def _batched(db: Db, table: str, progress: RekeyProgress, start: Any,
                   fetch: Callable[[Tx, Any], Awaitable[list[Sequence[Any]]]], key: Callable[[Sequence[Any]], Any],
                   redo: Callable[[Tx, Sequence[Any]], Awaitable[Redone]]) -> TableRekey:
    """The one loop over a table: batches in key order from ``start``, each read (``fetch(tx, after)``,
    holding its rows) and re-sealed row by row (``redo``) in one transaction; ``key`` is a row's place
    in that order."""
    out, total, after = TableRekey(table), await _count(db, table), start
    progress("rekey", table, 0, total)
    while True:
        async with db.transaction() as tx:
            rows = await fetch(tx, after)
            for row in rows:
                done = await redo(tx, row)
                out.resealed += done == "resealed"
                out.busy += done == "busy"
        if not rows:
            break
        after = key(rows[-1])
        out.rows += len(rows)
        progress("rekey", table, min(out.rows, total), total)
    progress("rekey", table, total, total)
    return out


def _first(row: Sequence[Any]) -> Any:
    return row[0]


async def _plain_table(db: Db, rk: _Rekeyer, table: str, order: str, row_col: str, cols: tuple[str, ...],
                       progress: RekeyProgress) -> TableRekey:
    select = f"SELECT {order}, {row_col}, {', '.join(_q(c) for c in cols)} FROM {table}"

    async def fetch(tx: Tx, after: Any) -> list[Sequence[Any]]:
        return await tx.fetch(f"{select} {'' if after is None else f'WHERE {order} > ?'} ORDER BY {order} LIMIT ?{tx.lock}",
                              *(() if after is None else (after,)), BATCH)

    async def redo(tx: Tx, found: Sequence[Any]) -> Redone:
        key, row, *values = found
        new = {c: rk.text(table, c, str(row), v) for c, v in zip(cols, values, strict=True)}
        changed = {c: v for c, v in new.items() if v is not None}
        if not changed:
            return None
        await tx.execute(f"UPDATE {table} SET {', '.join(_q(c) + ' = ?' for c in changed)} WHERE {order} = ?",
                         *changed.values(), key)
        return "resealed"

    return await _batched(db, table, progress, None, fetch, _first, redo)


async def _email_update(tx: Tx, rk: _Rekeyer, row: Sequence[Any], raw_converted: bool) -> bool:
    """Re-seal one e-mail row (id, seq, local_part, message_id, sha256, dedupe, size, envelope, parsed,
    authentication); with ``raw_converted`` its message's hash became keyed: the real hash goes in
    front of its envelope. Whether it changed."""
    eid, _seq, local_part, message_id, sha, dedupe, size, envelope, parsed, auth = row
    sets: dict[str, Any] = {}
    for col, value in (("message_id", message_id), ("parsed", parsed), ("authentication", auth)):
        new = rk.text("emails", col, eid, value)
        if new is not None:
            sets[col] = new
    if raw_converted:
        plain = rk.ring.open_text(envelope, aad("emails", "envelope", eid), f"emails.envelope of {eid}")
        sets["envelope"] = rk.ring.seal_text(sha + plain, aad("emails", "envelope", eid))
        sets["sha256"], sets["size"] = rk.hash(sha), size + RAW_OVERHEAD
    else:
        new = rk.text("emails", "envelope", eid, envelope)
        if new is not None:
            sets["envelope"] = new
    if not is_keyed_hash(dedupe):
        keyed = rk.hash(dedupe)
        if await tx.fetch("SELECT 1 FROM emails WHERE local_part = ? AND dedupe = ?", local_part, keyed):
            keyed = rk.hash(f"{dedupe}\x00{eid}")  # a copy stored after the switch: both stay, as they are
        sets["dedupe"] = keyed
    if sets:
        await tx.execute(f"UPDATE emails SET {', '.join(f'{c} = ?' for c in sets)} WHERE id = ?", *sets.values(), eid)
    return bool(sets)


async def _automations(db: Db, rk: _Rekeyer, progress: RekeyProgress) -> TableRekey:
    """Automations: data and owner re-sealed; a clear unique key becomes the keyed hash that the
    sealed store computes for the same values, so the one-running rule keeps holding across the switch."""
    async def fetch(tx: Tx, after: Any) -> list[Sequence[Any]]:
        return await tx.fetch("SELECT seq, id, cls, state, unique_key, data, owner FROM automations "
                              f"WHERE seq > ? ORDER BY seq LIMIT ?{tx.lock}", after, BATCH)

    async def redo(tx: Tx, row: Sequence[Any]) -> Redone:
        seq, aid, cls, state, unique, data, owner = row
        sets = {c: v for c, v in (("data", rk.text("automations", "data", aid, data)),
                                  ("owner", rk.text("automations", "owner", aid, owner))) if v is not None}
        if unique is not None and not is_keyed_hash(unique):
            keyed = rk.hash(unique)
            if state == "running" and await tx.fetch(
                    "SELECT 1 FROM automations WHERE cls = ? AND unique_key = ? AND state = 'running'", cls, keyed):
                keyed = rk.hash(f"{unique}\x00{aid}")  # another started after the switch: both run, as they are
            sets["unique_key"] = keyed
        if not sets:
            return None
        await tx.execute(f"UPDATE automations SET {', '.join(_q(c) + ' = ?' for c in sets)} WHERE seq = ?",
                         *sets.values(), seq)
        return "resealed"

    return await _batched(db, "automations", progress, 0, fetch, _first, redo)


async def _journal(db: Db, rk: _Rekeyer, progress: RekeyProgress) -> TableRekey:
    """The automations' journal, in key order (step id, call index): its rows have no single-column key."""
    async def fetch(tx: Tx, after: Any) -> list[Sequence[Any]]:
        return await tx.fetch("SELECT step_id, call_index, result FROM automation_journal WHERE (step_id, call_index) > "
                              f"(?, ?) ORDER BY step_id, call_index LIMIT ?{tx.lock}", *after, BATCH)

    async def redo(tx: Tx, row: Sequence[Any]) -> Redone:
        step_id, call_index, result = row
        new = rk.text("automation_journal", "result", journal_row(step_id, call_index), result)
        if new is None:
            return None
        await tx.execute("UPDATE automation_journal SET result = ? WHERE step_id = ? AND call_index = ?",
                         new, step_id, call_index)
        return "resealed"

    return await _batched(db, "automation_journal", progress, ("", -1), fetch, lambda row: (row[0], row[1]), redo)


EMAIL_SELECT = "SELECT id, seq, local_part, message_id, sha256, dedupe, size, envelope, parsed, authentication FROM emails"


async def _raw_rows(tx: Tx, table: str, order: str, after: Any) -> int:
    """How many of the next rows make a batch of at most ``RAW_BYTES`` (at least one row)."""
    sizes = [int(r[0]) for r in await tx.fetch(f"SELECT size FROM {table} WHERE {order} > ? ORDER BY {order} LIMIT ?",
                                                 after, RAW_BATCH)]
    total, rows = 0, 0
    for size in sizes:
        total, rows = total + size, rows + 1
        if total >= RAW_BYTES:
            break
    return max(rows, 1)


async def _raw_messages(db: Db, rk: _Rekeyer, progress: RekeyProgress) -> TableRekey:
    """Raw messages, in hash order; a clear hash becomes keyed together with the e-mails that point to it."""
    async def fetch(tx: Tx, after: Any) -> list[Sequence[Any]]:
        return await tx.fetch(f"SELECT sha256, raw FROM raw_messages WHERE sha256 > ? ORDER BY sha256 LIMIT ?{tx.lock}",
                              after, await _raw_rows(tx, "raw_messages", "sha256", after))

    async def redo(tx: Tx, row: Sequence[Any]) -> Redone:
        sha, raw = row
        new_hash = rk.hash(sha)
        sealed = rk.raw(bytes(raw), sha, new_hash, f"raw_messages.raw of {sha}")
        if sealed is None:
            return None
        if new_hash == sha:
            await tx.execute("UPDATE raw_messages SET raw = ?, size = ? WHERE sha256 = ?", sealed, len(sealed), sha)
            return "resealed"
        if await tx.fetch("SELECT 1 FROM raw_messages WHERE sha256 = ?", new_hash):
            await tx.execute("DELETE FROM raw_messages WHERE sha256 = ?", sha)  # stored again since: same bytes
        else:
            await tx.execute("UPDATE raw_messages SET sha256 = ?, raw = ?, size = ? WHERE sha256 = ?",
                             new_hash, sealed, len(sealed), sha)
        for email in await tx.fetch(f"{EMAIL_SELECT} WHERE sha256 = ? ORDER BY seq{tx.lock}", sha):
            await _email_update(tx, rk, email, raw_converted=True)
        return "resealed"

    return await _batched(db, "raw_messages", progress, "", fetch, _first, redo)


async def _emails(db: Db, rk: _Rekeyer, progress: RekeyProgress) -> TableRekey:
    async def fetch(tx: Tx, after: Any) -> list[Sequence[Any]]:
        return await tx.fetch(f"{EMAIL_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?{tx.lock}", after, BATCH)

    async def redo(tx: Tx, row: Sequence[Any]) -> Redone:
        return "resealed" if await _email_update(tx, rk, row, raw_converted=False) else None

    return await _batched(db, "emails", progress, 0, fetch, lambda row: row[1], redo)


async def _inbound(db: Db, rk: _Rekeyer, progress: RekeyProgress) -> TableRekey:
    async def fetch(tx: Tx, after: Any) -> list[Sequence[Any]]:
        source, raw_col = (("inbound_queue q JOIN inbound_raw r ON r.seq = q.seq", "r.raw") if tx.inbound_raw_apart
                           else ("inbound_queue q", "q.raw"))
        return await tx.fetch(f"SELECT q.seq, q.id, q.sha256, {raw_col}, q.envelope, q.worker, q.lease_until "
                              f"FROM {source} WHERE q.seq > ? ORDER BY q.seq LIMIT ?{tx.lock}", after,
                              await _raw_rows(tx, "inbound_queue", "seq", after))

    async def redo(tx: Tx, row: Sequence[Any]) -> Redone:
        seq, eid, sha, raw, envelope, worker, lease_until = row
        if is_keyed_hash(sha):
            sets: dict[str, Any] = {}
            sealed = rk.raw(bytes(raw), sha, sha, f"inbound_queue.raw of {eid}")
            if sealed is not None:
                sets["raw"] = sealed
            new = rk.text("inbound_queue", "envelope", eid, envelope)
            if new is not None:
                sets["envelope"] = new
        elif worker is not None and lease_until is not None and lease_until >= rk.now:
            return "busy"  # its processor delivers it by the clear hash it claimed it with
        else:
            new_hash = rk.hash(sha)
            plain = rk.ring.open_text(envelope, aad("inbound_queue", "envelope", eid), f"inbound_queue.envelope of {eid}")
            sealed = rk.raw(bytes(raw), sha, new_hash, f"inbound_queue.raw of {eid}")
            assert sealed is not None
            sets = {"sha256": new_hash, "raw": sealed, "size": len(sealed),
                    "envelope": rk.ring.seal_text(sha + plain, aad("inbound_queue", "envelope", eid))}
        if not sets:
            return None
        if tx.inbound_raw_apart and "raw" in sets:
            await tx.execute("UPDATE inbound_raw SET raw = ? WHERE seq = ?", sets.pop("raw"), seq)
        if sets:
            await tx.execute(f"UPDATE inbound_queue SET {', '.join(f'{c} = ?' for c in sets)} WHERE id = ?",
                             *sets.values(), eid)
        return "resealed"

    return await _batched(db, "inbound_queue", progress, 0, fetch, _first, redo)


# -- the two backends' connections ------------------------------------------------------------------
class _SqliteTx:
    lock = ""  # BEGIN IMMEDIATE holds the whole database for the batch
    inbound_raw_apart = True

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return self.conn.execute(sql, args).fetchall()

    async def execute(self, sql: str, *args: Any) -> None:
        self.conn.execute(sql, args)


class _SqliteBatch:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def __aenter__(self) -> _SqliteTx:
        self.conn.execute("BEGIN IMMEDIATE")
        return _SqliteTx(self.conn)

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


class SqliteDb:
    """The SQLite file, on a connection of its own (the daemon's writers wait ``busy_timeout`` for a batch)."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise MailgateError(f"cannot open the SQLite store {path}: {exc}") from None
        self.conn.execute("PRAGMA secure_delete = ON")  # what a batch overwrites or frees is zeroed on disk

    async def vacuum(self) -> None:
        """Rebuild the file without its free pages (where values from before the switch may linger),
        then empty the WAL."""
        try:
            self.conn.execute("VACUUM")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            raise MailgateError(f"VACUUM of the SQLite store failed ({exc}); stop the daemon and run it again") from None

    def transaction(self) -> _SqliteBatch:
        return _SqliteBatch(self.conn)

    async def close(self) -> None:
        self.conn.close()


def _dollars(sql: str) -> str:
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


class _PgTx:
    lock = " FOR UPDATE"
    inbound_raw_apart = False

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(await self.conn.fetch(_dollars(sql), *args))

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(_dollars(sql), *args)


class _PgBatch:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.tx: Any = None

    async def __aenter__(self) -> _PgTx:
        self.tx = self.conn.transaction()
        await self.tx.start()
        return _PgTx(self.conn)

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        await (self.tx.rollback() if exc_type is not None else self.tx.commit())


class PgDb:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str, timeout: float) -> PgDb:
        import asyncpg

        try:
            return cls(await asyncpg.connect(dsn, timeout=timeout))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise MailgateError(f"cannot connect to the PostgreSQL store: {exc}") from None

    async def vacuum(self) -> None:
        """Rewrite each table without its dead row versions (which keep values as they were)."""
        for table in (*ORDER, "automations", "automation_journal", "raw_messages", "emails", "inbound_queue"):
            await self.conn.execute(f"VACUUM FULL {table}")

    def transaction(self) -> _PgBatch:
        return _PgBatch(self.conn)

    async def close(self) -> None:
        await self.conn.close()


async def open_db(config: StoreConfig) -> Db:
    """A connection of rekey's own to the configured store."""
    if config.backend == "sqlite":
        return SqliteDb(config.path, config.busy_timeout)
    return await PgDb.connect(config.dsn, config.connect_timeout)


def check_configured(config: StoreConfig) -> None:
    """ConfigError unless ``[store]`` sets a key to re-seal under."""
    if not (config.encryption_key or config.encryption_key_file):
        raise ConfigError("db rekey seals the store under [store] encryption_key, which is not set: set it (and keep "
                          "any earlier key in old_encryption_keys), then run it again")


async def run(config: StoreConfig, on_progress: RekeyProgress | None = None, vacuum: bool = False) -> RekeyReport:
    """``mailgate db rekey`` on the configured store: check the keys and the schema, then :func:`rekey`."""
    from mailgate.store import open_store
    from mailgate.store.sealed import SealedStore, check_keys

    check_configured(config)
    store = open_store(config)
    assert isinstance(store, SealedStore)
    await store.open()
    try:
        version, latest = await store.schema_version(), store.latest_migration()
        if version != latest:
            raise MailgateError(f"the store is at schema version {version}, this mailgate at {latest}: "
                                "run mailgate db migrate first")
        await check_keys(store)
        index_key, now = await store.index_key(), store.now()
    finally:
        await store.close()
    db = await open_db(config)
    try:
        return await rekey(db, store.ring, index_key, now, on_progress, vacuum)
    finally:
        await db.close()
