"""The worker pool on a store that refuses claims for a while: it waits the outage out, logs it once,
and runs the queued task once the store answers again; the daemon keeps running."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import StoreFull
from tests.helpers import runtime_of, wait_until

pytestmark = pytest.mark.asyncio


async def test_a_store_that_refuses_claims_delays_tasks_and_stops_nothing(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert daemon.store is not None and daemon.pool is not None
    rt = runtime_of(daemon)
    real = daemon.store.claim_tasks
    refusals = 0

    async def refusing(*args: Any, **kwargs: Any) -> Any:
        nonlocal refusals
        if refusals < 5:
            refusals += 1
            raise StoreFull("the SQLite store is full: free space on its disk and mailgate retries")
        return await real(*args, **kwargs)

    caplog.set_level(logging.INFO, logger="mailgate.core.pool")
    monkeypatch.setattr(daemon.store, "claim_tasks", refusing)
    sid = (await rt.create_session("testing")).id
    task = await rt.start_background_action(sid, "sleep_bg", arguments={"seconds": 0})
    rec = await rt.wait_task(task.id, 10)
    assert rec.state == "succeeded", rec
    assert refusals == 5
    assert daemon.failed is None and "workers" in {t.get_name() for t in daemon._tasks.values() if not t.done()}
    failed = [r for r in caplog.records if getattr(r, "event", None) == "task.claim_failed"]
    recovered = [r for r in caplog.records if getattr(r, "event", None) == "task.claim_recovered"]
    assert len(failed) == 1 and failed[0].exc_info is None and "is full" in failed[0].getMessage()
    assert len(recovered) == 1
    await wait_until(lambda: daemon.pool is not None and not daemon.pool.running, 5, "the pool to be idle")
