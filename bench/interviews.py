"""The interview the web benchmarks run (bench/push.py, bench/checkin.py), loaded by the daemon they
start through ``[interviews] paths``.

The check-in handlers come twice: as plain ``def`` functions, as ported docassemble code is (mailgate
runs them in its thread pool, so each call includes that hop), and as ``async def`` functions with
the same body (run on the event loop), so that the benchmarks show what the hop costs.
"""

from __future__ import annotations

import time
from typing import Any

from mailgate import Interview, action_argument, background_response

interview = Interview("bench-web")


@interview.action("stamp")
def stamp(answers: dict[str, Any]) -> None:
    """Background action: its value is the wall-clock time at which it finished (sent as a flash)."""
    background_response(repr(time.time()))


@interview.action("calc", browser=True)
def calc(answers: dict[str, Any]) -> None:
    """Check-in that leaves the answers unchanged (ajax-calc style): fills C = A * B, saves nothing."""
    a = action_argument("a") or 0
    b = action_argument("b") or 0
    background_response({"c": a * b}, "fields")


@interview.action("bump", browser=True)
def bump(answers: dict[str, Any]) -> None:
    """Check-in that changes the answers (a draft being kept): the session is saved every time."""
    answers["counter"] = answers.get("counter", 0) + 1
    answers["draft"] = action_argument("a")
    background_response({"counter": answers["counter"]}, "fields")


@interview.action("calc_async", browser=True)
async def calc_async(answers: dict[str, Any]) -> None:
    """``calc`` as an ``async def`` handler."""
    a = action_argument("a") or 0
    b = action_argument("b") or 0
    background_response({"c": a * b}, "fields")


@interview.action("bump_async", browser=True)
async def bump_async(answers: dict[str, Any]) -> None:
    """``bump`` as an ``async def`` handler."""
    answers["counter"] = answers.get("counter", 0) + 1
    answers["draft"] = action_argument("a")
    background_response({"counter": answers["counter"]}, "fields")
