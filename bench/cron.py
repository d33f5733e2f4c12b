"""Benchmark: cron_daily over many cron-enabled sessions with a trivial handler.

mailgate's run (:meth:`mailgate.core.cron.Cron.run`: per session the lease, a fresh read, the handler
as the cron user, the versioned save that releases the lease, all durable) is compared with the
ceiling measured in the same run on the same SQLite file: a plain loop that reads each session and
saves it straight through the store, with the same concurrency (so both get group commits), no
lease and no handler. Figures: sessions/s of both and their ratio, and the peak resident memory
above the level just before the run (sampled every 20 ms from /proc/self/status).

    python bench/cron.py [--sessions 100000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate import Interview, response  # noqa: E402
from mailgate.config import load_config  # noqa: E402
from mailgate.core.interviews import Registry  # noqa: E402
from mailgate.daemon.lifecycle import Daemon  # noqa: E402
from mailgate.store.base import Changes, SessionSave  # noqa: E402

bench_interview = Interview("cron-bench")


@bench_interview.action("cron_daily")
async def cron_daily(answers: dict[str, Any]) -> None:
    answers["runs"] = answers.get("runs", 0) + 1
    response()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    def __init__(self) -> None:
        self.base = rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


async def main_async(n: int, concurrency: int, folder: Path) -> None:
    config = load_config(None).replace(
        store={"path": str(folder / "cron.sqlite3")},
        scheduler={"concurrency": concurrency, "page_size": 500},
        sessions={"interview_delete_days": 0.0},
    )
    async with Daemon(config, roles=(), registry=Registry([bench_interview])) as daemon:
        runtime, cron, store = daemon.runtime, daemon.cron, daemon.store
        assert runtime is not None and cron is not None and store is not None
        for start in range(0, n, 2000):
            await asyncio.gather(*(store.create_session(f"s{i:07d}", "cron-bench", '{"allow_cron":true}', "{}", allow_cron=True)
                                   for i in range(start, min(n, start + 2000))))
        print(f"{n} cron-enabled sessions, concurrency {concurrency}")

        # the ceiling: read and save each session directly through the store
        limit = asyncio.Semaphore(concurrency)

        async def plain(session_id: str) -> None:
            async with limit:
                rec = await store.get_session(session_id)
                assert rec is not None
                await store.commit(Changes(save=SessionSave(rec.id, rec.answers, rec.version, touch=False, allow_cron=True)))

        with PeakRss() as plain_mem:
            started = time.perf_counter()
            after = None
            while True:
                ids = await store.cron_session_ids(["cron-bench"], after, 500)
                if not ids:
                    break
                await asyncio.gather(*(plain(i) for i in ids))
                after = ids[-1]
            plain_rate = n / (time.perf_counter() - started)

        with PeakRss() as cron_mem:
            started = time.perf_counter()
            report = await cron.run("cron_daily")
            cron_rate = n / (time.perf_counter() - started)
        assert report.sessions == n and report.errors == 0 and report.saved == n, report.to_dict()

    print(f"{'':<34} {'sessions/s':>11} {'peak RSS over start':>20}")
    print(f"{'plain read+save loop (ceiling)':<34} {plain_rate:>11.0f} {plain_mem.peak - plain_mem.base:>17.1f} MB")
    print(f"{'mailgate cron_daily':<34} {cron_rate:>11.0f} {cron_mem.peak - cron_mem.base:>17.1f} MB")
    print()
    print(f"mailgate / plain loop: {cron_rate / plain_rate:.2f}x")
    print(f"goals: >= 2000 sessions/s: {'met' if cron_rate >= 2000 else 'NOT met'}; "
          f"memory within 50 MB: {'met' if cron_mem.peak - cron_mem.base <= 50 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mailgate-bench-cron-"))
    try:
        asyncio.run(main_async(args.sessions, args.concurrency, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
