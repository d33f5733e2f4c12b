"""An interview that reaches other sessions with docassemble's cross-session functions."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from mailgate import (
    Interview,
    action_argument,
    background_action,
    background_response,
    create_session,
    create_session_async,
    current_datetime,
    get_session_variables,
    get_session_variables_async,
    json_response,
    response,
    retrieve_stashed_data,
    retrieve_stashed_data_async,
    session_id,
    set_session_variables,
    set_session_variables_async,
    stash_data,
    stash_data_async,
)

interview = Interview("cross")


@interview.action("spawn")
def spawn(answers: dict[str, Any]) -> None:
    """Push data: start a session of "testing" and set variables in it."""
    child = create_session("testing", url_args={"from": session_id(), "ref": action_argument("ref")})
    set_session_variables("testing", child, {"greeting": action_argument("greeting"), "doomed": 1})
    set_session_variables("testing", child, {}, delete=["doomed"])
    answers["child"] = child
    response(child)


@interview.action("spawn_async")
async def spawn_async(answers: dict[str, Any]) -> None:
    child = await create_session_async("testing", url_args={"from": session_id()})
    await set_session_variables_async("testing", child, {"greeting": action_argument("greeting")})
    answers["child"] = child
    answers["seen"] = (await get_session_variables_async("testing", child))["greeting"]


@interview.action("pull")
def pull(answers: dict[str, Any]) -> None:
    """Pull data: read another session's variables."""
    answers["pulled"] = get_session_variables(action_argument("interview", "testing"), action_argument("id"))


@interview.action("pull_json")
def pull_json(answers: dict[str, Any]) -> None:
    """Pull another session's variables simplified (docassemble's default): JSON-ready."""
    response(json.dumps(get_session_variables("testing", action_argument("id"))), null=True)


@interview.action("pull_raw")
async def pull_raw(answers: dict[str, Any]) -> None:
    raw = await get_session_variables_async("testing", action_argument("id"), simplify=False)
    answers["raw_types"] = {name: type(value).__name__ for name, value in raw.items()}


@interview.action("push")
def push(answers: dict[str, Any]) -> None:
    set_session_variables(action_argument("interview", "testing"), action_argument("id"), action_argument("variables"))


@interview.action("push_self")
def push_self(answers: dict[str, Any]) -> None:
    set_session_variables("cross", session_id(), {"x": 1})


@interview.action("start_bg_push")
def start_bg_push(answers: dict[str, Any]) -> None:
    answers["task"] = background_action("bg_push", value=action_argument("value"))


@interview.action("bg_push")
def bg_push(answers: dict[str, Any]) -> None:
    """A background action holds no lease: it may set its own session's variables (saved at once)."""
    set_session_variables("cross", session_id(), {"from_background": action_argument("value")})
    background_response("pushed")


@interview.action("stash")
def stash(answers: dict[str, Any]) -> None:
    """Session A: stash some answers, offer a URL to the other interview with the tokens in it."""
    tokens = stash_data({"name": answers["name"], "items": answers["items"]}, expire=action_argument("expire"))
    json_response(tokens)


@interview.action("claim")
def claim(answers: dict[str, Any]) -> None:
    """Session B, started from that URL: the tokens are in url_args."""
    args = answers["url_args"]
    data = retrieve_stashed_data(args["stash_key"], args["secret"], delete=action_argument("delete", False),
                                 refresh=action_argument("refresh", False))
    if data is not None:
        answers.update(data)
    answers["claimed"] = data is not None


@interview.action("stash_async")
async def stash_async(answers: dict[str, Any]) -> None:
    tokens = await stash_data_async([1, 2, 3])
    answers["roundtrip"] = await retrieve_stashed_data_async(tokens["stash_key"], tokens["secret"], delete=True)
    answers["again"] = await retrieve_stashed_data_async(tokens["stash_key"], tokens["secret"])


@interview.action("slow_push")
def slow_push(answers: dict[str, Any]) -> None:
    """Spends part of its lock budget, then pushes: the wait for the other lease has only the rest."""
    time.sleep(float(action_argument("pause")))
    set_session_variables("testing", action_argument("id"), {"n": 2})


@interview.action("slow_push_async")
async def slow_push_async(answers: dict[str, Any]) -> None:
    await asyncio.sleep(float(action_argument("pause")))
    await set_session_variables_async("testing", action_argument("id"), {"n": 2})


@interview.action("cron_daily")
def cron_daily(answers: dict[str, Any]) -> None:
    """As the cron user: keep the child session alive by pushing into it; nothing to save here."""
    if "child" in answers:
        set_session_variables("testing", answers["child"], {"pinged": current_datetime().date()})
    response(null=True)
