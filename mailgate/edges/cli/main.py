"""The admin CLI: thin commands over the core that print tables for people or ``--json`` for scripts.

A user error prints one line (``mailgate: error: ...``, or ``{"ok": false, "error": ...}`` on stdout
under ``--json``) and exits 1 (2 for a configuration or usage error); no traceback. ``--json`` goes
before or after the command. A reader that goes away (``mailgate tasks list | head``) ends the
command quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import importlib.metadata
import json
import os
import signal
import sys
import typing
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from mailgate.config import (
    Config,
    effective,
    find_config_path,
    load_config,
    load_config_with_errors,
    toml_value,
)
from mailgate.core import answers as codec
from mailgate.core.context import ANONYMOUS, User
from mailgate.core.interviews import load_interviews
from mailgate.core.mailboxes import POSTMASTER
from mailgate.core.runtime import Runtime
from mailgate.core.views import (
    email_dict,
    iso,
    queued_email_dicts,
    session_dict,
    task_dict,
    variables_dict,
)
from mailgate.daemon.lifecycle import (
    Daemon,
    check_config,
    check_roles,
    migrate_store,
    store_status,
    tune_gc,
)
from mailgate.daemon.logs import setup_logging
from mailgate.daemon.preflight import check_host
from mailgate.edges.cli.automations import add_parsers as add_automations_parsers
from mailgate.edges.cli.automations import cmd_automations
from mailgate.edges.cli.dbcopy import add_parser as add_db_copy_parser
from mailgate.edges.cli.dbcopy import cmd_db_copy
from mailgate.edges.cli.dbrekey import add_parser as add_db_rekey_parser
from mailgate.edges.cli.dbrekey import cmd_db_rekey
from mailgate.edges.cli.ops import (
    add_db_parsers,
    add_email_parsers,
    add_status_parser,
    add_task_parsers,
    cmd_db_ops,
    cmd_email_ops,
    cmd_status,
    cmd_task_ops,
    progress_bar,
)
from mailgate.edges.cli.output import emit, print_json, safe
from mailgate.edges.cli.send import add_parser as add_send_test_email_parser
from mailgate.edges.cli.send import cmd_send_test_email
from mailgate.errors import ConfigError, MailgateError

DEMO_MODULES = ("mailgate.demo.background", "mailgate.demo.email", "mailgate.demo.checkin", "mailgate.demo.cron",
                "mailgate.demo.automation")


class UsageError(MailgateError):
    pass


# -- plumbing ----------------------------------------------------------------------------------------
@asynccontextmanager
async def _runtime(config: Config) -> AsyncIterator[Runtime]:
    """The core as the daemon starts it, with no roles (for one-shot commands)."""
    async with Daemon(config, roles=(), one_shot=True, existing_store=True) as daemon:
        assert daemon.runtime is not None
        yield daemon.runtime


def _parse_args_kv(items: Sequence[str], option: str = "--arg") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {item!r} must look like name=value")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw  # not JSON: keep the text as given
    return out


def _user_from(args: argparse.Namespace) -> User:
    if getattr(args, "user", None):
        return User(id=args.user, email=args.user if "@" in args.user else None,
                    privileges=tuple(args.privilege or ()))
    return ANONYMOUS


# -- commands ----------------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    """The file, then what it names on this host (files, addresses, ports): every error at once."""
    path = args.path or find_config_path(args.config)
    config, errors = load_config_with_errors(path)
    for check in (lambda: check_config(config), lambda: load_interviews(config.interviews.modules, config.interviews.paths)):
        try:
            check()
        except MailgateError as exc:
            errors.append(str(exc))
    errors += check_host(config)
    if args.json:
        print_json({"ok": not errors, "path": path, "source": config.source, "errors": errors})
    elif errors:
        for error in errors:
            print(f"mailgate: config error: {error}", file=sys.stderr)
        print(f"{path or 'built-in defaults'}: {len(errors)} error(s)", file=sys.stderr)
    else:
        print(f"{path or 'built-in defaults'}: OK")
    return 2 if errors else 0


def cmd_config_show(args: argparse.Namespace, config: Config) -> int:
    """The effective configuration: every key, its value (secrets masked) and where it came from."""
    shown = effective(config)
    if args.json:
        print_json({"source": config.source,
                    "tables": {t: {k: {"value": v, "from": o} for k, (v, o) in keys.items()} for t, keys in shown.items()}})
        return 0
    print(f"# effective configuration: {config.source}, then MAILGATE_<TABLE>_<KEY> variables")
    for table, keys in shown.items():
        print(f"\n[{table}]")
        lines = [(f"{key} = {toml_value(value)}", origin) for key, (value, origin) in keys.items()]
        width = max(len(text) for text, _ in lines)
        for text, origin in lines:
            print(f"{text.ljust(width)}  # {origin}")
    return 0


async def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    roles = check_roles(args.roles.split(",")) if args.roles else None
    async with Daemon(config, roles=roles) as daemon:
        tune_gc(config.daemon.gc_threshold)
        return await daemon.run_until_stopped()


async def cmd_config(args: argparse.Namespace, config: Config) -> int:
    return cmd_config_show(args, config)


async def cmd_db(args: argparse.Namespace, config: Config) -> int:
    if args.db_cmd == "copy":
        return await cmd_db_copy(args, config)
    if args.db_cmd == "rekey":
        return await cmd_db_rekey(args, config)
    if args.db_cmd in ("backup", "restore", "status"):
        return await cmd_db_ops(args, config)
    return await cmd_db_migrate(args, config)


async def cmd_db_migrate(args: argparse.Namespace, config: Config) -> int:
    applied, version = await migrate_store(config, progress_bar("migrating", "schema"))
    if args.json:
        print_json({"applied": applied, "version": version})
    else:
        print(f"applied {len(applied)} migration(s); schema version {version}")
    return 0


async def cmd_sessions(args: argparse.Namespace, config: Config) -> int:
    async with _runtime(config) as rt:
        if args.sessions_cmd == "new":
            answers = json.loads(args.answers) if args.answers else {}
            if not isinstance(answers, dict):
                raise UsageError("--answers must be a JSON object")
            url_args = _parse_args_kv(args.url_arg, "--url-arg") if args.url_arg else None
            rec = await rt.create_session_with(args.interview, answers, owner=_user_from(args), url_args=url_args)
            data = session_dict(rec)
            emit(args.json, data, text=rec.id)
        elif args.sessions_cmd == "get":
            variables = variables_dict(await rt.get_session(args.id))
            if args.interview is not None and variables["interview"] != args.interview:
                raise UsageError(f"session {args.id} is not a session of interview {args.interview!r}")
            emit(args.json, variables)
        elif args.sessions_cmd == "set":
            if not args.var and not args.delete:
                raise UsageError("nothing to do: give --var NAME=VALUE or --delete NAME")
            version = await rt.set_session_variables(args.id, _parse_args_kv(args.var or (), "--var"),
                                                     interview=args.interview, delete=args.delete or (),
                                                     user=_user_from(args))
            emit(args.json, {"id": args.id, "version": version}, text=f"saved session {args.id} (version {version})")
        elif args.sessions_cmd == "list":
            recs = await rt.list_sessions(interview=args.interview, limit=args.limit)
            rows = [session_dict(r) for r in recs]
            emit(args.json, rows, columns=["id", "interview", "version", "modified", "accessed"])
        elif args.sessions_cmd == "show":
            data = session_dict(await rt.get_session(args.id), with_answers=True)
            data["tasks"] = [t.id for t in await rt.tasks.list(session_id=args.id, limit=1000)]
            data["automations"] = [{"id": a.id, "class": a.cls, "state": a.state}
                                   for a in await rt.automations.list_automations(session_id=args.id, limit=1000)]
            emit(args.json, data)
        elif args.sessions_cmd == "delete":
            if not await rt.delete_session(args.id):
                raise UsageError(f"no session {args.id!r}; list sessions with: mailgate sessions list")
            emit(args.json, {"deleted": args.id}, text=f"deleted session {args.id}")
        elif args.sessions_cmd == "run":
            result = await rt.run_action(args.id, args.action, _parse_args_kv(args.arg or ()), user=_user_from(args))
            data = result.to_dict()
            if args.json:
                print_json(data)
            else:
                if result.text is not None:
                    print(result.text)
                elif result.data is not None:
                    print_json(data["data"])
                else:
                    print(f"ended: {result.kind}{' ' + result.command if result.command else ''}; "
                          f"saved: {'yes' if result.saved else 'no'}; tasks started: {', '.join(result.tasks) or 'none'}")
    return 0


async def cmd_stash(args: argparse.Namespace, config: Config) -> int:
    async with _runtime(config) as rt:
        if args.stash_cmd == "put":
            tokens = await rt.stashes.stash(json.loads(args.data), args.expire)
            emit(args.json, tokens, text=f"stash_key={tokens['stash_key']} secret={tokens['secret']}")
            return 0
        refresh: bool | float = args.refresh_seconds if args.refresh_seconds is not None else args.refresh
        ok, found = await rt.stashes.lookup(args.stash_key, args.secret, delete=args.delete, refresh=refresh)
        if not ok:
            raise UsageError("no stashed data for this stash_key and secret (or it expired)")
        print_json(json.loads(codec.encode_value(found)))
    return 0


async def cmd_tasks(args: argparse.Namespace, config: Config) -> int:
    if args.tasks_cmd == "retry" and (args.all_failed == bool(args.id)):
        raise UsageError("say which: mailgate tasks retry ID, or mailgate tasks retry --all-failed")
    if args.tasks_cmd in ("cancel", "purge") or (args.tasks_cmd == "retry" and args.all_failed):
        return await cmd_task_ops(args, config)
    async with _runtime(config) as rt:
        if args.tasks_cmd == "list":
            recs = await rt.tasks.list(session_id=args.session, state=args.state, limit=args.limit)
            rows = [task_dict(r) for r in recs]
            emit(args.json, rows, columns=["id", "session", "action", "state", "attempts", "created", "finished"])
        elif args.tasks_cmd == "show":
            rec = await (rt.wait_task(args.id, args.wait) if args.wait else rt.get_task_record(args.id))
            data = task_dict(rec)
            emit(args.json, data)
            if args.wait and not rec.done:
                print(f"mailgate: error: task {args.id} still {rec.state} after {args.wait:g} s", file=sys.stderr)
                return 1
        elif args.tasks_cmd == "retry":
            rec = await rt.tasks.retry(args.id)
            emit(args.json, task_dict(rec), text=f"task {rec.id} queued again")
    return 0


async def cmd_mailboxes(args: argparse.Namespace, config: Config) -> int:
    async with _runtime(config) as rt:
        rows = []
        for view in await rt.list_mailboxes(session_id=args.session, limit=args.limit):
            box, session = view.record, view.session
            owner = json.loads(box.owner)
            rows.append({
                "address": view.address,
                "session": box.session_id,
                "interview": session.interview if session else None,
                "owner": owner.get("email") or owner.get("id"),
                "key": box.key or None,
                "index": box.index or None,
                "created": iso(box.created_at),
                "expires": iso(box.expires_at),
                "emails": box.emails,
                "last_received": iso(box.last_received),
            })
        emit(args.json, rows, columns=["address", "session", "interview", "owner", "created", "emails", "last_received"])
    return 0


async def cmd_emails(args: argparse.Namespace, config: Config) -> int:
    if args.emails_cmd in ("replay", "delete"):
        return await cmd_email_ops(args, config)
    async with _runtime(config) as rt:
        if args.emails_cmd == "list":
            local = None
            if args.mailbox:
                local = args.mailbox.partition("@")[0].lower()
            if args.postmaster:  # the operator mailbox ([mail] postmaster = "mailbox")
                local = POSTMASTER
            rows = [] if args.queued else [email_dict(r) for r in
                                           await rt.emails.list(session_id=args.session, local_part=local, limit=args.limit)]
            # then what was answered 250 but is not processed yet: envelope and size, no subject yet
            for entry in await rt.emails.queued(args.limit):
                rows.extend(row for row in queued_email_dicts(entry, rt.addresses.address)
                            if (args.session is None or row["session"] == args.session)
                            and (local is None or row["mailbox"].partition("@")[0] == local))
            emit(args.json, rows[: args.limit], columns=["id", "mailbox", "received", "from", "subject", "size", "state"])
        elif args.emails_cmd == "show":
            rec = await rt.emails.get(args.id)
            if args.raw:
                raw = await rt.emails.raw(rec)
                if args.json:
                    print_json({"id": rec.id, "raw_base64": base64.b64encode(raw).decode()})
                else:
                    sys.stdout.buffer.write(raw)
                    sys.stdout.flush()
            elif args.headers:
                headers = json.loads(rec.parsed).get("headers") or []
                if args.json:
                    print_json([{"name": n, "value": v} for n, v in headers])
                else:
                    for name, value in headers:
                        print(f"{safe(name)}: {safe(value)}")
            else:
                data = email_dict(rec, full=True, bodies=await rt.emails.stored_bodies(rec))
                emit(args.json, data)
    return 0


class _RunCounter:
    """``cron_daily: 1234 sessions`` redrawn in place on stderr (the total is not known ahead: the
    sessions are read a page at a time)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.n = 0

    def step(self) -> None:
        self.n += 1
        sys.stderr.write(f"\rrunning {self.what}: {self.n} sessions")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write(f"\rrunning {self.what}: {self.n} sessions, done\n")
        sys.stderr.flush()


async def cmd_cron(args: argparse.Namespace, config: Config) -> int:
    async with Daemon(config, roles=(), one_shot=True, existing_store=True) as daemon:
        assert daemon.runtime is not None and daemon.cron is not None
        rt, cron = daemon.runtime, daemon.cron
        if args.cron_cmd == "run":
            if args.type not in cron.types and not any(iv.has_action(args.type) for iv in rt.registry):
                raise UsageError(f"no interview defines {args.type!r} and it is not a scheduled type; "
                                 f"scheduled types: {', '.join(cron.types)}")

            counter = _RunCounter(args.type) if sys.stderr.isatty() else None  # a live count on a terminal

            def show(session_id: str, result: Any) -> None:
                if counter is not None:
                    counter.step()
                if not args.json and result.text is not None:
                    print(f"{session_id}: {result.text}", flush=True)

            report = await cron.run(args.type, on_result=show)
            if counter is not None:
                counter.done()
            if args.json:
                print_json(report.to_dict())
            else:
                print(f"{args.type}: {report.sessions} sessions, {report.saved} saved, {report.exited} exited, "
                      f"{report.errors} errors" + (f", {report.deleted_inactive} inactive deleted" if args.type == "cron_daily" else "")
                      + f" in {report.seconds:.2f} s")
            return 1 if report.errors else 0
        last = await rt.last_periods()
        now = cron.now()
        rows = []
        for type_, expr in cron.types.items():
            nxt = cron.next_fire(type_, now)
            period, at = last.get(type_, (None, None))
            rows.append({"type": type_, "schedule": expr, "timezone": config.scheduler.timezone,
                         "last_period": period, "last_run": iso(at), "next_run": nxt.isoformat() if nxt else None})
        emit(args.json, rows, columns=["type", "schedule", "last_period", "last_run", "next_run"])
    return 0


async def cmd_healthcheck(args: argparse.Namespace, config: Config) -> int:
    checks: list[dict[str, Any]] = [{"check": "config", "ok": True, "detail": config.source}]
    if config.store.backend == "sqlite" and not os.path.exists(config.store.path):  # noqa: ASYNC240 - one stat in a CLI probe
        # a probe must not leave an empty database behind where the daemon's should be
        checks.append({"check": "store", "ok": False, "detail": f"no SQLite store at {config.store.path}; "
                       "check [store] path, or start the daemon (it creates and migrates the store)"})
    else:
        checks.append(await _check_store(config))
    roles = config.daemon.roles
    if "smtp" in roles:
        checks.append(await _check_smtp(config))
    if "web" in roles:
        web_check, health = await _check_web(config)
        checks.append(web_check)
        orphaned = health.get("orphaned_automations")
        if isinstance(orphaned, int) and orphaned > 0:  # the daemon's runner found them: it never runs them
            checks.append({"check": "automations", "ok": False, "detail": (
                f"{orphaned} orphaned (class or open node gone): not run until restored, or moved with "
                "mailgate automations goto ID NODE; mailgate automations list --state running names them")})
    ok = all(c["ok"] for c in checks)
    if args.json:
        print_json({"ok": ok, "checks": checks})
    else:
        for c in checks:
            print(f"{c['check']}: {'ok' if c['ok'] else 'FAILED'} ({c['detail']})")
    return 0 if ok else 1


async def _check_store(config: Config) -> dict[str, Any]:
    try:
        version, latest = await store_status(config)
        return {"check": "store", "ok": version == latest, "detail": f"{config.store.backend}, schema {version} of {latest}"
                + ("" if version == latest else "; run: mailgate db migrate")}
    except MailgateError as exc:
        return {"check": "store", "ok": False, "detail": str(exc)}


def _local(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def _check_smtp(config: Config) -> dict[str, Any]:
    host, port = _local(config.smtp.host), config.smtp.port
    if port == 0:
        return {"check": "smtp", "ok": True, "detail": "port 0 (picked at start): not checked"}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        try:
            banner = (await asyncio.wait_for(reader.readline(), 5)).decode("ascii", "replace").strip()
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()
    except (OSError, TimeoutError) as exc:
        return {"check": "smtp", "ok": False, "detail": f"{host}:{port}: {exc or 'timed out'}"}
    return {"check": "smtp", "ok": banner.startswith("220 "), "detail": f"{host}:{port} answered {banner[:60]!r}"}


async def _check_web(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The web check, and what ``/healthz`` answered (its JSON object; empty if none)."""
    host, port = _local(config.web.host), config.web.port
    if port == 0:
        return {"check": "web", "ok": True, "detail": "port 0 (picked at start): not checked"}, {}
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
    # the standard library's client in a thread: one request does not need aiohttp, which belongs to the web edge
    try:
        status, body = await asyncio.to_thread(_http_get, url, 5.0)
    except (OSError, http.client.HTTPException) as exc:
        return {"check": "web", "ok": False, "detail": f"{url}: {exc or 'timed out'}"}, {}
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    return ({"check": "web", "ok": status == 200, "detail": f"{url} answered {status}"},
            health if isinstance(health, dict) else {})


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the daemon is local: never a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read(65536)
    except urllib.error.HTTPError as exc:  # 503 when the schema is behind: an answer, not a failure to connect
        return int(exc.code), exc.read(65536)


async def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    demo = config.replace(
        interviews={"modules": (*config.interviews.modules, *DEMO_MODULES)},
        store={"path": args.store} if args.store else {},
        web={"demo_pages": True},
    )
    async with Daemon(demo) as daemon:
        tune_gc(demo.daemon.gc_threshold)
        assert daemon.runtime is not None
        names = ", ".join(daemon.runtime.registry.names())
        print(f"mailgate demo: store {demo.store.path}; interviews: {names}", flush=True)
        if daemon.web is not None:
            print(f"open http://{demo.web.host}:{daemon.web.port}/demo/ in a browser", flush=True)
        if daemon.smtp is not None:
            print(f"mail for the demo sessions goes to SMTP {demo.smtp.host}:{daemon.smtp.port}", flush=True)
        return await daemon.run_until_stopped()


# -- parser ------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as JSON on stdout when the command line asks for ``--json``."""

    json_errors = False

    def error(self, message: str) -> typing.NoReturn:
        if self.json_errors:
            print_json({"ok": False, "error": f"{self.prog}: {message}"})
            self.exit(2)
        super().error(message)


def version() -> str:
    try:
        return importlib.metadata.version("mailgate")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown (not installed)"


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    parser_class = type("Parser", (_Parser,), {"json_errors": json_errors})
    # the options every command takes, after it; SUPPRESS keeps the same option given before it
    common = parser_class(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of a table")
    common.add_argument("--config", default=argparse.SUPPRESS, help="config file (default: $MAILGATE_CONFIG or ./mailgate.toml)")

    parser = parser_class(prog="mailgate", description="Inbound-mail and notification gateway daemon.")
    parser.add_argument("--version", action="version", version=f"mailgate {version()}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (here or after the command)")
    parser.add_argument("--config", help="config file (default: $MAILGATE_CONFIG or ./mailgate.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the daemon")
    p.add_argument("--roles", help="comma-separated subset of smtp,web,worker,scheduler")
    p = sub.add_parser("demo", parents=[common], help="run the daemon with the demo interviews")
    p.add_argument("--store", help="SQLite file for the demo (default: the configured one)")
    p = sub.add_parser("check-config", parents=[common], help="validate a config file")
    p.add_argument("path", nargs="?", help="file to check (default: the one in use)")
    cfg = sub.add_parser("config", help="the configuration in use", parents=[common]).add_subparsers(dest="config_cmd", required=True, metavar="COMMAND")
    cfg.add_parser("show", parents=[common], help="every key's effective value (secrets masked) and where it came from")
    db = sub.add_parser("db", help="database maintenance", parents=[common]).add_subparsers(dest="db_cmd", required=True, metavar="COMMAND")
    db.add_parser("migrate", parents=[common], help="apply pending migrations")
    add_db_copy_parser(db, common)
    add_db_rekey_parser(db, common)
    add_db_parsers(db, common)

    s = sub.add_parser("sessions", help="list, create, inspect, delete sessions; run actions", parents=[common]).add_subparsers(
        dest="sessions_cmd", required=True, metavar="COMMAND")
    p = s.add_parser("new", parents=[common], help="create a session")
    p.add_argument("interview")
    p.add_argument("--answers", help="initial answers as a JSON object")
    p.add_argument("--user", help="owner user id (an e-mail address is also used as the e-mail)")
    p.add_argument("--privilege", action="append", help="owner privilege (repeatable)")
    p.add_argument("--url-arg", action="append", metavar="NAME=VALUE",
                   help="a parameter of the URL that started it, in its url_args; VALUE is JSON or text (repeatable)")
    p = s.add_parser("get", parents=[common], help="a session's variables as last saved (get_session_variables)")
    p.add_argument("id")
    p.add_argument("--interview", help="fail unless the session is one of this interview")
    p = s.add_parser("set", parents=[common],
                     help="set and delete variables under the session lease, saved at once (set_session_variables)")
    p.add_argument("id")
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="a variable; VALUE is JSON or text (repeatable)")
    p.add_argument("--delete", action="append", metavar="NAME", help="a variable to remove (repeatable)")
    p.add_argument("--interview", help="fail unless the session is one of this interview")
    p.add_argument("--user", help="save as this user id")
    p.add_argument("--privilege", action="append", help="privilege of --user (repeatable)")
    p = s.add_parser("list", parents=[common], help="list sessions")
    p.add_argument("--interview")
    p.add_argument("--limit", type=int, default=100)
    p = s.add_parser("show", parents=[common], help="show a session and its answers")
    p.add_argument("id")
    p = s.add_parser("delete", parents=[common], help="delete a session and everything it owns")
    p.add_argument("id")
    p = s.add_parser("run", parents=[common], help="run a foreground action on a session")
    p.add_argument("id")
    p.add_argument("action")
    p.add_argument("--arg", action="append", metavar="NAME=VALUE", help="action argument; VALUE is JSON or text (repeatable)")
    p.add_argument("--user", help="run as this user id")
    p.add_argument("--privilege", action="append", help="privilege of --user (repeatable)")

    st = sub.add_parser("stash", help="stash data for a prospective session, and retrieve it (stash_data)",
                        parents=[common]).add_subparsers(dest="stash_cmd", required=True, metavar="COMMAND")
    p = st.add_parser("put", parents=[common], help="stash JSON data; prints the stash_key and the secret")
    p.add_argument("data", help="the data, as JSON")
    p.add_argument("--expire", type=float, help="seconds until it expires (default 90 days)")
    p = st.add_parser("get", parents=[common], help="print stashed data as JSON (retrieve_stashed_data)")
    p.add_argument("stash_key", help="as stash put printed it (one made before mailgate stopped making keys that "
                                     "begin with '-' goes after '--': stash get [OPTIONS] -- KEY SECRET)")
    p.add_argument("secret")
    p.add_argument("--delete", action="store_true", help="remove it once read")
    p.add_argument("--refresh", action="store_true", help="renew its expiry by the seconds it was stashed for")
    p.add_argument("--refresh-seconds", type=float, metavar="SECONDS", help="make it expire SECONDS from now")
    t = sub.add_parser("tasks", help="list, inspect and retry background tasks", parents=[common]).add_subparsers(
        dest="tasks_cmd", required=True, metavar="COMMAND")
    p = t.add_parser("list", parents=[common], help="list tasks, newest first")
    p.add_argument("--session")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed"])
    p.add_argument("--limit", type=int, default=100)
    p = t.add_parser("show", parents=[common], help="show a task with its result or error")
    p.add_argument("id")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to SECONDS for it to finish")
    p = t.add_parser("retry", parents=[common], help="queue a failed task again (or every failed one but the cancelled: --all-failed)")
    p.add_argument("id", nargs="?")
    p.add_argument("--all-failed", action="store_true", help="every task failed now, except those cancelled")
    add_task_parsers(t, common)

    m = sub.add_parser("mailboxes", help="per-session e-mail addresses", parents=[common]).add_subparsers(
        dest="mailboxes_cmd", required=True, metavar="COMMAND")
    p = m.add_parser("list", parents=[common], help="list mailboxes with their e-mail counts")
    p.add_argument("--session")
    p.add_argument("--limit", type=int, default=100)

    e = sub.add_parser("emails", help="received e-mails", parents=[common]).add_subparsers(dest="emails_cmd", required=True, metavar="COMMAND")
    p = e.add_parser("list", parents=[common], help="list e-mails, oldest first, then those queued (accepted, not processed yet)")
    p.add_argument("--mailbox", help="address or local part")
    p.add_argument("--postmaster", action="store_true",
                   help="only the operator mailbox: mail to postmaster@ each domain and to <postmaster>")
    p.add_argument("--queued", action="store_true", help="only the queued messages (state queued or processing)")
    p.add_argument("--session")
    p.add_argument("--limit", type=int, default=100)
    p = e.add_parser("show", parents=[common], help="show one e-mail (parsed, --raw bytes, or --headers)")
    p.add_argument("id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--raw", action="store_true", help="the message exactly as received (base64 with --json)")
    group.add_argument("--headers", action="store_true", help="only the header fields")
    add_email_parsers(e, common)

    c = sub.add_parser("cron", help="scheduled tasks", parents=[common]).add_subparsers(dest="cron_cmd", required=True, metavar="COMMAND")
    p = c.add_parser("run", parents=[common], help="run a scheduled type (or any event name) now on every cron-enabled session")
    p.add_argument("type", help="cron_hourly, cron_daily, cron_weekly, cron_monthly, or another event name")
    c.add_parser("status", parents=[common], help="the schedule with the last and next run of each type")
    add_send_test_email_parser(sub, common)
    sub.add_parser("healthcheck", parents=[common], help="config, store, SMTP and web: one line each; exit 1 if any fails")
    add_status_parser(sub, common)
    add_automations_parsers(sub, common)
    return parser


ASYNC_COMMANDS: dict[str, Callable[[argparse.Namespace, Config], Any]] = {
    "serve": cmd_serve,
    "demo": cmd_demo,
    "config": cmd_config,
    "db": cmd_db,
    "sessions": cmd_sessions,
    "stash": cmd_stash,
    "tasks": cmd_tasks,
    "mailboxes": cmd_mailboxes,
    "emails": cmd_emails,
    "cron": cmd_cron,
    "healthcheck": cmd_healthcheck,
    "send-test-email": cmd_send_test_email,
    "status": cmd_status,
    "automations": lambda args, config: cmd_automations(args, config, _runtime),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        try:
            status = _run(argv, as_json)
        except SystemExit as exc:  # argparse's --help, --version and usage errors
            status = exc.code if isinstance(exc.code, int) else 2
        sys.stdout.flush()  # inside the try: a reader that went away shows here
        return status
    except BrokenPipeError:
        # the reader (head, less, grep -q) has what it wanted; Python would print a traceback, then
        # complain again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what the shell reports for a command that SIGPIPE ended


def _run(argv: list[str], as_json: bool) -> int:
    args = build_parser(json_errors=as_json).parse_args(argv)
    try:
        if args.command == "check-config":
            return cmd_check_config(args)
        config = load_config(find_config_path(args.config))
        quiet = args.command not in ("serve", "demo")
        setup_logging("warning" if quiet else config.daemon.log_level, config.daemon.log_format)
        return int(asyncio.run(ASYNC_COMMANDS[args.command](args, config)))
    except ConfigError as exc:
        return _error(as_json, "config error", exc.errors, 2)
    except MailgateError as exc:
        return _error(as_json, "error", [str(exc)], 1)
    except json.JSONDecodeError as exc:
        return _error(as_json, "error", [f"invalid JSON: {exc}"], 1)
    except KeyboardInterrupt:
        return 130


def _error(as_json: bool, kind: str, errors: list[str], status: int) -> int:
    """A failed command: one line per error on stderr, or one JSON object on stdout under --json."""
    if as_json:
        print_json({"ok": False, "error": "; ".join(errors), "errors": errors, "kind": kind.split()[0]})
    else:
        for error in errors:
            print(f"mailgate: {kind}: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
