"""``mailgate automations ...``: operate automations (AUTOMATIONS.md §4.4) through the core's
:class:`~mailgate.core.automation_admin.AutomationAdmin`.

Every command takes ``--json``; ``start`` prints the automation (at least ``id``), ``show`` at least
``id``, ``class``, ``state``, ``data`` and ``steps``. A refused form submit exits 1 naming why (for
invalid values, each field's message).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from mailgate.automations.errors import FormInvalid
from mailgate.config import Config
from mailgate.core.automation_views import automation_dict, message_dict
from mailgate.core.context import ANONYMOUS, User
from mailgate.core.runtime import Runtime
from mailgate.edges.cli.output import emit, print_json, print_record, safe
from mailgate.errors import MailgateError

RuntimeFactory = Callable[[Config], AbstractAsyncContextManager[Runtime]]


class CliError(MailgateError):
    pass


def _json_arg(text: str | None, option: str, *, obj: bool = False) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{option} is not valid JSON: {exc}") from None
    if obj and not isinstance(value, dict):
        raise CliError(f"{option} must be a JSON object, e.g. '{{\"email\": \"a@example.org\"}}'")
    return value


def _user(args: argparse.Namespace) -> User:
    uid = getattr(args, "user", None)
    if not uid:
        return ANONYMOUS
    return User(id=uid, email=uid if "@" in uid else None, privileges=tuple(getattr(args, "privilege", None) or ()))


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser("automations", help="durable workflows: start, inspect, message, submit forms, repair",
                       parents=[common]).add_subparsers(dest="automations_cmd", required=True, metavar="COMMAND")
    a.add_parser("classes", parents=[common], help="the loaded automation classes (name, verbose name, published receivers)")
    p = a.add_parser("start", parents=[common], help="start an automation (unique classes: the running one is returned)")
    p.add_argument("cls", metavar="CLASS", help="dotted path, Meta.name or unambiguous class name")
    p.add_argument("--session", help="bind it to this session (default: free-standing)")
    p.add_argument("--data", help="its data, a JSON object")
    p.add_argument("--user", help="start it as this user id")
    p.add_argument("--privilege", action="append", help="a privilege of --user (repeatable)")
    p = a.add_parser("list", parents=[common], help="list automations in creation order")
    p.add_argument("--class", dest="cls", help="only this class")
    p.add_argument("--state", choices=("running", "finished", "failed", "killed"))
    p.add_argument("--session", help="only those bound to this session")
    p.add_argument("--limit", type=int, default=100)
    p = a.add_parser("show", parents=[common], help="an automation: data, history tree (Split/Join, attempts, wake_at), messages")
    p.add_argument("id")
    p = a.add_parser("traceback", parents=[common], help="the traceback of a failed step")
    p.add_argument("id")
    p.add_argument("step")
    a.add_parser("errors", parents=[common], help="failed automations with their failed steps")
    p = a.add_parser("send", parents=[common], help="send a message to an automation (its receive_MESSAGE)")
    p.add_argument("id")
    p.add_argument("message")
    p.add_argument("--token")
    p.add_argument("--data", help="JSON")
    p.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the receiver's result")
    p.add_argument("--user")
    p = a.add_parser("broadcast", parents=[common], help="send a message to every running automation of a class")
    p.add_argument("cls", metavar="CLASS")
    p.add_argument("message")
    p.add_argument("--token")
    p.add_argument("--data", help="JSON")
    p.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for its end and print the results")
    p.add_argument("--user")
    p = a.add_parser("tasks", parents=[common], help="the open forms a user may submit")
    p.add_argument("--user", required=True)
    p.add_argument("--privilege", action="append", help="a privilege of the user (repeatable)")
    p.add_argument("--limit", type=int, default=100)
    p = a.add_parser("submit", parents=[common], help="submit a form step's values as a user")
    p.add_argument("step")
    p.add_argument("--user", required=True)
    p.add_argument("--privilege", action="append", help="a privilege of the user (repeatable)")
    p.add_argument("--values", required=True, help="the form's values, a JSON object")
    p = a.add_parser("retry", parents=[common], help="run a failed automation's failed steps again")
    p.add_argument("id")
    p = a.add_parser("kill", parents=[common], help="delete an automation with its history")
    p.add_argument("id")
    p = a.add_parser("goto", parents=[common], help="close the open steps and continue at NODE")
    p.add_argument("id")
    p.add_argument("node")
    p = a.add_parser("step", parents=[common], help="run what is due now and exit (the seed's automation_step); "
                     "--loop: keep running automations as they become due until SIGTERM/SIGINT")
    p.add_argument("--loop", action="store_true")
    p = a.add_parser("delete-history", parents=[common], help="delete automations that ended more than DAYS ago")
    p.add_argument("days", type=float, nargs="?", metavar="DAYS", help="default: [automations] history_days")


async def cmd_automations(args: argparse.Namespace, config: Config, runtime: RuntimeFactory) -> int:
    async with runtime(config) as rt:
        return await _dispatch(args, rt)


async def _dispatch(args: argparse.Namespace, rt: Runtime) -> int:  # noqa: C901 - one branch per command
    admin = rt.automations
    cmd = args.automations_cmd
    if cmd == "classes":
        rows = [{**c, "receivers": ", ".join(c["receivers"])} if not args.json else c for c in admin.describe()]
        emit(args.json, rows, columns=["name", "verbose_name", "receivers"])
    elif cmd == "start":
        if args.session and not await rt.session_exists(args.session):
            raise CliError(f"no session {args.session!r}; list sessions with: mailgate sessions list")
        rec, created = await admin.start(args.cls, session_id=args.session, data=_json_arg(args.data, "--data", obj=True),
                                         user=_user(args))
        out = {**automation_dict(rec), "created": created}
        emit(args.json, out, text=rec.id if created else f"{rec.id} (already running: {rec.cls} is unique)")
    elif cmd == "list":
        rows = await admin.list_dicts(cls=args.cls, state=args.state, session_id=args.session, limit=args.limit)
        if not args.json:
            for row in rows:
                row["state"] = "orphaned" if row["orphaned"] else row["state"]
        emit(args.json, rows, columns=["id", "class", "state", "session", "wake_at", "updated"])
    elif cmd == "show":
        shown = await admin.show(args.id)
        if args.json:
            print_json(shown)
        else:
            _print_show(shown)
    elif cmd == "traceback":
        trace = await admin.traceback(args.id, args.step)
        emit(args.json, {"id": args.id, "step": args.step, "traceback": trace}, text=trace.rstrip("\n"))
    elif cmd == "errors":
        rows = await admin.errors()
        if args.json:
            print_json(rows)
        else:
            flat = [{"id": r["id"], "class": r["class"], "step": s["id"], "node": s["node"],
                     "error": f"{s['error_type']}: {s['error_message']}"} for r in rows for s in r["steps"]]
            emit(False, flat, columns=["id", "class", "step", "node", "error"])
    elif cmd == "send":
        if args.wait is not None and args.wait < 0:
            raise CliError("--wait must be 0 or more seconds")
        msg = await admin.send(args.id, args.message, token=args.token, data=_json_arg(args.data, "--data"),
                               user=_user(args), wait=args.wait)
        out = message_dict(msg)
        if args.json:
            print_json(out)
        elif msg.state == "queued":
            print(f"queued message {msg.id}" + (f" (not delivered within {args.wait:g} s)" if args.wait else ""))
        else:
            print(f"{msg.state}: {json.dumps(out['result'], default=str)}")
        if args.wait and msg.state == "queued":
            return 1
    elif cmd == "broadcast":
        msg = await admin.broadcast(args.cls, args.message, token=args.token, data=_json_arg(args.data, "--data"),
                                    user=_user(args))
        if args.wait is not None and args.wait < 0:
            raise CliError("--wait must be 0 or more seconds")
        out = message_dict(msg)
        if not args.wait:
            emit(args.json, out, text=f"queued broadcast {msg.id}")
            return 0
        out["state"], out["results"] = await admin.broadcast_results(msg.id, args.wait)
        if args.json:
            print_json(out)
        elif out["state"] == "queued":
            print(f"queued broadcast {msg.id} (not ended within {args.wait:g} s)")
        else:
            print(f"{out['state']}: {json.dumps(out['results'], default=str)}")
        if out["state"] == "queued":
            return 1
    elif cmd == "tasks":
        rows = await admin.tasks_for(_user(args), limit=args.limit)
        emit(args.json, rows, columns=["step", "node", "automation", "class", "session", "created"])
    elif cmd == "submit":
        values = _json_arg(args.values, "--values", obj=True)
        try:
            done = await admin.submit(args.step, _user(args), values)
        except FormInvalid as exc:
            if args.json:
                print_json({"ok": False, "error": str(exc), "errors": exc.errors})
            else:
                for field, message in exc.errors.items():
                    print(f"mailgate: error: {safe(field)}: {safe(str(message))}", file=sys.stderr)
            return 1
        emit(args.json, {"step": done.step.id, "node": done.step.node, "values": done.values,
                         "automation": automation_dict(done.automation)},
             text=f"submitted {done.step.node} ({done.step.id}); automation {done.automation.id} is {done.automation.state}")
    elif cmd == "retry":
        rec = await admin.retry(args.id)
        emit(args.json, automation_dict(rec), text=f"automation {rec.id} runs again")
    elif cmd == "kill":
        rec = await admin.kill(args.id)
        emit(args.json, {"killed": rec.id}, text=f"killed automation {rec.id} and deleted its history")
    elif cmd == "goto":
        rec = await admin.goto(args.id, args.node)
        emit(args.json, automation_dict(rec), text=f"automation {rec.id} continues at {args.node}")
    elif cmd == "step":
        runs = await (_loop(rt) if args.loop else rt.automation_runner.run_due())
        emit(args.json, {"runs": runs}, text=f"{runs} automation run(s) committed")
    elif cmd == "delete-history":
        autos, steps = await admin.delete_history(args.days)
        emit(args.json, {"total": autos + steps, "automations": autos, "steps": steps},
             text=f"{autos + steps} total objects deleted, including {autos} automations and {steps} steps")
    return 0


async def _loop(rt: Runtime) -> int:
    """``step --loop``: the runner as the worker role runs it, beside a daemon or instead of its worker
    role, on the same store and claims; SIGTERM or SIGINT stops it gracefully. The runs committed."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = loop.create_task(rt.automation_runner.run(), name="automations")
    stopped = loop.create_task(stop.wait())
    try:
        await asyncio.wait([runner, stopped], return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()  # the runner died: its error, not a quiet exit
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        stopped.cancel()
        await rt.automation_runner.stop(rt.config.daemon.grace_period)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    return rt.automation_runner.runs


def _print_show(shown: dict[str, Any]) -> None:
    head = {k: shown[k] for k in ("id", "class", "state", "session", "version", "created", "updated", "finished", "wake_at")}
    if shown["orphaned"]:
        head["orphaned"] = f"{shown['orphaned']}: restore it, or move it on with: mailgate automations goto {shown['id']} NODE"
    head["data"] = shown["data"]
    print_record(head)
    print("history:")
    for line in shown["tree"] or ["(no steps yet: the runner enters the first node)"]:
        print("  " + safe(line))
    if shown["messages"]:
        print("messages:")
        for m in shown["messages"]:
            print(f"  {m['created']} {safe(m['message'])} [{m['state']}]" + (f" -> {safe(json.dumps(m['result'], default=str))}"
                                                                          if m["state"] == "delivered" else ""))

