"""The interview of the multi-node tests (tests/e2e/test_nodes_pg.py): each handler records the
process that ran it (``os.getpid()``), so a test can tell which daemon did the work."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mailgate import Interview, action_argument, background_action, background_response

interview = Interview("nodes")


@interview.action("incoming_email")
def incoming_email(answers: dict[str, Any]) -> None:
    email = action_argument("email")
    background_action("announce", "flash", message=f"Mail for nodes: {email.subject} (pid {os.getpid()})")
    background_response(os.getpid())


@interview.action("announce")
def announce(answers: dict[str, Any]) -> None:
    background_response(action_argument("message"))


@interview.action("hold")
def hold(answers: dict[str, Any]) -> None:
    """Runs until the file ``release`` exists (at most ``timeout`` seconds); its value is the pid
    of the process that ran it to the end."""
    release = Path(action_argument("release"))
    deadline = time.monotonic() + float(action_argument("timeout", 60))
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear")
        time.sleep(0.02)  # the action's own wait for the test's go; not a test's synchronisation
    background_response(f"held by pid {os.getpid()}")


@interview.action("incr")
def incr(answers: dict[str, Any]) -> None:
    answers["counter"] = answers.get("counter", 0) + 1
    answers.setdefault("by", []).append(os.getpid())


@interview.action("cron_daily")
def cron_daily(answers: dict[str, Any]) -> None:
    answers.setdefault("daily_runs", []).append(os.getpid())
