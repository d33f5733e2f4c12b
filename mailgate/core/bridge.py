"""The one bridge from sync handler code (in a worker thread) to the event loop.

Sync handlers run in threads; what they read from the store or send runs on the daemon's loop.
A blocking call made on the loop itself would stall every other session, so it is refused with
a pointer to its async twin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from mailgate.core.threads import blocking
from mailgate.errors import ActionError

T = TypeVar("T")


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True if the caller runs on ``loop`` (where it must not block)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def refuse_on_loop(loop: asyncio.AbstractEventLoop, what: str, instead: str) -> None:
    """ActionError if the caller runs on ``loop``: ``what`` would block it; ``instead`` is the async twin."""
    if on_loop(loop):
        raise ActionError(f"{what} would block the event loop; in an async handler use `{instead}`")


def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on ``loop`` from a worker thread and wait for it, at most ``timeout`` seconds."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        with blocking():  # what ``coro`` waits for may need a thread of the action pool: lend one
            return future.result(timeout)
    except BaseException:
        future.cancel()
        raise
