"""The SQLite writer: one thread, one connection, durable group commits.

Every write of the process is a *unit* (a function of the connection). Units that arrive while a
commit is in flight are applied together in the next transaction and all of them are answered
after that one fsync. A batch runs without a savepoint per unit; if a unit fails, the transaction
is rolled back and the batch runs again with a SAVEPOINT around each unit, so that one failing
unit does not undo its neighbours. This is why writes do not go through aiosqlite: it hops to its
thread once per statement (about 125 us measured here), while a group commit needs the whole
transaction in one hop.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mailgate.errors import StoreConflict, StoreError, StoreFull, StoreUnavailable

T = TypeVar("T")
Unit = Callable[[sqlite3.Connection], Any]

# SQLite's primary result codes (https://www.sqlite.org/rescode.html) that say the store is unusable
# for now rather than that mailgate asked for something wrong.
_UNAVAILABLE = {
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_AUTH,
}


def store_error(exc: sqlite3.Error | OSError, path: str, busy_timeout: float) -> StoreError:
    """The StoreError for a driver or OS error of the SQLite store at ``path``.

    The one translation of the SQLite backend: the writer applies it to everything it runs, the
    backend to its reads. The message says what happened and what to do next.
    """
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFull(f"the disk holding the SQLite store {path} is full ({exc.strerror}); free space there "
                             "and mailgate retries (nothing was written)")
        return StoreUnavailable(f"cannot use the SQLite store {path}: {exc}; check the disk, the file and its permissions")
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    detail = str(exc) or type(exc).__name__
    if primary == sqlite3.SQLITE_FULL:
        return StoreFull(f"the SQLite store {path} is full ({detail}): free space on the disk holding it (or raise "
                         "[store] max_pages) and mailgate retries; nothing was written")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailable(f"the SQLite store {path} stayed locked by another process for more than {busy_timeout:g} s "
                                f"([store] busy_timeout): {detail}; look for a long-running CLI command or a second daemon, "
                                "or try again")
    if primary in _UNAVAILABLE:
        return StoreUnavailable(f"cannot use the SQLite store {path} ({detail}); check the disk, the file and its "
                                "permissions, then try again")
    if primary == sqlite3.SQLITE_CONSTRAINT or isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(f"the SQLite store {path} refused a write ({detail}); nothing was saved")
    if primary == sqlite3.SQLITE_ERROR:  # e.g. no such table: a database older or newer than this code
        return StoreError(f"the SQLite store {path} failed ({detail}); check its schema with: mailgate healthcheck")
    return StoreError(f"the SQLite store {path} failed ({detail})")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: after SQLITE_FULL or an I/O error SQLite may
    already have rolled it back itself, and a second ROLLBACK would hide the first error."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class SqliteWriter:
    """One thread, one connection, group commits."""

    def __init__(self, path: str, busy_timeout: float, on_commit: Callable[[], None] = lambda: None, *,
                 max_pages: int = 0) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._max_pages = max_pages
        self._on_commit = on_commit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailgate-sqlite-writer")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Unit, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.units = 0

    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self._path, self._busy_timeout) from exc

    def _connect(self) -> None:
        # Switching to WAL, and the first open of a WAL file (its recovery), can answer SQLITE_BUSY at
        # once without calling the busy handler when another process opens the same file at that
        # moment; retried with a growing pause until [store] busy_timeout has passed.
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.01
        while True:
            try:
                self._conn = self._open_connection()
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # a retry back-off in the writer's own thread, not a synchronisation
            pause = min(pause * 2, 0.25)

    def _open_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if self._max_pages:
                # Per connection, and only this one writes: the cap holds for every write of the process.
                conn.execute(f"PRAGMA max_page_count = {int(self._max_pages)}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside any batch (migrations); it manages its own transaction."""
        if self._conn is None:
            raise StoreUnavailable("the store is closed")
        conn = self._conn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self._path, self._busy_timeout) from exc
        finally:
            self._on_commit()

    async def submit(self, unit: Callable[[sqlite3.Connection], T]) -> T:
        """Apply ``unit`` in the next group commit; returns its result once durable.

        Domain errors raised by ``unit`` (NotFound, VersionConflict, ...) come back unchanged; every
        error of SQLite or the OS comes back as a :class:`~mailgate.errors.StoreError`.
        """
        if self._conn is None:
            raise StoreUnavailable("the store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((unit, fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="sqlite-group-commit")
        try:
            return await fut
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self._path, self._busy_timeout) from exc

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await loop.run_in_executor(self._executor, self._apply, [u for u, _ in batch])
                except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                    self._on_commit()
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("the store stopped"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._on_commit()
                self.batches += 1
                self.units += len(batch)
                for (_, fut), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self._flusher = None

    def _apply(self, units: list[Unit]) -> list[tuple[bool, Any]]:
        """Apply ``units`` in one transaction; each one's (ok, result or exception).

        Units rarely fail (a version conflict, a lost lease), so a batch first runs without a
        savepoint per unit (two statements fewer per unit). If one does fail, the transaction is
        rolled back and the batch runs again with a savepoint around each unit, so that only the
        failing ones are undone.
        """
        conn = self._conn
        assert conn is not None
        if len(units) > 1:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results: list[tuple[bool, Any]] = [(True, unit(conn)) for unit in units]
            except Exception:
                _rollback(conn)
            except BaseException:
                _rollback(conn)
                raise
            else:
                self._finish(conn)
                return results
        results = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(units) == 1:  # alone in its transaction: no savepoint needed
                try:
                    results.append((True, units[0](conn)))
                except Exception as exc:
                    _rollback(conn)
                    return [(False, exc)]
            else:
                for unit in units:
                    conn.execute("SAVEPOINT unit")
                    try:
                        value = unit(conn)
                    except Exception as exc:
                        if not conn.in_transaction:  # SQLite rolled back the whole transaction (disk full, I/O)
                            raise
                        conn.execute("ROLLBACK TO unit")
                        conn.execute("RELEASE unit")
                        results.append((False, exc))
                    else:
                        conn.execute("RELEASE unit")
                        results.append((True, value))
        except BaseException:
            _rollback(conn)
            raise
        self._finish(conn)
        return results

    @staticmethod
    def _finish(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    async def close(self) -> None:
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
