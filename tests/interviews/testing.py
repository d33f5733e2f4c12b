"""Interviews used by the tests (loaded from this file path, as operators load theirs)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from mailgate import (
    Interview,
    action_argument,
    background_action,
    background_error_action,
    background_response,
    background_response_action,
    command,
    json_response,
    last_access_days,
    last_access_hours,
    last_access_minutes,
    last_access_time,
    response,
    user_has_privilege,
    user_info,
    user_logged_in,
)

interview = Interview("testing")
RELEASE = threading.Event()  # lets a test hold a sync handler until it says go


@interview.action("set", browser=True)  # the web tests check in with it
def set_values(answers: dict[str, Any]) -> None:
    answers.update(action_argument())


@interview.action("incr")
def incr(answers: dict[str, Any]) -> None:
    answers["counter"] = answers.get("counter", 0) + 1


@interview.action("noop")
async def noop(answers: dict[str, Any]) -> None:
    background_response()


@interview.action("sleep_bg")
def sleep_bg(answers: dict[str, Any]) -> None:
    time.sleep(float(action_argument("seconds", 0.2)))
    background_response("slept")


@interview.action("start")
def start(answers: dict[str, Any]) -> None:
    kwargs = dict(action_argument("kwargs", {}))
    answers["the_task"] = background_action(action_argument("task"), action_argument("ui"), **kwargs)


@interview.action("start_many")
def start_many(answers: dict[str, Any]) -> None:
    answers["tasks"] = [background_action(action_argument("task"), **dict(action_argument("kwargs", {})))
                        for _ in range(int(action_argument("n")))]


@interview.action("no_response")
def no_response(answers: dict[str, Any]) -> None:
    answers["x"] = 1  # forgets background_response()


@interview.action("respond_with_bad_value")
def respond_with_bad_value(answers: dict[str, Any]) -> None:
    background_response(object())


@interview.action("with_callback")
def with_callback(answers: dict[str, Any]) -> None:
    background_response_action("save_result", value=action_argument("value"))


@interview.action("save_result")
def save_result(answers: dict[str, Any]) -> None:
    answers["result"] = action_argument("value")
    answers["callback_runs"] = answers.get("callback_runs", 0) + 1
    background_response("saved")


@interview.action("with_bad_callback")
def with_bad_callback(answers: dict[str, Any]) -> None:
    background_response_action("raising_callback")


@interview.action("raising_callback")
def raising_callback(answers: dict[str, Any]) -> None:
    answers["should_not_be_saved"] = True
    raise ValueError("the callback broke")


@interview.action("fails")
def fails(answers: dict[str, Any]) -> None:
    background_response(answers["missing_variable"])


@interview.action("unserialisable")
def unserialisable(answers: dict[str, Any]) -> None:
    answers["bad"] = {"inner": object()}


@interview.action("slow_sync")
def slow_sync(answers: dict[str, Any]) -> None:
    time.sleep(float(action_argument("seconds")))
    answers["slow_done"] = True


@interview.action("slow_async")
async def slow_async(answers: dict[str, Any]) -> None:
    await asyncio.sleep(float(action_argument("seconds")))
    answers["slow_done"] = True


@interview.action("blocking_bg")
def blocking_bg(answers: dict[str, Any]) -> None:
    RELEASE.wait(10)
    background_response("released")


@interview.action("whoami")
def whoami(answers: dict[str, Any]) -> None:
    user = user_info()
    json_response({"id": user.id, "logged_in": user_logged_in(), "admin": user_has_privilege("admin")})


@interview.action("whoami_bg")
def whoami_bg(answers: dict[str, Any]) -> None:
    background_response({"id": user_info().id, "admin": user_has_privilege(["admin", "developer"])})


@interview.action("null")
def null(answers: dict[str, Any]) -> None:
    answers["changed"] = True
    response(null=True)


@interview.action("exit")
def exit_(answers: dict[str, Any]) -> None:
    command("exit")


@interview.action("task_status")
def task_status(answers: dict[str, Any]) -> None:
    task = answers["the_task"]
    json_response({"ready": task.ready(), "failed": task.failed() if task.ready() else None,
                   "value": task.get(1) if task.ready() and not task.failed() else None})


@interview.action("task_status_async")
async def task_status_async(answers: dict[str, Any]) -> None:
    task = answers["the_task"]
    json_response({"ready": task.ready(), "result": task.result().value if task.ready() else None})


@interview.action("task_in_background")
def task_in_background(answers: dict[str, Any]) -> None:
    answers["the_task"].ready()


@interview.action("spawn_from_bg")
def spawn_from_bg(answers: dict[str, Any]) -> None:
    background_action("noop")
    background_response("spawned")


@interview.action("error_action_then_fail")
def error_action_then_fail(answers: dict[str, Any]) -> None:
    background_error_action("record_error", where="here")
    raise RuntimeError("boom")


@interview.action("record_error")
def record_error(answers: dict[str, Any]) -> None:
    answers["error"] = {k: action_argument(k) for k in ("error_type", "error_message", "variables", "where")}
    background_response("handled")


@interview.action("enable_cron")
def enable_cron(answers: dict[str, Any]) -> None:
    answers["allow_cron"] = True


@interview.action("access")
def access(answers: dict[str, Any]) -> None:
    """docassemble's last_access_* functions, with the arguments given (``include_cron``, ``timezone``...)."""
    kwargs = dict(action_argument())
    when = last_access_time(**kwargs)
    seen = {"days": last_access_days(**kwargs), "hours": last_access_hours(**kwargs),
            "minutes": last_access_minutes(**kwargs), "time": when.isoformat() if when else None,
            "date": when.format_date("yyyy-MM-dd") if when else None}
    response(json.dumps(seen), null=True)  # not saved: no access of its own


@interview.action("cron_daily")
def cron_daily(answers: dict[str, Any]) -> None:
    answers["daily_runs"] = answers.get("daily_runs", 0) + 1
    response(f"daily run {answers['daily_runs']}")


@interview.action("cron_hourly")
def cron_hourly(answers: dict[str, Any]) -> None:
    answers["hourly_runs"] = answers.get("hourly_runs", 0) + 1
    response(null=True) if answers.get("no_save") else response()


@interview.action("cron_weekly")
def cron_weekly(answers: dict[str, Any]) -> None:
    answers["weekly_task"] = background_action("whoami_bg")
    answers["cron_user"] = {"id": user_info().id, "cron": user_has_privilege("cron")}
    response()


@interview.action("announce")
def announce(answers: dict[str, Any]) -> None:
    background_response(action_argument("message"), "flash")


@interview.action("fails_saying")
def fails_saying(answers: dict[str, Any]) -> None:
    raise ValueError(f"cannot use {action_argument('message')}")  # interview code quoting an answer in an error


@interview.action("plain_value")
def plain_value(answers: dict[str, Any]) -> None:
    background_response(42)


RACE_HOOKS: list[Any] = []  # a test's write from "another process", awaited inside the next "counted" run
COUNTED_RUNS = [0]


@interview.action("counted", browser=True)  # a check-in action
async def counted(answers: dict[str, Any]) -> None:
    """Counts its runs; a test can make another writer save the session while it runs."""
    COUNTED_RUNS[0] += 1
    if RACE_HOOKS:
        await RACE_HOOKS.pop()()
    answers["counted"] = answers.get("counted", 0) + 1


@interview.action("bg_calls_a_browser_action_back")
def bg_calls_a_browser_action_back(answers: dict[str, Any]) -> None:
    background_response_action("set", x="from the background")  # "set" is a browser action: refused
