"""Benchmark: no-op background actions end to end (enqueue -> succeeded) on the SQLite default.

Two phases per system: a burst of ``--tasks`` tasks from ``--concurrency`` enqueuers gives the
throughput (tasks/s, enqueue of the first to success of the last); a paced run of ``--latency-tasks``
tasks offered at ``--rate`` per second (below every system's capacity, so no backlog builds up) gives
the enqueue->start latency (p50, p99). The same figures are measured for two anchors in the same run: a bare ``asyncio.Queue`` round trip (the ceiling: no durability at all)
and Celery with a Redis broker on loopback (what users would otherwise pick). Figures are ratios
against the anchors because the machines are shared and noisy.

    python bench/tasks.py [--tasks 5000] [--concurrency 64] [--workers 32] [--rate 200] [--no-celery]

``--store postgres`` measures the PostgreSQL backend instead, with one and two worker nodes against
Procrastinate on the same server (see ``bench/tasks_pg.py``):

    python bench/tasks.py --store postgres [--tasks 5000] [--concurrency 64] [--workers 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate import Interview, action_argument, background_response  # noqa: E402
from mailgate.config import load_config  # noqa: E402
from mailgate.core.interviews import Registry  # noqa: E402
from mailgate.daemon.lifecycle import Daemon  # noqa: E402

STARTED: dict[int, float] = {}
CPU_PER_TASK: dict[str, float] = {}  # process CPU seconds per task in the burst
bench_interview = Interview("bench")


@bench_interview.action("noop")
async def noop(answers: dict[str, Any]) -> None:
    STARTED[action_argument("n")] = time.perf_counter()
    background_response()


async def paced(n: int, rate: float | None, concurrency: int, enqueue: Any) -> None:
    """Call ``enqueue(i)`` for i < n: as fast as possible from ``concurrency`` coroutines, or at ``rate``/s."""
    if rate is None:
        async def producer(ids: range) -> None:
            for i in ids:
                await enqueue(i)
                await asyncio.sleep(0)

        await asyncio.gather(*(producer(range(k, n, concurrency)) for k in range(concurrency)))
        return
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        await enqueue(i)


async def bench_queue(n: int, concurrency: int, workers: int, rate: float | None) -> tuple[float, list[float]]:
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latencies: list[float] = []
    done = asyncio.Event()

    async def consumer() -> None:
        while True:
            _, t0 = await queue.get()
            latencies.append(time.perf_counter() - t0)
            if len(latencies) == n:
                done.set()

    consumers = [asyncio.create_task(consumer()) for _ in range(workers)]
    start, cpu = time.perf_counter(), time.process_time()

    async def enqueue(i: int) -> None:
        await queue.put((i, time.perf_counter()))

    await paced(n, rate, concurrency, enqueue)
    await done.wait()
    elapsed = time.perf_counter() - start
    if rate is None:
        CPU_PER_TASK["asyncio.Queue"] = (time.process_time() - cpu) / n
    for c in consumers:
        c.cancel()
    return elapsed, latencies


async def bench_mailgate(n: int, concurrency: int, workers: int, rate: float | None, folder: Path) -> tuple[float, list[float]]:
    config = load_config(None).replace(
        store={"path": str(folder / f"bench-{rate}.sqlite3")},
        tasks={"workers": workers, "poll_interval": 0.5},
        daemon={"roles": ("worker",)},
    )
    STARTED.clear()
    async with Daemon(config, registry=Registry([bench_interview])) as daemon:
        runtime = daemon.runtime
        assert runtime is not None
        session = await runtime.create_session("bench")
        finished = 0
        all_done = asyncio.Event()

        def on_event(event: Any) -> None:
            nonlocal finished
            if event.kind == "task":
                finished += 1
                if finished == n:
                    all_done.set()

        (await daemon.start_feed()).subscribe(on_event, session.id)
        enqueued: dict[int, float] = {}
        start, cpu = time.perf_counter(), time.process_time()

        async def enqueue(i: int) -> None:
            enqueued[i] = time.perf_counter()
            await runtime.start_background_action(session.id, "noop", arguments={"n": i})

        await paced(n, rate, concurrency, enqueue)
        await asyncio.wait_for(all_done.wait(), 600)
        elapsed = time.perf_counter() - start
        if rate is None:  # the enqueuers, the daemon and its SQLite writer thread share this process
            CPU_PER_TASK["mailgate"] = (time.process_time() - cpu) / n
        counts = await runtime.store.count_tasks()
        assert counts["succeeded"] == n, counts
        if rate is None:
            batches, units = runtime.store.commit_stats  # type: ignore[attr-defined]
            print(f"  mailgate burst: {units / max(batches, 1):.1f} writes per durable group commit")
    return elapsed, [STARTED[i] - enqueued[i] for i in range(n)]


CELERY_APP = '''
import time, redis
from celery import Celery
app = Celery("benchapp", broker="redis://127.0.0.1:6379/15")
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=64, broker_connection_retry_on_startup=True)
r = redis.Redis(host="127.0.0.1", port=6379, db=15)

@app.task(name="noop")
def noop(n, t0):
    r.rpush("bench:lat", repr(time.time() - t0))
'''


def bench_celery(n: int, workers: int, rate: float | None, folder: Path) -> tuple[float, list[float]] | None:
    try:
        import redis as redis_mod
        from celery import Celery  # noqa: F401
    except ImportError:
        print("  celery skipped: pip install 'celery[redis]' (the bench extra)")
        return None
    r = redis_mod.Redis(host="127.0.0.1", port=6379, db=15)
    try:
        r.ping()
    except redis_mod.RedisError as exc:
        print(f"  celery skipped: no Redis on 127.0.0.1:6379 ({exc})")
        return None
    r.flushdb()
    (folder / "benchapp.py").write_text(CELERY_APP)
    env = dict(os.environ, PYTHONPATH=str(folder))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "--pool=threads", f"--concurrency={workers}",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        sys.path.insert(0, str(folder))
        import benchapp  # type: ignore[import-not-found]

        benchapp.noop.delay(-1, time.time())  # warm-up: wait until the worker consumes (bounded)
        deadline = time.monotonic() + 60
        while r.llen("bench:lat") < 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                print("  celery skipped: the worker did not start")
                return None
            time.sleep(0.05)
        r.delete("bench:lat")
        start = time.perf_counter()
        for i in range(n):
            if rate is not None:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing the offered load
            benchapp.noop.delay(i, time.time())
        while r.llen("bench:lat") < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        return elapsed, [float(x) for x in r.lrange("bench:lat", 0, -1)]
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        r.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks in the throughput burst")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent enqueuers in the burst")
    parser.add_argument("--workers", type=int, default=32, help="worker slots (mailgate) / threads (celery)")
    parser.add_argument("--latency-tasks", type=int, default=1000, help="tasks in the paced latency run")
    parser.add_argument("--rate", type=float, help="offered tasks/s in the latency run (200; postgres: 100, below "
                        "Procrastinate's capacity here)")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: one and two nodes against Procrastinate (bench/tasks_pg.py)")
    parser.add_argument("--rounds", type=int, default=3, help="postgres: interleaved rounds (medians are printed)")
    parser.add_argument("--warmup", type=int, default=200, help="postgres: untimed tasks before each burst")
    args = parser.parse_args()
    if args.rate is None:
        args.rate = 100.0 if args.store == "postgres" else 200.0
    if args.store == "postgres":
        import tasks_pg  # this file's folder is on sys.path when run as a script

        tasks_pg.main(args)
        return
    folder = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    results: dict[str, dict[str, float]] = {}
    try:
        print(f"burst: {args.tasks} no-op tasks from {args.concurrency} enqueuers; latency: {args.latency_tasks} tasks "
              f"at {args.rate:g}/s; {args.workers} workers")
        runs: dict[str, Any] = {
            "asyncio.Queue (ceiling)": lambda rate, n: asyncio.run(bench_queue(n, args.concurrency, args.workers, rate)),
            "mailgate (SQLite, durable)": lambda rate, n: asyncio.run(bench_mailgate(n, args.concurrency, args.workers, rate, folder)),
        }
        if not args.no_celery:
            runs["celery + redis (loopback)"] = lambda rate, n: bench_celery(n, args.workers, rate, folder)
        for name, run in runs.items():
            burst = run(None, args.tasks)
            steady = run(args.rate, args.latency_tasks)
            if burst is None or steady is None:
                continue
            lat = sorted(steady[1])
            results[name] = {"rate": args.tasks / burst[0], "p50": statistics.median(lat) * 1000,
                             "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}
        print()
        print(f"{'':<28} {'tasks/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
        for name, r in results.items():
            print(f"{name:<28} {r['rate']:>10.0f} {r['p50']:>9.3f} {r['p99']:>9.3f}")
        mine = results["mailgate (SQLite, durable)"]
        ceiling = results["asyncio.Queue (ceiling)"]
        print()
        print(f"mailgate / asyncio.Queue:  throughput {mine['rate'] / ceiling['rate']:.4f}x")
        if len(CPU_PER_TASK) == 2:
            print(f"process CPU per task in the burst: mailgate {CPU_PER_TASK['mailgate'] * 1e6:.0f} us, "
                  f"asyncio.Queue {CPU_PER_TASK['asyncio.Queue'] * 1e6:.1f} us "
                  f"({CPU_PER_TASK['mailgate'] / CPU_PER_TASK['asyncio.Queue']:.0f}x)")
        celery = results.get("celery + redis (loopback)")
        if celery:
            print(f"mailgate / celery+redis:   throughput {mine['rate'] / celery['rate']:.2f}x   "
                  f"p50 latency {mine['p50'] / celery['p50']:.2f}x   p99 latency {mine['p99'] / celery['p99']:.2f}x")
        print(f"goals: >= 2000 tasks/s: {'met' if mine['rate'] >= 2000 else 'NOT met'}; "
              f"p50 start latency < 5 ms: {'met' if mine['p50'] < 5 else 'NOT met'}"
              + (f"; ahead of celery: {'yes' if mine['rate'] > celery['rate'] else 'no'}" if celery else ""))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
