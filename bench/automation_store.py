"""Benchmark: the automations store's run cycle against the task queue's, on the same store.

A run cycle is what the automation runner will cost the store per due automation: claim it (a batch
of ``--batch``, with its open steps and queued messages) and commit its run fenced (the step done, the
next one opened with a timer an hour ahead, version and data, the claim released). The anchor is the
task queue's cycle on the same backend in the same run: claim a batch of tasks, commit each finish.
Both run ``--concurrency`` loops (so both get group commits) over ``--n`` items. Figures: cycles/s of
both and their ratio, and the timer read (``next_wake``) median with ``--n`` automations waiting.

    python bench/automation_store.py [--n 5000] [--concurrency 16] [--batch 16] [--pg DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.store.base import (  # noqa: E402
    AutomationUpdate,
    Changes,
    NewAutomation,
    NewStep,
    NewTask,
    StepUpdate,
    Store,
    TaskFinish,
)
from mailgate.store.postgres.backend import PgStore  # noqa: E402
from mailgate.store.sqlite.backend import SqliteStore  # noqa: E402


async def automation_cycles(store: Store, n: int, concurrency: int, batch: int) -> float:
    for start in range(0, n, 500):
        await asyncio.gather(*[store.create_automation(NewAutomation(f"a{i}", "bench.Flow", None, '{"n":0}', f"k{i}", "{}"),
                                                       [NewStep(f"s{i}-0", "start")]) for i in range(start, min(n, start + 500))])
    done = 0

    async def loop(holder: str) -> None:
        nonlocal done
        while claimed := await store.claim_automations(holder, batch, 30.0):
            later = store.now() + 3600
            await asyncio.gather(*[store.commit(Changes(automations=[AutomationUpdate(
                c.automation.id, c.automation.version, holder, data='{"n":1}', wake_at=later,
                steps_finished=[StepUpdate(c.steps[0].id, "done", message="OK", attempts=1)],
                steps_opened=[NewStep(c.steps[0].id[:-1] + "1", "wait", previous_id=c.steps[0].id, wake_at=later)])]))
                for c in claimed])
            done += len(claimed)

    started = time.perf_counter()
    await asyncio.gather(*[loop(f"r{i}") for i in range(concurrency)])
    elapsed = time.perf_counter() - started
    assert done == n, (done, n)
    return n / elapsed


async def task_cycles(store: Store, n: int, concurrency: int, batch: int) -> float:
    await store.create_session("s", "bench", "{}", "{}")
    for start in range(0, n, 500):
        await store.commit(Changes(new_tasks=[NewTask(f"t{i}", "s", "bench", "act", "{}", "{}", None, 3)
                                              for i in range(start, min(n, start + 500))]))
    done = 0

    async def loop(worker: str) -> None:
        nonlocal done
        while (claim := await store.claim_tasks(worker, batch, 30.0, lambda rec: ())).tasks:
            await asyncio.gather(*[store.commit(Changes(finish=TaskFinish(t.id, worker, "succeeded", '{"value":1}')))
                                   for t in claim.tasks])
            done += len(claim.tasks)

    started = time.perf_counter()
    await asyncio.gather(*[loop(f"w{i}") for i in range(concurrency)])
    elapsed = time.perf_counter() - started
    assert done == n, (done, n)
    return n / elapsed


async def timer_read(store: Store) -> float:
    times = []
    for _ in range(200):
        t = time.perf_counter()
        await store.next_wake()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def measure(name: str, make: object, args: argparse.Namespace) -> None:
    stores = []
    for _ in range(2):
        store = make()  # type: ignore[operator]
        await store.open()
        await store.migrate()
        stores.append(store)
    try:
        tasks = await task_cycles(stores[0], args.n, args.concurrency, args.batch)
        autos = await automation_cycles(stores[1], args.n, args.concurrency, args.batch)
        read = await timer_read(stores[1])
    finally:
        for store in stores:
            await store.close()
    print(f"{name:9} task cycles/s {tasks:8.0f}   automation cycles/s {autos:8.0f}   ratio {autos / tasks:5.2f}   "
          f"next_wake median {read:.3f} ms with {args.n} waiting")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pg", help="an empty PostgreSQL database (its tables are created; run it on a fresh one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = iter(("tasks.sqlite3", "automations.sqlite3"))
        await measure("sqlite", lambda: SqliteStore(str(Path(folder) / next(paths))), args)
    if args.pg:
        await measure("postgres", lambda: PgStore(args.pg, pool_size=10), args)


if __name__ == "__main__":
    asyncio.run(main())
