"""Durable state behind one interface; see :mod:`mailgate.store.base`."""

from __future__ import annotations

import time
from collections.abc import Callable

from mailgate.config import StoreConfig
from mailgate.errors import ConfigError
from mailgate.store.base import Store
from mailgate.store.sealed import SealedStore, check_keys
from mailgate.store.sealing import keyring_from


def open_store(config: StoreConfig, *, clock: Callable[[], float] = time.time) -> Store:
    """A store for ``config`` (not yet opened); with ``encryption_key`` set, one that seals answers and
    mail at rest (:mod:`mailgate.store.sealed`)."""
    keyring = keyring_from(config)
    store = _backend(config, clock)
    return store if keyring is None else SealedStore(store, keyring)


def _backend(config: StoreConfig, clock: Callable[[], float]) -> Store:
    if config.backend == "sqlite":
        from mailgate.store.sqlite.backend import SqliteStore

        return SqliteStore(config.path, busy_timeout=config.busy_timeout, clock=clock, max_pages=config.max_pages)
    if config.backend == "postgres":
        try:
            from mailgate.store.postgres.backend import PgStore
        except ImportError as exc:
            raise ConfigError(f"[store] backend = \"postgres\" needs the PostgreSQL driver ({exc}); "
                              "install it with: pip install 'mailgate[postgres]'") from exc
        # the database's clock, unless a test's clock replaces it (as it replaces SQLite's)
        return PgStore(config.dsn, pool_size=config.pool_size, connect_timeout=config.connect_timeout,
                       clock=None if clock is time.time else clock)
    raise ConfigError(f"[store] backend {config.backend!r} is unknown; use \"sqlite\" or \"postgres\"")


__all__ = ["Store", "check_keys", "open_store"]
