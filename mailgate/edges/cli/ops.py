"""The operator's commands (Postfix's ``postsuper``, Celery's purge, Procrastinate's CLI): cancel,
purge and retry tasks, replay and delete e-mails, back up and restore the store, ``db status`` and
the one-screen ``status``.

Each takes ``--json``. Long ones draw a progress bar on stderr when it is a terminal (the
``db copy`` display); piped, they print only their result.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from mailgate.config import Config
from mailgate.core.runtime import Runtime
from mailgate.core.tasks import PURGEABLE
from mailgate.core.views import iso, task_dict
from mailgate.daemon.lifecycle import Daemon
from mailgate.edges.cli.dbcopy import Progress
from mailgate.edges.cli.output import emit, print_json, print_table
from mailgate.errors import MailgateError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class OpsUsageError(MailgateError):
    pass


def duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` in seconds (argparse type of ``--older-than``)."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h, 30d or 2w")
    return float(found.group(1)) * _UNITS[found.group(2)]


def progress_bar(stage: str, what: str) -> Callable[[int, int], None] | None:
    """A bar on stderr when it is a terminal; None (no display) when it is piped or a file."""
    if not sys.stderr.isatty():
        return None
    bar = Progress(sys.stderr)
    return lambda done, total: bar(stage, what, done, total)


@asynccontextmanager
async def _daemon(config: Config) -> AsyncIterator[Daemon]:
    async with Daemon(config, roles=(), one_shot=True, existing_store=True) as daemon:
        assert daemon.runtime is not None
        yield daemon


def _rt(daemon: Daemon) -> Runtime:
    assert daemon.runtime is not None
    return daemon.runtime


# -- parsers -------------------------------------------------------------------------------------------
def add_task_parsers(t: Any, common: argparse.ArgumentParser) -> None:
    """``tasks cancel`` and ``tasks purge`` (``retry --all-failed`` extends ``retry`` in main)."""
    p = t.add_parser("cancel", parents=[common], help="fail a queued or running task (error type Cancelled)",
                     description="A queued task is never run; a running one keeps running in its worker, but what it "
                                 "finishes with is refused and not saved. The session's pages are told it failed.")
    p.add_argument("id")
    p = t.add_parser("purge", parents=[common], help="delete tasks in one state, optionally only old ones")
    p.add_argument("--state", required=True, choices=PURGEABLE)
    p.add_argument("--older-than", type=duration, metavar="DURATION",
                   help="only those finished (queued: created) longer ago than this: 90s, 15m, 12h, 30d, 2w")


def add_email_parsers(e: Any, common: argparse.ArgumentParser) -> None:
    p = e.add_parser("replay", parents=[common], help="run incoming_email again on a stored e-mail (a new task)")
    p.add_argument("id")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to SECONDS for the task to finish")
    p = e.add_parser("delete", parents=[common], help="delete one stored e-mail")
    p.add_argument("id")


def add_db_parsers(db: Any, common: argparse.ArgumentParser) -> None:
    p = db.add_parser("backup", parents=[common], help="write a consistent copy of the live store to a new file")
    p.add_argument("path", type=os.path.abspath)
    p = db.add_parser("restore", parents=[common], help="replace the whole store with a backup")
    p.add_argument("path", type=os.path.abspath)
    p.add_argument("--yes", action="store_true", help="yes, replace everything in the store")
    db.add_parser("status", parents=[common], help="backend, location, schema, size and row counts")


def add_status_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("status", parents=[common], help="one screen: tasks by state and age, mailboxes, mail today, cron, store size")


# -- commands ------------------------------------------------------------------------------------------
async def cmd_task_ops(args: argparse.Namespace, config: Config) -> int:
    async with _daemon(config) as daemon:
        rt = _rt(daemon)
        if args.tasks_cmd == "cancel":
            rec = await rt.cancel_task(args.id)
            emit(args.json, task_dict(rec), text=f"task {rec.id} cancelled")
        elif args.tasks_cmd == "purge":
            before = rt.store_clock() - args.older_than if args.older_than is not None else None
            n = await rt.tasks.purge(args.state, before, progress_bar("purging", f"{args.state} tasks"))
            age = f" older than {_age(args.older_than)}" if args.older_than is not None else ""
            emit(args.json, {"state": args.state, "older_than_seconds": args.older_than, "deleted": n},
                 text=f"deleted {n} {args.state} task(s){age}")
        else:  # retry --all-failed
            ids = await rt.tasks.retry_failed(progress_bar("retrying", "failed tasks"))
            emit(args.json, {"queued": ids}, text=f"queued {len(ids)} failed task(s) again")
    return 0


async def cmd_email_ops(args: argparse.Namespace, config: Config) -> int:
    async with _daemon(config) as daemon:
        rt = _rt(daemon)
        if args.emails_cmd == "delete":
            await rt.emails.delete(args.id)
            emit(args.json, {"deleted": args.id}, text=f"deleted e-mail {args.id}")
            return 0
        task = await rt.replay_email(args.id)
        rec = await (rt.wait_task(task.id, args.wait) if args.wait else rt.get_task_record(task.id))
        emit(args.json, task_dict(rec), text=f"e-mail {args.id}: incoming_email queued as task {rec.id} ({rec.state})")
        if args.wait and not rec.done:
            print(f"mailgate: error: task {rec.id} still {rec.state} after {args.wait:g} s", file=sys.stderr)
            return 1
    return 0


async def cmd_db_ops(args: argparse.Namespace, config: Config) -> int:
    if args.db_cmd == "restore" and not args.yes:
        raise OpsUsageError(f"restore replaces everything in the store ({_where(config)}) with {args.path}; "
                            "run again with --yes (stop the daemon first, or its open pages see the old store vanish)")
    async with _daemon(config) as daemon:
        rt = _rt(daemon)
        if args.db_cmd == "backup":
            started = time.monotonic()
            size = await rt.backup(args.path, progress_bar("backing up", "pages"))
            emit(args.json, {"path": args.path, "bytes": size, "seconds": round(time.monotonic() - started, 3)},
                 text=f"backed up {_where(config)} to {args.path} ({_size(size)}) "
                      f"in {time.monotonic() - started:.1f} s")
        elif args.db_cmd == "restore":
            version = await rt.restore(args.path, progress_bar("restoring", "pages"))
            emit(args.json, {"path": args.path, "schema_version": version},
                 text=f"restored {_where(config)} from {args.path}; schema version {version}")
        else:
            version, latest = await rt.schema_status()
            ov = await rt.overview(rt.store_clock())
            data = {"backend": config.store.backend, "location": _where(config), "schema_version": version,
                    "latest_migration": latest, "size_bytes": ov.size_bytes, "sessions": ov.sessions,
                    "tasks": sum(n for n, _ in ov.tasks.values()), "mailboxes": ov.mailboxes, "emails": ov.emails}
            if args.json:
                print_json(data)
            else:
                text = {k: v for k, v in data.items() if k not in ("latest_migration", "size_bytes")}
                text["schema_version"] = f"{version} of {latest}" + ("" if version == latest else " (run: mailgate db migrate)")
                emit(False, {**text, "size": _size(ov.size_bytes)})
    return 0


async def cmd_status(args: argparse.Namespace, config: Config) -> int:
    async with _daemon(config) as daemon:
        rt, cron = _rt(daemon), daemon.cron
        assert cron is not None
        now = cron.now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        ov = await rt.overview(midnight.timestamp())
        version, latest = await rt.schema_status()
        boxes = await rt.list_mailboxes(limit=10)
        last = await rt.last_periods()
        store_now = rt.store_clock()
        tasks = {state: {"count": n, "oldest_age_seconds": round(store_now - oldest, 1) if oldest is not None else None}
                 for state, (n, oldest) in ov.tasks.items()}
        cron_rows = []
        for type_ in cron.types:
            nxt = cron.next_fire(type_, now)
            period, at = last.get(type_, (None, None))
            cron_rows.append({"type": type_, "last_run": iso(at), "next_run": nxt.isoformat() if nxt else None})
        data: dict[str, Any] = {
            "store": {"backend": config.store.backend, "location": _where(config), "schema_version": version,
                      "latest_migration": latest, "size_bytes": ov.size_bytes},
            "tasks": tasks,
            "sessions": ov.sessions,
            "mailboxes": {"count": ov.mailboxes, "latest": [{"address": v.address, "session": v.record.session_id,
                                                             "emails": v.record.emails} for v in boxes[-5:]]},
            "mail": {"today": ov.emails_since, "total": ov.emails, "since": midnight.isoformat()},
            "cron": cron_rows,
            "connections": await _connections(config),
        }
        if args.json:
            print_json(data)
            return 0
        print(f"store        {config.store.backend} {_where(config)}, {_size(ov.size_bytes)}, schema {version} of {latest}"
              + ("" if version == latest else " (run: mailgate db migrate)"))
        print("tasks        " + "   ".join(
            f"{state} {t['count']}" + (f" (oldest {_age(t['oldest_age_seconds'] or 0)})"
                                       if state in ("queued", "running") and t["count"] else "")
            for state, t in tasks.items()))
        print(f"sessions     {ov.sessions}")
        print(f"mailboxes    {ov.mailboxes}")
        print(f"mail         {ov.emails_since} today ({config.scheduler.timezone}), {ov.emails} stored")
        conns = data["connections"]
        print("connections  " + (", ".join(f"{k} {v:g}" for k, v in conns["gauges"].items()) or "-")
              + (f" ({conns['detail']})" if conns["detail"] else ""))
        print("cron")
        print_table([{"type": r["type"], "last_run": r["last_run"] or "never", "next_run": r["next_run"]} for r in cron_rows],
                    ["type", "last_run", "next_run"])
    return 0


async def _connections(config: Config) -> dict[str, Any]:
    """The running daemon's open connections, from its ``*_connections`` gauges on /metrics: only
    the daemon knows them. The detail says why there are none (no web role, not reachable)."""
    host, port = config.web.host, config.web.port
    if "web" not in config.daemon.roles or port == 0:
        return {"gauges": {}, "detail": "no [web] listener on a fixed port to ask"}
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    try:
        text = await asyncio.to_thread(_fetch, url)
    except (OSError, ValueError) as exc:
        return {"gauges": {}, "detail": f"the daemon did not answer at {url}: {exc}"}
    gauges = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith("_connections") and not line.startswith("#"):
            gauges[name.removeprefix("mailgate_")] = float(value)
    return {"gauges": gauges, "detail": "" if gauges else f"{url} shows no *_connections gauge"}


def _fetch(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the daemon is local: never a proxy
    with opener.open(url, timeout=2.0) as response:
        return str(response.read(1 << 20).decode("utf-8", "replace"))


def _where(config: Config) -> str:
    if config.store.backend == "sqlite":
        return config.store.path
    parts = urlsplit(config.store.dsn or "")
    return f"{parts.hostname or 'localhost'}{':' + str(parts.port) if parts.port else ''}{parts.path}"  # no user or password


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _age(seconds: float) -> str:
    """``3 d 4 h``, ``2 h``, ``5 min 3 s``, ``40 s``: the two largest units, a zero second one left out."""
    delta = dt.timedelta(seconds=int(seconds))
    if delta.days:
        big, small = f"{delta.days} d", f"{delta.seconds // 3600} h"
    elif seconds >= 3600:
        big, small = f"{int(seconds // 3600)} h", f"{int(seconds % 3600 // 60)} min"
    elif seconds >= 60:
        big, small = f"{int(seconds // 60)} min", f"{int(seconds % 60)} s"
    else:
        return f"{int(seconds)} s"
    return big if small.startswith("0 ") else f"{big} {small}"
