"""The SQLite store's session cache.

Sessions that were read or saved here are cached. A third connection, used only on the loop's
thread, asks SQLite for ``PRAGMA data_version`` (about 1.5 us: it reads the shared WAL index, never
a page), which changes whenever any *other* connection commits: this process's writer, the CLI, a
second daemon. While it stands still, cached sessions are current. Once it moves, each entry is
checked before use with a primary-key lookup of the session's version on that connection; a
changed or deleted session is read again. The data_version check runs at most once per turn of the
event loop and again after each of this process's own commits (a sqlite3 call lets go of the GIL,
and under load winning it back costs more than the call), so a cached session is never older than
the database was at the start of the current turn, and never older than a commit this process has
been told of. Check-ins that change nothing read nothing; those that save find their session's new
state cached.
"""

from __future__ import annotations

import asyncio
import sqlite3

from mailgate.store.base import SessionRecord


class SessionCache:
    """Sessions as last read or saved here, each checked against the database before use.

    ``PRAGMA data_version`` of the watch connection (read at most once per turn of the loop and
    after each of this process's commits) tells whether anyone committed since the entries were
    last checked. While it stands still every entry is current. Once it moves, an entry is used
    again only after a primary-key lookup of its session's version (a few microseconds, on the
    loop's thread, ``timeout=0`` so that it never waits on a lock) shows it unchanged; otherwise it
    is dropped and read again.
    """

    def __init__(self, watch: sqlite3.Connection, size: int) -> None:
        self._watch = watch
        self._size = size
        self._version = self.data_version()
        self._checked = False  # data_version was read in this turn of the loop, after our last commit
        self._records: dict[str, SessionRecord] = {}
        self._current: set[str] = set()  # ids checked since data_version last moved
        self.hits = 0
        self.misses = 0

    def data_version(self) -> int | None:
        try:
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:  # busy (never waited for: this runs on the loop) or broken: trust nothing
            return None

    def check(self) -> int | None:
        """Note whether any other connection committed since the last check; the version now."""
        if self._checked:
            return self._version
        version = self.data_version()
        if version is None or version != self._version:
            self._current.clear()
            self._version = version
        if version is not None:
            self._checked = True
            asyncio.get_running_loop().call_soon(self.stale)
        return version

    def stale(self) -> None:
        """Read data_version again at the next check (a new turn of the loop, or this process committed)."""
        self._checked = False

    def get(self, session_id: str) -> SessionRecord | None:
        self.check()
        rec = self._records.get(session_id)
        if rec is not None and session_id not in self._current:
            try:
                row = self._watch.execute("SELECT version, created_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
            except sqlite3.Error:
                row = None
            if row is not None and row[0] == rec.version and row[1] == rec.created_at and self._version is not None:
                self._current.add(session_id)
            else:
                del self._records[session_id]
                rec = None
        if rec is None:
            self.misses += 1
        else:
            self.hits += 1
        return rec

    def put(self, rec: SessionRecord, seen: int | None) -> None:
        """Keep ``rec``, read after data_version ``seen`` was observed; current if nothing moved since."""
        if len(self._records) >= self._size and rec.id not in self._records:
            oldest = next(iter(self._records))
            del self._records[oldest]
            self._current.discard(oldest)
        self._records[rec.id] = rec
        if seen is not None and self.check() == seen:
            self._current.add(rec.id)
        else:
            self._current.discard(rec.id)

    def saved(self, session_id: str, answers: str, version: int, now: float, touch: bool) -> None:
        """This process saved the session: keep its new state (checked before use, like any entry)."""
        old = self._records.get(session_id)
        if old is not None:
            self._records[session_id] = SessionRecord(old.id, old.interview, answers, version, old.owner, old.created_at,
                                                      now, now if touch else old.accessed_at)
            self._current.discard(session_id)

    def drop(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._current.discard(session_id)

    def close(self) -> None:
        self._records.clear()
        self._current.clear()
        self._watch.close()
