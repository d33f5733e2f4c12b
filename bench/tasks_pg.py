"""``bench/tasks.py --store postgres``: no-op background actions end to end on PostgreSQL.

Three systems, each on a fresh database of the same server, in the same run, interleaved over
``--rounds`` rounds (the figures are the median of the rounds; each round's figures are printed too):

* mailgate, one node: one worker daemon (``Daemon(roles=("worker",))``) in a subprocess;
* mailgate, two nodes: two such subprocesses sharing the database;
* Procrastinate 3.x (PsycopgConnector, its schema applied to the fresh database, a no-op task), one
  worker subprocess with ``concurrency`` = mailgate's ``--workers``; both sides get connection pools
  of the same size (mailgate's ``[store] pool_size`` default, 10).

In every case the bench process is the enqueuer (a mailgate Daemon with no roles, or a Procrastinate
App): ``--concurrency`` coroutines enqueue ``--tasks`` tasks as fast as they can, while the workers
run them; the clock runs from the first enqueue to the moment a poll (every 20 ms, on a connection
of its own) sees all of them succeeded. A warm-up of ``--warmup`` tasks runs first, untimed.

CPU per task is the process CPU of the enqueuer and every worker process (getrusage in each),
summed; the PostgreSQL server's CPU per task (its processes' /proc stat) is printed beside it.
Round trips per task are counted by the client (``PgStore.round_trips`` in each mailgate process,
each node reporting its own count over its stdin/stdout channel), broken down by call; and by the
server for every system alike: committed transactions in ``pg_stat_database.xact_commit`` (minus
the bench's own completion polls), which for Procrastinate is its statements, one per round trip.

    python bench/tasks.py --store postgres [--tasks 5000] [--concurrency 64] [--workers 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate import Interview, action_argument, background_response  # noqa: E402

POOL = int(os.environ.get("BENCH_POOL", "10"))  # connections per process, both systems (mailgate's [store] pool_size default)
POLL = 0.02  # seconds between completion polls
PACED = 2_000_000  # task numbers from here on are the paced run's, whose start times are kept
STARTED: dict[int, float] = {}  # task number -> time.time() when its handler started (this process)
bench_interview = Interview("bench")


@bench_interview.action("noop")
async def noop(answers: dict[str, Any]) -> None:
    n = action_argument("n")
    if n >= PACED:
        STARTED[n] = time.time()
    background_response()


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pg_server_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine (the server is local), with those of
    its ended backends (the postmaster's reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name.startswith("postgres"):
            fields = rest.split()
            total += sum(int(f) for f in fields[11:15]) / tick
    return total


# --- the worker processes (this file with --serve) ----------------------------------------------------


class Counted:
    """Counts the calls of some of a store's methods (which calls the round trips go to)."""

    def __init__(self, store: Any, names: tuple[str, ...]) -> None:
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted


async def serve(args: argparse.Namespace) -> None:
    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "quit")

    def reply(data: dict[str, Any]) -> None:
        out.write(json.dumps(data) + "\n")
        out.flush()

    async def command_loop(counters: Any) -> None:
        import threading

        threading.Thread(target=read_stdin, daemon=True, name="bench-stdin").start()
        marks: dict[str, Any] = {}
        while (cmd := await commands.get()) != "quit":
            if cmd == "mark":
                marks = {"cpu": _cpu(), **counters()}
                reply({})
            elif cmd == "stats":
                now = {"cpu": _cpu(), **counters()}
                reply({k: (v - marks[k] if not isinstance(v, dict) else {n: c - marks[k][n] for n, c in v.items()})
                       for k, v in now.items()})
            elif cmd == "started":
                reply({str(n): t for n, t in STARTED.items()})

    if args.serve == "procrastinate":
        import procrastinate

        logging.getLogger("procrastinate").setLevel(logging.ERROR)  # not its advice on where to define an App
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=args.dsn, min_size=POOL, max_size=POOL))

        @app.task(name="noop")
        async def pnoop(n: int) -> None:
            if n >= PACED:
                STARTED[n] = time.time()

        async with app.open_async():
            worker = asyncio.create_task(app.run_worker_async(
                concurrency=args.workers, wait=True, install_signal_handlers=False, delete_jobs="never"))
            reply({"ready": True})
            await command_loop(lambda: {})
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        reply({})
        return

    from mailgate.config import load_config
    from mailgate.core.interviews import Registry
    from mailgate.daemon.lifecycle import Daemon

    config = load_config(None).replace(
        store={"backend": "postgres", "dsn": args.dsn, "pool_size": POOL},
        tasks={"workers": args.workers},
        daemon={"roles": ("worker",)},
    )
    async with Daemon(config, registry=Registry([bench_interview])) as daemon:
        store = daemon.store
        assert store is not None and daemon.pool is not None
        calls = Counted(store, ("claim_tasks", "get_sessions", "get_session", "acquire_lease_and_read", "heartbeat"))
        groups = Counted(store, ("_commit_group",))
        pool = daemon.pool

        def counters() -> dict[str, Any]:
            return {"round_trips": store.round_trips, "completed": pool.completed,  # type: ignore[attr-defined]
                    "calls": {**calls.calls, "commit groups": groups.calls["_commit_group"]}}

        reply({"ready": True})
        await command_loop(counters)
    reply({})


# --- the parent: enqueuer, orchestration ------------------------------------------------------------------


class Worker:
    """A worker subprocess and its one-line JSON command channel."""

    def __init__(self, kind: str, dsn: str, workers: int) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--dsn", dsn, "--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker process ended (exit code {self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
                self.proc.wait(30)
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


async def _call_all(workers: list[Worker], cmd: str) -> list[dict[str, Any]]:
    return await asyncio.gather(*(asyncio.to_thread(w.call, cmd) for w in workers))


async def _wait_count(dsn: str, sql: str, n: int, timeout: float = 600) -> int:
    """Poll ``sql`` (a count) until it reaches ``n``; returns the number of polls."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    polls = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            polls += 1
            if await conn.fetchval(sql) >= n:
                return polls
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sql!r} did not reach {n} within {timeout:g} s")
            await asyncio.sleep(POLL)  # the completion poll's period, not synchronisation
    finally:
        await conn.close()


async def _xact_commit(dsn: str) -> int:
    import asyncpg

    from tests.pg import ADMIN_DSN

    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def _settled_xact_commit(dsn: str) -> int:
    # PostgreSQL 15 backends report their counts when idle, at most once a second: wait for that
    await asyncio.sleep(1.2)
    return await _xact_commit(dsn)


async def _burst(n: int, concurrency: int, enqueue: Any, first: int = 0) -> None:
    async def producer(ids: range) -> None:
        for i in ids:
            await enqueue(i)

    await asyncio.gather(*(producer(range(first + k, first + n, concurrency)) for k in range(concurrency)))


async def _paced(n: int, rate: float, enqueue: Any) -> dict[int, float]:
    """Enqueue tasks PACED.. PACED+n-1 at ``rate``/s; returns when each enqueue started (time.time())."""
    enqueued: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        enqueued[PACED + i] = time.time()
        await enqueue(PACED + i)
    return enqueued


async def _latencies(workers: list[Worker], enqueued: dict[int, float]) -> dict[str, float]:
    started: dict[int, float] = {}
    for reply in await _call_all(workers, "started"):
        started.update({int(n): t for n, t in reply.items()})
    lat = sorted(started[n] - t for n, t in enqueued.items())
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


async def bench_mailgate(dsn: str, nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    from mailgate.config import load_config
    from mailgate.core.interviews import Registry
    from mailgate.daemon.lifecycle import Daemon

    config = load_config(None).replace(store={"backend": "postgres", "dsn": dsn, "pool_size": POOL}, daemon={"roles": ()})
    done_sql = "SELECT count(*) FROM tasks WHERE state = 'succeeded'"
    async with Daemon(config, registry=Registry([bench_interview])) as enqueuer:  # migrates the fresh database
        runtime, store = enqueuer.runtime, enqueuer.store
        assert runtime is not None and store is not None
        workers = await asyncio.gather(*(asyncio.to_thread(Worker, "mailgate", dsn, args.workers) for _ in range(nodes)))
        try:
            session = await runtime.create_session("bench")

            async def enqueue(i: int) -> None:
                await runtime.start_background_action(session.id, "noop", arguments={"n": i})

            await _burst(args.warmup, args.concurrency, enqueue, first=1_000_000)
            await _wait_count(dsn, done_sql, args.warmup)
            xact = await _settled_xact_commit(dsn)
            await _call_all(workers, "mark")
            trips, server_cpu = store.round_trips, pg_server_cpu()  # type: ignore[attr-defined]
            start, cpu = time.perf_counter(), _cpu()
            await _burst(args.tasks, args.concurrency, enqueue)
            enqueue_trips = store.round_trips - trips  # type: ignore[attr-defined]
            polls = await _wait_count(dsn, done_sql, args.warmup + args.tasks)
            elapsed, cpu, server_cpu = time.perf_counter() - start, _cpu() - cpu, pg_server_cpu() - server_cpu
            stats = await _call_all(workers, "stats")
            xact = await _settled_xact_commit(dsn) - xact - polls
            enqueued = await _paced(args.latency_tasks, args.rate, enqueue)
            await _wait_count(dsn, done_sql, args.warmup + args.tasks + args.latency_tasks)
            latency = await _latencies(workers, enqueued)
        finally:
            for w in workers:
                await asyncio.to_thread(w.close)
        counts = await store.count_tasks()
        assert counts["succeeded"] == args.warmup + args.tasks + args.latency_tasks, counts
    n = args.tasks
    calls: dict[str, int] = {}
    for s in stats:
        for name, c in s["calls"].items():
            calls[name] = calls.get(name, 0) + c
    return {"rate": n / elapsed, "cpu": (cpu + sum(s["cpu"] for s in stats)) / n, "server_cpu": server_cpu / n,
            "enqueuer_cpu": cpu / n,
            "trips": (enqueue_trips + sum(s["round_trips"] for s in stats)) / n, "enqueue_trips": enqueue_trips / n,
            "node_trips": [s["round_trips"] / n for s in stats], "node_tasks": [s["completed"] for s in stats],
            "calls": {k: v / n for k, v in calls.items()}, "xact": xact / n, **latency}


async def bench_procrastinate(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=POOL, max_size=POOL))

    @app.task(name="noop")
    async def pnoop(n: int) -> None:
        return None

    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        worker = await asyncio.to_thread(Worker, "procrastinate", dsn, args.workers)
        try:
            async def enqueue(i: int) -> None:
                await pnoop.defer_async(n=i)

            await _burst(args.warmup, args.concurrency, enqueue, first=1_000_000)
            await _wait_count(dsn, done_sql, args.warmup)
            xact = await _settled_xact_commit(dsn)
            await _call_all([worker], "mark")
            server_cpu = pg_server_cpu()
            start, cpu = time.perf_counter(), _cpu()
            await _burst(args.tasks, args.concurrency, enqueue)
            polls = await _wait_count(dsn, done_sql, args.warmup + args.tasks)
            elapsed, cpu, server_cpu = time.perf_counter() - start, _cpu() - cpu, pg_server_cpu() - server_cpu
            (stats,) = await _call_all([worker], "stats")
            xact = await _settled_xact_commit(dsn) - xact - polls
            enqueued = await _paced(args.latency_tasks, args.rate, enqueue)
            await _wait_count(dsn, done_sql, args.warmup + args.tasks + args.latency_tasks)
            latency = await _latencies([worker], enqueued)
        finally:
            await asyncio.to_thread(worker.close)
    n = args.tasks
    return {"rate": n / elapsed, "cpu": (cpu + stats["cpu"]) / n, "server_cpu": server_cpu / n, "xact": xact / n,
            "enqueuer_cpu": cpu / n, **latency}


async def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from tests.pg import create_database_async, drop_database_async

    dsn = await create_database_async()
    try:
        if name == "procrastinate":
            return await bench_procrastinate(dsn, args)
        return await bench_mailgate(dsn, 2 if name == "mailgate 2 nodes" else 1, args)
    finally:
        await drop_database_async(dsn)


def main(args: argparse.Namespace) -> None:
    names = ("procrastinate", "mailgate 1 node", "mailgate 2 nodes")
    print(f"PostgreSQL: burst of {args.tasks} no-op tasks from {args.concurrency} enqueuers (the bench process), "
          f"after {args.warmup} untimed; latency: {args.latency_tasks} tasks at {args.rate:g}/s; {args.workers} "
          f"worker slots per node; {POOL} connections per process; {args.rounds} rounds, interleaved; "
          f"{os.cpu_count()} CPUs")
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            result = asyncio.run(measure(name, args))
            rounds[name].append(result)
            extra = ""
            if "node_tasks" in result:
                extra = (f"  trips/task {result['trips']:.3f} (enqueue {result['enqueue_trips']:.3f}, nodes "
                         + " + ".join(f"{t:.3f}" for t in result["node_trips"]) + ")  tasks per node "
                         + "/".join(str(t) for t in result["node_tasks"]))
            print(f"  round {r + 1} {name:<17} {result['rate']:6.0f} tasks/s  CPU {result['cpu'] * 1e6:5.0f} us/task "
                  f"(enqueuer {result['enqueuer_cpu'] * 1e6:.0f})  server CPU {result['server_cpu'] * 1e6:5.0f} us/task  "
                  f"xact/task {result['xact']:.3f}  p50 {result['p50'] * 1e3:.1f} ms  p99 {result['p99'] * 1e3:.1f} ms"
                  f"{extra}", flush=True)
    keys = ("rate", "cpu", "server_cpu", "xact", "p50", "p99")
    med = {name: {k: statistics.median(x[k] for x in rs) for k in keys} for name, rs in rounds.items()}
    for name in names[1:]:
        med[name]["trips"] = statistics.median(x["trips"] for x in rounds[name])
    print()
    print(f"{'median of ' + str(args.rounds):<20} {'tasks/s':>9} {'CPU us/task':>12} {'PG CPU us/task':>15} "
          f"{'round trips':>12} {'xact_commit':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name, m in med.items():
        trips = f"{m['trips']:.3f}" if "trips" in m else "-"
        print(f"{name:<20} {m['rate']:>9.0f} {m['cpu'] * 1e6:>12.0f} {m['server_cpu'] * 1e6:>15.0f} {trips:>12} "
              f"{m['xact']:>12.3f} {m['p50'] * 1e3:>8.1f} {m['p99'] * 1e3:>8.1f}")
    for name in names[1:]:
        last = rounds[name][-1]["calls"]
        print(f"{name}, calls per task on the nodes (last round): " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
    one, two, proc = med["mailgate 1 node"], med["mailgate 2 nodes"], med["procrastinate"]
    print()
    print(f"mailgate 1 node / procrastinate:   throughput {one['rate'] / proc['rate']:.2f}x   "
          f"CPU per task {one['cpu'] / proc['cpu']:.2f}x   PG server CPU per task {one['server_cpu'] / proc['server_cpu']:.2f}x   "
          f"p50 latency {one['p50'] / proc['p50']:.2f}x")
    print(f"mailgate 2 nodes / 1 node:         throughput {two['rate'] / one['rate']:.2f}x   "
          f"CPU per task {two['cpu'] / one['cpu']:.2f}x   p50 latency {two['p50'] / one['p50']:.2f}x")
    print(f"goals: 1 node >= 2x procrastinate: {'met' if one['rate'] >= 2 * proc['rate'] else 'NOT met'}; "
          f"2 nodes >= 0.9x 1 node: {'met' if two['rate'] >= 0.9 * one['rate'] else 'NOT met'}")
    print("CPU: the enqueuer's and every worker process's (getrusage), summed; PG CPU: the server's processes (/proc). "
          "Round trips: counted by each mailgate process (PgStore.round_trips: the enqueuer's plus each node's, "
          "reported by the node); xact_commit: pg_stat_database, server side, minus the bench's completion polls.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--serve", choices=("mailgate", "procrastinate"), required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workers", type=int, default=32)
    asyncio.run(serve(parser.parse_args()))
