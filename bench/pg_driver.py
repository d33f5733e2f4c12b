"""Benchmark: asyncpg against psycopg 3 on mailgate's task path, to choose the PostgreSQL driver.

Each cycle is what a worker does to a batch of tasks: claim up to ``--batch`` queued tasks with one
``UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING`` statement, then finish each task with one
statement that also inserts its event (as the store's commit does). Both drivers run the same SQL on
the same fresh database in the same run; the figures are tasks/s and the process CPU per task.

    python bench/pg_driver.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--tasks 4000] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

SCHEMA = """
DROP TABLE IF EXISTS bench_tasks, bench_events;
CREATE TABLE bench_tasks (seq bigserial PRIMARY KEY, id text UNIQUE NOT NULL, state text NOT NULL,
    worker text, lease_until double precision, attempts int NOT NULL DEFAULT 0, arguments text NOT NULL,
    result text, finished_at double precision);
CREATE INDEX bench_runnable ON bench_tasks(seq) WHERE state IN ('queued', 'running');
CREATE TABLE bench_events (id bigserial PRIMARY KEY, session_id text NOT NULL, payload text NOT NULL);
"""
CLAIM = (
    "UPDATE bench_tasks SET state = 'running', worker = $1, lease_until = extract(epoch from clock_timestamp()) + 30, "
    "attempts = attempts + 1 WHERE seq IN (SELECT seq FROM bench_tasks WHERE state = 'queued' ORDER BY seq "
    "LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, arguments"
)
FINISH = (
    "WITH done AS (UPDATE bench_tasks SET state = 'succeeded', result = $3, finished_at = extract(epoch from clock_timestamp()), "
    "lease_until = NULL WHERE id = $1 AND worker = $2 AND state = 'running' RETURNING id) "
    "INSERT INTO bench_events (session_id, payload) SELECT id, $3 FROM done RETURNING id"
)


def psycopg_sql(sql: str) -> str:
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}", f"%(p{n})s")
    return sql


async def run_asyncpg(dsn: str, tasks: int, batch: int) -> tuple[float, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute(SCHEMA)
    await conn.executemany("INSERT INTO bench_tasks (id, state, arguments) VALUES ($1, 'queued', '{}')",
                           [(uuid.uuid4().hex,) for _ in range(tasks)])
    start, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < tasks:
        rows = await conn.fetch(CLAIM, "w1", batch)
        for row in rows:
            await conn.fetchval(FINISH, row["id"], "w1", '{"value":null}')
        done += len(rows)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await conn.execute("DROP TABLE bench_tasks, bench_events")
    await conn.close()
    return tasks / elapsed, cpu / tasks


async def run_psycopg(dsn: str, tasks: int, batch: int) -> tuple[float, float]:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0)
    await conn.execute(SCHEMA, prepare=False)
    async with conn.cursor() as cur:
        await cur.executemany("INSERT INTO bench_tasks (id, state, arguments) VALUES (%s, 'queued', '{}')",
                              [(uuid.uuid4().hex,) for _ in range(tasks)])
    claim, finish = psycopg_sql(CLAIM), psycopg_sql(FINISH)
    start, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < tasks:
        cur = await conn.execute(claim, {"p1": "w1", "p2": batch})
        rows = await cur.fetchall()
        for task_id, _ in rows:
            await (await conn.execute(finish, {"p1": task_id, "p2": "w1", "p3": '{"value":null}'})).fetchone()
        done += len(rows)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await conn.execute("DROP TABLE bench_tasks, bench_events", prepare=False)
    await conn.close()
    return tasks / elapsed, cpu / tasks


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"asyncpg": [], "psycopg": []}
    for _ in range(args.rounds):  # interleaved, so that noise hits both alike
        results["asyncpg"].append(await run_asyncpg(args.dsn, args.tasks, args.batch))
        results["psycopg"].append(await run_psycopg(args.dsn, args.tasks, args.batch))
    best = {name: (max(r[0] for r in rs), min(r[1] for r in rs)) for name, rs in results.items()}
    for name, (rate, cpu) in best.items():
        print(f"{name:8s} {rate:8.0f} tasks/s  {cpu * 1e6:6.0f} us CPU/task (best of {args.rounds})")
    a, p = best["asyncpg"], best["psycopg"]
    print(f"asyncpg/psycopg: throughput {a[0] / p[0]:.2f}x, CPU per task {a[1] / p[1]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
