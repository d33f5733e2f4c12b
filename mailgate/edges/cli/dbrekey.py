"""``mailgate db rekey``: re-seal every row of the store under ``[store] encryption_key``.

The work is :mod:`mailgate.store.rekey`, reached through the daemon layer; this module parses, draws
the progress on a terminal and prints a table per store table (or ``--json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailgate.config import Config
from mailgate.daemon.lifecycle import rekey_store
from mailgate.edges.cli.dbcopy import Progress
from mailgate.edges.cli.output import emit, fail, print_json
from mailgate.errors import ConfigError, MailgateError


def add_parser(db: Any, common: argparse.ArgumentParser) -> None:
    """Add ``db rekey`` to the ``db`` subcommands."""
    p = db.add_parser("rekey", parents=[common], help="re-seal every row under [store] encryption_key (encryption at rest)",
                  description="Seal every clear row (written before encryption was switched on) and re-seal every row "
                              "sealed under an old_encryption_keys key with the current encryption_key. Safe while "
                              "daemons run (with the new key configured); idempotent and resumable: run it until it "
                              "reports 0 re-sealed, then remove the old key.")
    p.add_argument("--vacuum", action="store_true",
                   help="then rewrite the store without the space it freed, where old values linger (SQLite VACUUM, "
                        "PostgreSQL VACUUM FULL: they lock the store or each table while they run; best with the "
                        "daemon stopped)")


async def cmd_db_rekey(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 once every row is under the current key, 3 when rows were busy (run it again), 1 on error."""
    try:
        report = await rekey_store(config, on_progress=Progress(sys.stderr) if sys.stderr.isatty() else None,
                                   vacuum=args.vacuum)
    except ConfigError:
        raise
    except MailgateError as exc:
        return fail(args.json, str(exc))
    if args.json:
        print_json(report.to_dict())
    else:
        emit(False, [t.to_dict() for t in report.tables], columns=["table", "rows", "resealed", "busy"])
        print(f"re-sealed {report.resealed} rows under key {report.key_id} in {report.seconds:.1f} s"
              + (f"; {report.busy} queued messages were being processed: run it again" if report.busy else
                 "; every row is under the current key" if report.resealed == 0 else
                 "; run it again to confirm (0 re-sealed), then remove the old key"))
    return 3 if report.busy else 0
