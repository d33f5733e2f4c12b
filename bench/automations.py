"""Benchmark: the automations runner (AUTOMATIONS.md §5 Benchmark), with both anchors in the same run.

mailgate, on a fresh SQLite file, the runner driven in-process:
- creation/s of session-bound automations (``start_async``, ``--concurrency`` at a time);
- idle: with them all waiting on timers far away, the runner's CPU and the store writes over 5 s;
- a burst of ``--burst`` due one-step automations drained: steps/s (claim, engine, fenced commit);
- timer lateness p50/p99/max (the step's start minus its due time) with dues spread at ``--rate``/s;
- message -> advanced p50/p99 over ``--messages`` sequential messages;
- AsSoonAs rechecks/s (waiting automations whose condition stays false, all due for a recheck);
- peak RSS above the level before the run.

Anchors measured in this run:
- (a) ceiling: a plain loop reading and saving the same automation rows through the store
  (``get_automation`` + a fenced ``Changes``), same concurrency, same group commits;
- (b) Django Automations 0.9.4.1 (``pip install '.[bench]'``) on a SQLite file, in a subprocess: the
  same one-step automation, ``AutomationModel.run()`` back-to-back (its best case, no cron gap):
  steps/s, and its AsSoonAs evaluations/s.

    python bench/automations.py [--waiting 20000] [--burst 2000] [--rate 500] [--messages 300]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


async def gather_limited(n: int, concurrency: int, make: Any) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def until_finished(store: Any, running: int, timeout: float = 600) -> None:
    """Until no more than ``running`` automations run (one cheap count every 50 ms)."""
    deadline = time.monotonic() + timeout
    while (await store.count_automations())["running"] > running:
        if time.monotonic() > deadline:
            raise SystemExit("automations did not finish in time")
        await asyncio.sleep(0.05)


async def mailgate_run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from mailgate.config import load_config
    from mailgate.core import answers as codec
    from mailgate.daemon.lifecycle import Daemon
    from mailgate.store.base import AutomationUpdate, Changes

    flows = folder / "autobench.py"
    flows.write_text(BENCH_FLOWS)
    config = load_config(None).replace(
        store={"path": str(folder / "mailgate.sqlite3")}, interviews={"paths": (str(flows),)},
        automations={"concurrency": args.concurrency, "timer_poll": 1.0},
    )
    out: dict[str, Any] = {}
    base_rss = rss_mb()
    async with Daemon(config, roles=(), one_shot=True) as d:
        rt = d.runtime
        assert rt is not None
        store, runner, classes = rt.store, rt.automation_runner, rt.automation_classes
        sessions = [(await rt.create_session("autobench")).id for _ in range(100)]

        # creation/s: session-bound automations waiting on a timer 30 days away
        waiting = classes.resolve("Waiting")
        started = time.perf_counter()
        made = await gather_limited(args.waiting, args.concurrency,
                                    lambda i: waiting.start_async(session=sessions[i % len(sessions)]))
        out["created_per_s"] = args.waiting / (time.perf_counter() - started)
        await runner.run_due()  # each enters its wait (one run each)

        # idle: the loop with everything waiting far away
        changes_before = await store.count_automations()
        wal = folder / "mailgate.sqlite3-wal"
        size_before = wal.stat().st_size if wal.exists() else 0
        cpu = time.process_time()
        loop_task = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.sleep(5)
        out["idle_cpu_percent"] = (time.process_time() - cpu) / 5 * 100
        out["idle_wal_growth_bytes"] = (wal.stat().st_size if wal.exists() else 0) - size_before
        assert await store.count_automations() == changes_before

        # burst: one-step automations, all due (created with the loop stopped), then drained by it
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        one = classes.resolve("OneStep")
        await gather_limited(args.burst, args.concurrency, lambda i: one.start_async())
        started = time.perf_counter()
        loop_task = asyncio.get_running_loop().create_task(runner.run())
        await until_finished(store, args.waiting)
        out["burst_steps_per_s"] = args.burst / (time.perf_counter() - started)

        # timer lateness: dues spread at --rate per second, once every timer waits
        due = classes.resolve("Due")
        count = args.rate * 4
        t0 = time.time() + 3 + count / 500  # after the creations and each one's first run (entering its wait)
        timers = await gather_limited(count, args.concurrency,
                                      lambda i: due.start_async(due=t0 + i / args.rate))
        await until_finished(store, args.waiting, timeout=120)
        late = []
        for m, _ in timers:
            rec = await store.get_automation(m.id)
            late.append(codec.decode(rec.data)["late"])
        out["lateness_p50_ms"], out["lateness_p99_ms"], out["lateness_max_ms"] = (
            pct(late, 50) * 1000, pct(late, 99) * 1000, max(late) * 1000)

        # message -> advanced
        pinged = classes.resolve("Pinged")
        targets = await gather_limited(args.messages, args.concurrency, lambda i: pinged.start_async())
        await runner.run_due()  # each has entered its wait
        latencies = []
        for m, _ in targets:
            started = time.perf_counter()
            handle = await m.send_message_async("ping")
            while True:
                rec = await store.get_automation(m.id)
                if rec is not None and rec.state == "finished":
                    break
                await asyncio.sleep(0.001)
            latencies.append(time.perf_counter() - started)
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
        rows = [m.id for m, _ in made[: args.burst]]

        async def read_save(i: int) -> None:
            rec = await store.get_automation(rows[i])
            await store.commit(Changes(automations=[AutomationUpdate(rec.id, rec.version, None, data=rec.data,
                                                                     wake_at=rec.wake_at, keep_claim=True)]))

        started = time.perf_counter()
        await gather_limited(len(rows), args.concurrency, read_save)
        out["ceiling_per_s"] = len(rows) / (time.perf_counter() - started)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=2_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--django-n", type=int, default=300, help="automations of the Django Automations anchor "
                        "(it runs about 10 steps/s here)")
    parser.add_argument("--django", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.django:
        print(json.dumps(django_anchor(args.django, args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mg = asyncio.run(mailgate_run(args, folder))
        proc = subprocess.run([sys.executable, __file__, "--django", str(args.django_n), "--folder", tmp],
                              capture_output=True, text=True, check=False)
        dj = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    print(f"automations bench, {datetime.date.today()}, {os.cpu_count()} cores; waiting {args.waiting}, "
          f"burst {args.burst}, concurrency {args.concurrency}")
    print(f"  creation                 {mg['created_per_s']:9.0f} /s")
    print(f"  idle (everything waiting) {mg['idle_cpu_percent']:8.2f} % of a core, WAL growth "
          f"{mg['idle_wal_growth_bytes']} bytes in 5 s")
    print(f"  burst drain              {mg['burst_steps_per_s']:9.0f} steps/s")
    print(f"  ceiling (read + save)    {mg['ceiling_per_s']:9.0f} rows/s   -> mailgate/ceiling "
          f"{mg['burst_steps_per_s'] / mg['ceiling_per_s']:.2f}")
    print(f"  timer lateness at {args.rate}/s  p50 {mg['lateness_p50_ms']:.0f} ms, p99 {mg['lateness_p99_ms']:.0f} ms, "
          f"max {mg['lateness_max_ms']:.0f} ms")
    print(f"  message -> advanced      p50 {mg['message_p50_ms']:.1f} ms, p99 {mg['message_p99_ms']:.1f} ms")
    print(f"  AsSoonAs rechecks        {mg['assoonas_rechecks_per_s']:9.0f} /s")
    print(f"  peak RSS above start     {mg['peak_rss_mb']:9.0f} MB")
    if dj is None:
        print(f"  Django Automations anchor failed (pip install '.[bench]'?): {proc.stderr.strip()[-500:]}")
        return
    print(f"  Django Automations 0.9.4.1: {dj['steps_per_s']:.0f} steps/s ({dj['finished']:.0f} finished), "
          f"AsSoonAs {dj['assoonas_per_s']:.0f} evaluations/s, creation {dj['created_per_s']:.0f}/s")
    print(f"  -> mailgate/Django: steps {mg['burst_steps_per_s'] / dj['steps_per_s']:.1f}x, AsSoonAs "
          f"{mg['assoonas_rechecks_per_s'] / dj['assoonas_per_s']:.1f}x, creation "
          f"{mg['created_per_s'] / dj['created_per_s']:.1f}x")


if __name__ == "__main__":
    main()
