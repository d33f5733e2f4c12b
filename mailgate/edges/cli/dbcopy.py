"""``mailgate db copy --to DSN``: move the SQLite store into an empty PostgreSQL database, verified.

The copy itself is :mod:`mailgate.store.copy`, reached through the daemon layer; this module parses,
shows the progress on stderr and prints the verification table (or ``--json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from mailgate.config import Config
from mailgate.daemon.lifecycle import copy_store
from mailgate.edges.cli.output import emit, fail, print_json
from mailgate.errors import ConfigError, MailgateError

BAR = 30


def add_parser(db: Any, common: argparse.ArgumentParser) -> None:
    """Add ``db copy`` to the ``db`` subcommands."""
    p = db.add_parser("copy", parents=[common], help="copy the SQLite store into an empty PostgreSQL database",
                      description="Copy the configured SQLite store ([store] path) whole into an empty PostgreSQL "
                                  "database, then compare both table by table. Stop the daemon first.")
    p.add_argument("--to", metavar="DSN", help="target, e.g. postgresql://mailgate@db.example/mailgate "
                                               "(default: [store] dsn or MAILGATE_STORE_DSN)")
    p.add_argument("--verify-only", action="store_true",
                   help="copy nothing: compare the SQLite store with the target (counts and content hashes)")


class Progress:
    """Progress on stderr: a bar redrawn in place on a terminal, else one line per finished table."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.finished: set[tuple[str, str]] = set()

    def __call__(self, stage: str, table: str, done: int, total: int) -> None:
        if (stage, table) in self.finished:
            return
        label = {"copy": "copying", "verify": "verifying"}.get(stage, stage)
        end = done >= total
        if self.tty:
            filled = BAR if total == 0 else min(BAR, BAR * done // total)
            self.stream.write(f"\r{label:<9} {table:<13} [{'#' * filled:<{BAR}}] {done}/{total}"
                              + ("\n" if end else ""))
        elif end:
            self.stream.write(f"{label} {table}: {done} rows\n")
        if end:
            self.finished.add((stage, table))
        self.stream.flush()


async def cmd_db_copy(args: argparse.Namespace, config: Config) -> int:
    """Copy (or with --verify-only compare); exit 0 when every table matches, else 1."""
    dsn = args.to or config.store.dsn
    if not dsn:
        return fail(args.json, "say where to copy to: --to postgresql://USER@HOST/DATABASE (or set MAILGATE_STORE_DSN)")
    try:
        report = await copy_store(config, dsn, on_progress=Progress(sys.stderr), verify_only=args.verify_only)
    except ConfigError:
        raise
    except MailgateError as exc:
        return fail(args.json, str(exc))
    if args.json:
        print_json(report.to_dict())
    else:
        rows = [{"table": c.table, "source": c.source_rows, "target": c.target_rows,
                 "check": "ok" if c.ok else "MISMATCH", "next_id": c.next_id} for c in report.checks]
        emit(False, rows, columns=["table", "source", "target", "check", "next_id"])
    bad = ", ".join(c.table for c in report.checks if not c.ok)
    if bad:
        what = ("the copy was rolled back: the target holds no data" if not args.verify_only
                else "the target does not hold what the SQLite store holds")
        print(f"mailgate: error: MISMATCH in {bad}; {what}", file=sys.stderr)
        return 1
    if not args.json:
        if args.verify_only:
            print(f"{report.target} holds what {report.source} holds ({report.rows} rows)")
        else:
            print(f"copied {report.rows} rows ({report.bytes} bytes of raw messages) from {report.source} to "
                  f"{report.target} in {report.seconds:.1f} s; not copied: {', '.join(report.not_copied)} "
                  "(transient or rebuilt). Next: set [store] backend = \"postgres\" and dsn, then start the daemon.")
    return 0
