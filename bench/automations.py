"""Benchmark: the automations runner (AUTOMATIONS.md §5 Benchmark), with both anchors in the same run.

mailgate, on a fresh SQLite file (or PostgreSQL database), the runner driven in-process:
- creation/s of session-bound automations (``start_async``, ``--concurrency`` at a time);
- idle: with them all waiting on timers far away, the runner's CPU and the store writes over ``--idle`` s;
- a burst of ``--burst`` due one-step automations drained: steps/s (claim, engine, fenced commit);
- timer lateness p50/p99/max (the commit of the timer's run minus its due time; the step's start too)
  with dues spread at ``--rate``/s;
- message -> advanced p50/p99 over ``--messages`` sequential messages;
- AsSoonAs rechecks/s (waiting automations whose condition stays false, all due for a recheck);
- peak RSS above the level before the run;
- memory: a fresh daemon process per size (a tenth of ``--waiting``, then ``--waiting``) creates that
  many waiting automations, idles 3 s and drains 1,000: its peak RSS, which must not grow with them.

Anchors measured in this run:
- (a) ceiling: a plain loop reading and saving the same automation rows through the store
  (``get_automation`` + a fenced ``Changes``), same concurrency, same group commits;
- (b) Django Automations 0.9.4.1 (``pip install '.[bench]'``) on a SQLite file, in a subprocess: the
  same one-step automation, ``AutomationModel.run()`` back-to-back (its best case, no cron gap):
  steps/s, and its AsSoonAs evaluations/s.

    python bench/automations.py [--waiting 100000] [--burst 10000] [--rate 500] [--messages 1000]
                                [--idle 10] [--memory 10000,100000|no] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

With ``--pg`` the mailgate part runs on a database of its own on that server (created, then
dropped); idle writes are then rows written (``pg_stat_database``) instead of WAL bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- Django Automations (anchor b), run as `bench/automations.py --django N` in a subprocess -------------
def django_anchor(n: int, folder: str) -> dict[str, float]:
    here = Path(__file__).resolve().parent  # this file is named automations.py: keep it from shadowing the package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "automations"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(folder, "dj.sqlite3")}},
        USE_TZ=True, LOGGING_CONFIG=None, DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from automations import flow as dj  # noqa: PLC0415
    from automations.models import AutomationModel  # noqa: PLC0415

    class OneStep(dj.Automation):
        work = dj.Execute(dj.this.do)
        end = dj.End()

        def do(self, task: Any) -> None:
            self.data["done"] = True
            self.save()

    class Never(dj.Automation):
        wait = dj.Execute().AsSoonAs(dj.this.ready)
        end = dj.End()

        def ready(self, task: Any) -> bool:
            return False

    module = sys.modules["__main__"]
    module.OneStep = OneStep  # type: ignore[attr-defined]
    module.Never = Never  # type: ignore[attr-defined]
    OneStep.__module__ = Never.__module__ = "__main__"
    started = time.perf_counter()
    for _ in range(n):
        OneStep(autorun=False)
    created = n / (time.perf_counter() - started)
    started = time.perf_counter()
    AutomationModel.run()
    steps = n / (time.perf_counter() - started)
    done = AutomationModel.objects.filter(finished=True).count()
    waits = max(n // 2, 1)
    for _ in range(waits):
        Never(autorun=False)
    AutomationModel.run()  # the first pass enters the node
    started = time.perf_counter()
    AutomationModel.run()
    evaluations = waits / (time.perf_counter() - started)
    return {"created_per_s": created, "steps_per_s": steps, "finished": done, "assoonas_per_s": evaluations}


# -- mailgate -------------------------------------------------------------------------------------------
BENCH_FLOWS = '''
import datetime
import time
from mailgate import Interview
from mailgate.automations import flow, this

interview = Interview("autobench")


class Waiting(flow.Automation):
    class Meta:
        name = "Waiting"
    wait = flow.Execute().AfterWaitingFor(datetime.timedelta(days=30))
    end = flow.End()


class OneStep(flow.Automation):
    class Meta:
        name = "OneStep"
    work = flow.Execute(this.do)
    end = flow.End()

    def do(self, task):
        self.data["done"] = True


class Due(flow.Automation):
    class Meta:
        name = "Due"
    wait = flow.Execute().AfterWaitingUntil(this.due)
    fire = flow.Execute(this.fired)
    end = flow.End()

    def due(self, task):
        return self.data["due"]

    def fired(self, task):
        self.data["late"] = time.time() - self.data["due"]


class Pinged(flow.Automation):
    class Meta:
        name = "Pinged"
    wait = flow.Execute().AsSoonAs(this.pinged)
    end = flow.End()

    def pinged(self, task):
        return bool(self.data.get("ping"))

    def receive_ping(self, token, data):
        self.data["ping"] = True


class Never(flow.Automation):
    class Meta:
        name = "Never"
    wait = flow.Execute().AsSoonAs(this.ready)
    end = flow.End()

    def ready(self, task):
        return False
'''


async def gather_limited(n: int, concurrency: int, make: Any, keep: bool = True) -> list[Any]:
    """``make(i)`` for i in range(n), ``concurrency`` at a time: that many workers, not n tasks (100,000
    pending coroutines would be the bench's memory, not the daemon's); the results only if ``keep``."""
    out: list[Any] = [None] * n if keep else []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            r = await make(i)
            if keep:
                out[i] = r

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return out


class Finished:
    """The runner's commits, timed: when each automation's finishing commit returned (no polling of the
    store, which would load it with 100,000 rows waiting)."""

    def __init__(self, runner: Any) -> None:
        self.at: dict[str, float] = {}
        self.committed: set[str] = set()
        self.failed = 0  # runs that ended an automation otherwise than finished: the bench is wrong
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self._left: tuple[set[str], bool] = (set(), True)  # what all() waits for, and whether it must finish
        self._none_left = asyncio.Event()
        commit = runner.commit

        async def timed(changes: Any) -> Any:
            result = await commit(changes)
            now = time.time()
            left, finishing = self._left
            for u in changes.automations:
                self.committed.add(u.automation_id)
                if not finishing and left:
                    left.discard(u.automation_id)
                if u.state is not None and u.state != "running":
                    left.discard(u.automation_id)
                    self.at[u.automation_id] = now
                    if u.state != "finished":
                        self.failed += 1
                    fut = self.waiters.pop(u.automation_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(now)
            if not left:
                self._none_left.set()
            return result

        runner.commit = timed

    async def all(self, ids: list[str], timeout: float = 300, finished: bool = True) -> None:
        """Until each of ``ids`` has finished (or, ``finished`` False, has had a run committed)."""
        seen = self.at if finished else self.committed
        # counted down by the commits themselves: polling the whole list would charge the drain it
        # measures O(n) work every few milliseconds
        self._left = ({i for i in ids if i not in seen}, finished)
        self._none_left.clear()
        deadline = time.monotonic() + timeout
        while self._left[0]:
            if self.failed:
                raise SystemExit(f"{self.failed} automations of the bench failed (see the log)")
            if time.monotonic() > deadline:
                raise SystemExit("automations did not finish in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_left.wait(), 0.1)

    async def one(self, automation_id: str) -> float:
        if automation_id in self.at:
            return self.at[automation_id]
        fut = self.waiters.setdefault(automation_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, 30)


def bench_config(folder: Path, args: argparse.Namespace, dsn: str) -> Any:
    from mailgate.config import load_config

    flows = folder / "autobench.py"
    flows.write_text(BENCH_FLOWS)
    store: dict[str, Any] = ({"backend": "postgres", "dsn": dsn} if dsn else
                             {"path": str(folder / "mailgate.sqlite3")})
    return load_config(None).replace(store=store, interviews={"paths": (str(flows),)},
                                     automations={"concurrency": args.concurrency, "timer_poll": 1.0})


async def pg_writes(dsn: str) -> int:
    """Rows written in the bench's database so far (``pg_stat_database``, settled: an idle backend
    reports its pending counts within 10 s, PostgreSQL's PGSTAT_IDLE_INTERVAL)."""
    import asyncpg

    await asyncio.sleep(11)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                                  "WHERE datname = current_database()")
        return int(row[0])
    finally:
        await conn.close()


async def fill_waiting(rt: Any, n: int, concurrency: int, keep: int = 0) -> tuple[float, list[str]]:
    """``n`` session-bound automations waiting on a timer 30 days away (100 sessions); creation/s and
    the ids of the first ``keep``."""
    sessions = [(await rt.create_session("autobench")).id for _ in range(100)]
    waiting = rt.automation_classes.resolve("Waiting")
    kept: list[str] = []

    async def make(i: int) -> None:
        m, _ = await waiting.start_async(session=sessions[i % len(sessions)])
        if i < keep:
            kept.append(m.id)

    started = time.perf_counter()
    await gather_limited(n, concurrency, make, keep=False)
    return n / (time.perf_counter() - started), kept


async def memory_probe(args: argparse.Namespace, folder: Path, dsn: str) -> dict[str, float]:
    """A fresh daemon process: ``--probe`` automations waiting (created, each entered its wait), the loop
    idle 3 s, then a burst of 1,000 drained; its peak RSS (VmHWM) and RSS at the end."""
    from mailgate.daemon.lifecycle import Daemon

    async with Daemon(bench_config(folder, args, dsn), roles=(), one_shot=True) as d:
        rt = d.runtime
        assert rt is not None
        runner = rt.automation_runner
        done = Finished(runner)
        await fill_waiting(rt, args.probe, args.concurrency)
        await runner.run_due()
        loop_task = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.sleep(3)
        one = rt.automation_classes.resolve("OneStep")
        ids = [m.id for m, _ in await gather_limited(1000, args.concurrency, lambda i: one.start_async())]
        await done.all(ids)
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        end = rss_mb()
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "end_rss_mb": end}


async def mailgate_run(args: argparse.Namespace, folder: Path, dsn: str) -> dict[str, Any]:
    from mailgate.core import answers as codec
    from mailgate.daemon.lifecycle import Daemon
    from mailgate.store.base import AutomationUpdate, Changes

    config = bench_config(folder, args, dsn)
    out: dict[str, Any] = {}
    base_rss = rss_mb()
    async with Daemon(config, roles=(), one_shot=True) as d:
        rt = d.runtime
        assert rt is not None
        store, runner, classes = rt.store, rt.automation_runner, rt.automation_classes
        done = Finished(runner)

        # creation/s: session-bound automations waiting on a timer 30 days away
        out["created_per_s"], rows = await fill_waiting(rt, args.waiting, args.concurrency, keep=args.burst)
        started = time.perf_counter()
        runs = await runner.run_due()  # each enters its wait (one run each)
        out["enter_per_s"] = runs / (time.perf_counter() - started)

        # idle: the loop with everything waiting far away
        counts_before = await store.count_automations()
        wal = folder / "mailgate.sqlite3-wal"
        size_before = (await pg_writes(dsn) if dsn else wal.stat().st_size if wal.exists() else 0)
        cpu = time.process_time()
        loop_task = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.sleep(args.idle)
        out["idle_cpu_percent"] = (time.process_time() - cpu) / args.idle * 100
        out["idle_writes"] = (await pg_writes(dsn) if dsn else wal.stat().st_size if wal.exists() else 0) - size_before
        assert await store.count_automations() == counts_before

        # burst: one-step automations, all due (created with the loop stopped), then drained by it
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        one = classes.resolve("OneStep")
        burst = [m.id for m, _ in await gather_limited(args.burst, args.concurrency, lambda i: one.start_async())]
        started = time.perf_counter()
        loop_task = asyncio.get_running_loop().create_task(runner.run())
        await done.all(burst)
        out["burst_steps_per_s"] = args.burst / (time.perf_counter() - started)

        # timer lateness: dues spread at --rate per second, once every timer waits
        due = classes.resolve("Due")
        count = args.rate * 4
        t0 = time.time() + 3 + count / 500  # after the creations and each one's first run (entering its wait)
        timers = await gather_limited(count, args.concurrency, lambda i: due.start_async(due=t0 + i / args.rate))
        await done.all([m.id for m, _ in timers], timeout=120)
        late, committed = [], []
        for m, _ in timers:
            rec = await store.get_automation(m.id)
            data = codec.decode(rec.data)
            late.append(data["late"])
            committed.append(done.at[m.id] - data["due"])
        out["lateness_p50_ms"], out["lateness_p99_ms"], out["lateness_max_ms"] = (
            pct(committed, 50) * 1000, pct(committed, 99) * 1000, max(committed) * 1000)
        out["start_p50_ms"], out["start_p99_ms"] = pct(late, 50) * 1000, pct(late, 99) * 1000

        # message -> advanced: sent, until the commit that finishes its automation returned
        pinged = classes.resolve("Pinged")
        targets = await gather_limited(args.messages, args.concurrency, lambda i: pinged.start_async())
        await done.all([m.id for m, _ in targets], finished=False)  # each entered its wait in the loop
        latencies = []
        for m, _ in targets:
            sent_at = time.time()
            handle = await m.send_message_async("ping")
            latencies.append(await done.one(m.id) - sent_at)
            assert handle is not None
        out["message_p50_ms"], out["message_p99_ms"] = pct(latencies, 50) * 1000, pct(latencies, 99) * 1000

        # AsSoonAs rechecks/s: waiting automations due for their recheck, drained by one pass
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        runner._stopping = False
        never = classes.resolve("Never")
        checks = await gather_limited(args.burst, args.concurrency, lambda i: never.start_async())
        await runner.run_due()  # entered
        ids = [m.id for m, _ in checks]
        await store.commit(Changes(automations=[  # make every recheck due now
            AutomationUpdate(r.id, r.version, None, wake_at=0.0, keep_claim=True)
            for r in [await store.get_automation(i) for i in ids] if r is not None]))
        started = time.perf_counter()
        runs = await runner.run_due()
        out["assoonas_rechecks_per_s"] = runs / (time.perf_counter() - started)

        # ceiling: read and save the same rows through the store, same concurrency
        async def read_save(i: int) -> None:
            rec = await store.get_automation(rows[i])
            await store.commit(Changes(automations=[AutomationUpdate(rec.id, rec.version, None, data=rec.data,
                                                                     wake_at=rec.wake_at, keep_claim=True)]))

        started = time.perf_counter()
        await gather_limited(len(rows), args.concurrency, read_save, keep=False)
        out["ceiling_per_s"] = len(rows) / (time.perf_counter() - started)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return out


def subprocess_json(argv: list[str]) -> tuple[dict[str, Any] | None, str]:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, proc.stderr.strip()[-800:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


async def with_database(args: argparse.Namespace, work: Any) -> Any:
    """``work(dsn)`` on a PostgreSQL database of its own on the ``--pg`` server (dropped after), or
    ``work("")`` for SQLite."""
    if not args.pg:
        return await work("")
    import asyncpg

    name = f"mailgate_autobench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.pg)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(args.pg)._replace(path="/" + name))
    try:
        return await work(dsn)
    finally:
        admin = await asyncpg.connect(args.pg)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds the idle loop is watched")
    parser.add_argument("--memory", default="", help="compare the daemon's peak RSS with these numbers waiting, "
                        "each in a fresh process (default: a tenth of --waiting and --waiting; 'no': skip)")
    parser.add_argument("--pg", default="", help="PostgreSQL server (admin DSN): the mailgate part runs on a "
                        "database of its own there, created and dropped; Django Automations stays on SQLite")
    parser.add_argument("--django-n", type=int, default=300, help="automations of the Django Automations anchor "
                        "(it runs about 50-100 steps/s here)")
    parser.add_argument("--django", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.django:
        print(json.dumps(django_anchor(args.django, args.folder)))
        return
    if args.probe:
        print(json.dumps(asyncio.run(with_database(
            args, lambda dsn: memory_probe(args, Path(args.folder), dsn)))))
        return
    sizes = ([] if args.memory == "no" else [int(x) for x in args.memory.split(",")] if args.memory
             else [max(args.waiting // 10, 1), args.waiting])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mg = asyncio.run(with_database(args, lambda dsn: mailgate_run(args, folder, dsn)))
        dj, dj_error = subprocess_json(["--django", str(args.django_n), "--folder", tmp])
        report(args, mg, dj, dj_error)
        for n in sizes:  # each line as soon as it is measured
            sub = folder / f"probe{n}"
            sub.mkdir()
            probe, error = subprocess_json(["--probe", str(n), "--folder", str(sub), "--concurrency",
                                            str(args.concurrency), *(["--pg", args.pg] if args.pg else [])])
            if probe is None:
                print(f"  memory probe with {n} waiting failed: {error}", flush=True)
            else:
                print(f"  daemon process with {n:>7} waiting: peak RSS {probe['peak_rss_mb']:.0f} MB, "
                      f"at the end {probe['end_rss_mb']:.0f} MB", flush=True)


def report(args: argparse.Namespace, mg: dict[str, Any], dj: dict[str, Any] | None, dj_error: str) -> None:
    backend = "PostgreSQL" if args.pg else "SQLite"
    print(f"automations bench, {datetime.date.today()}, {os.cpu_count()} cores, {backend}; waiting {args.waiting}, "
          f"burst {args.burst}, messages {args.messages}, concurrency {args.concurrency}")
    print(f"  creation                 {mg['created_per_s']:9.0f} /s (then each enters its wait: "
          f"{mg['enter_per_s']:.0f} runs/s)")
    writes = "rows written" if args.pg else "bytes of WAL"
    print(f"  idle (everything waiting) {mg['idle_cpu_percent']:8.2f} % of a core, {mg['idle_writes']} {writes} "
          f"in {args.idle:g} s")
    print(f"  burst drain              {mg['burst_steps_per_s']:9.0f} steps/s")
    print(f"  ceiling (read + save)    {mg['ceiling_per_s']:9.0f} rows/s   -> mailgate/ceiling "
          f"{mg['burst_steps_per_s'] / mg['ceiling_per_s']:.2f}")
    print(f"  timer lateness at {args.rate}/s (commit - due)  p50 {mg['lateness_p50_ms']:.0f} ms, "
          f"p99 {mg['lateness_p99_ms']:.0f} ms, max {mg['lateness_max_ms']:.0f} ms (step start - due: p50 "
          f"{mg['start_p50_ms']:.0f} ms, p99 {mg['start_p99_ms']:.0f} ms)")
    print(f"  message -> advanced (committed)  p50 {mg['message_p50_ms']:.1f} ms, p99 {mg['message_p99_ms']:.1f} ms")
    print(f"  AsSoonAs rechecks        {mg['assoonas_rechecks_per_s']:9.0f} /s")
    print(f"  peak RSS above start     {mg['peak_rss_mb']:9.0f} MB")
    if dj is None:
        print(f"  Django Automations anchor failed (pip install '.[bench]'?): {dj_error}", flush=True)
        return
    print(f"  Django Automations 0.9.4.1 (SQLite): {dj['steps_per_s']:.0f} steps/s ({dj['finished']:.0f} finished), "
          f"AsSoonAs {dj['assoonas_per_s']:.0f} evaluations/s, creation {dj['created_per_s']:.0f}/s")
    print(f"  -> mailgate/Django: steps {mg['burst_steps_per_s'] / dj['steps_per_s']:.1f}x, AsSoonAs "
          f"{mg['assoonas_rechecks_per_s'] / dj['assoonas_per_s']:.1f}x, creation "
          f"{mg['created_per_s'] / dj['created_per_s']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
