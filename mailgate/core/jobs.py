"""Running jobs keyed by id (the worker pool's tasks, the inbound processor's messages)."""

from __future__ import annotations

import asyncio
import time


async def finish_within(running: dict[str, asyncio.Task[None]], grace: float) -> list[str]:
    """Let the jobs in ``running`` finish within ``grace`` seconds, cancel the rest and wait for
    them to end; returns the ids of those cancelled (to be given back to their queue)."""
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        await asyncio.wait(list(running.values()), timeout=max(0.0, deadline - time.monotonic()))
    leftover = list(running)
    jobs = list(running.values())
    for job in jobs:
        job.cancel()
    if jobs:
        await asyncio.gather(*jobs, return_exceptions=True)
    return leftover
