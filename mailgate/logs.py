"""Logging set-up: one line per event; no timestamp of our own under journald (it adds one)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once for the CLI and the daemon."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement at debug level; keep our debug output readable.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    # aiosmtpd logs every connection at info level; mailgate logs one line per message instead.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
