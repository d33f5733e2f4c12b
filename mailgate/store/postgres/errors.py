"""The PostgreSQL backend's one translation of driver errors, and the one-line outage log."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import asyncpg

from mailgate.errors import (
    AutomationFenced,
    LeaseLost,
    MailgateError,
    NotFound,
    StoreConflict,
    StoreError,
    StoreFull,
    StoreUnavailable,
    VersionConflict,
)

log = logging.getLogger("mailgate.store.postgres")

# SQLSTATEs raised by mailgate's own functions (migrations/0002_functions.sql)
_DOMAIN: dict[str, type[MailgateError]] = {"MG001": VersionConflict, "MG002": LeaseLost, "MG003": NotFound,
                                           "MG004": AutomationFenced, "MG005": MailgateError}


def where(dsn: str) -> str:
    """The server and database of ``dsn``, without any password: for messages."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        return f"PostgreSQL at {host}:{port}{parts.path or '/'}"
    except ValueError:
        return "PostgreSQL ([store] dsn)"


def domain_error(exc: asyncpg.PostgresError | None, sqlstate: str | None = None,
                 message: str | None = None) -> MailgateError | None:
    """The domain error a function raised (version conflict, lease lost, not found), else None."""
    code = sqlstate if exc is None else getattr(exc, "sqlstate", None)
    kind = _DOMAIN.get(code or "")
    if kind is None:
        return None
    return kind(message if exc is None else getattr(exc, "message", str(exc)))


# What the driver raises, besides server errors (PostgresError), when the connection or the network fails
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ConnectionError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` means the server cannot be reached (down, restarting, network), not that one
    statement failed."""
    code = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, asyncpg.PostgresError):
        return code.startswith(("08", "57P"))
    return isinstance(exc, DRIVER_ERRORS)


def store_error(exc: BaseException, dsn: str) -> StoreError:
    """The StoreError for a driver, network or server error; the message says what to do next."""
    at = where(dsn)
    detail = str(exc) or type(exc).__name__
    code = getattr(exc, "sqlstate", None) or ""
    if code in ("53100", "53200", "53400"):  # disk full, out of memory, configuration limit
        return StoreFull(f"{at} cannot store more ({detail}); free space on its disk, then mailgate retries "
                         "(nothing was written)")
    if code.startswith("23"):
        return StoreConflict(f"{at} refused a write ({detail}); nothing was saved")
    if code in ("40001", "40P01", "55P03"):
        return StoreUnavailable(f"{at}: a transaction collided with another ({detail}); try again")
    if code == "57014":
        return StoreUnavailable(f"{at} took too long to answer (a statement was cancelled: {detail}); try again")
    if code in ("28P01", "28000") or isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return StoreUnavailable(f"{at} refused the login ({detail}); check the user and password in [store] dsn")
    if code == "3D000":
        return StoreUnavailable(f"{at}: the database does not exist ({detail}); create it (createdb) or fix [store] dsn")
    if isinstance(exc, asyncpg.PostgresError) and not code.startswith(("08", "57")):
        return StoreUnavailable(f"{at} failed a statement ({detail}); if it goes on, run: mailgate db status")
    if isinstance(exc, TimeoutError):
        return StoreUnavailable(f"{at} did not answer in time; check that it runs and that this host reaches it")
    return StoreUnavailable(f"{at} is unreachable ({detail}); check that it runs and that this host reaches it")


class Outage:
    """Logs once when the database stops answering and once when it answers again.

    Calls overlap: one sent before the outage began may still succeed after another has failed, and
    one sent during the outage may fail after another has succeeded again. Only a call *started*
    after the last change (``started``: its ``time.monotonic()``) changes the state, so that one
    outage is one pair of lines.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.down = False
        self.changed = float("-inf")  # monotonic time of the last change

    def failed(self, exc: BaseException, error: StoreError, started: float, *, lost: bool = False) -> StoreError:
        """Note a call started at ``started`` that failed with ``exc`` (translated to ``error``;
        ``lost``: it found no connection); returns ``error``."""
        if (lost or lost_connection(exc)) and not self.down and started >= self.changed:
            self.down = True
            self.changed = time.monotonic()
            log.error("%s; mailgate keeps trying and resumes by itself", error, extra={"event": "store.unavailable"})
        return error

    def ok(self, started: float) -> None:
        if self.down and started >= self.changed:
            self.down = False
            self.changed = time.monotonic()
            log.warning("%s answers again", where(self.dsn), extra={"event": "store.available"})
