"""Benchmark: the pure automations engine (no store), the CPU cost the runner will add per step.

Two workloads over N automations, each one ``engine.advance`` call on its own snapshot: (1) a due
one-step automation (the step runs, End finishes it); (2) an ``AsSoonAs`` that stays false (one
evaluation, one new recheck time). The anchor, measured in the same run, is the least any runner must
do per step: copy the data, call the same step function, encode the data with the tagged codec.
Figures: automations/s of each and the ratio engine / anchor.

    python bench/automations_engine.py [--automations 20000]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.automations import engine, flow, this  # noqa: E402
from mailgate.automations.engine import Snapshot, StepRow  # noqa: E402
from mailgate.core import answers as codec  # noqa: E402


def work(data: dict[str, Any]) -> None:
    data["n"] = data.get("n", 0) + 1


class OneStep(flow.Automation):
    wait = flow.Execute(this.work).AfterWaitingFor(datetime.timedelta(seconds=1))
    end = flow.End()

    def work(self, task: Any) -> None:
        work(self.data)


class Waiting(flow.Automation):
    wait = flow.Execute().AsSoonAs(this.ready)
    end = flow.End()

    def ready(self, task: Any) -> bool:
        return bool(self.data.get("ready"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--automations", type=int, default=20000)
    n = parser.parse_args().automations
    snaps = [Snapshot(f"a{i}", {"i": i, "email": f"u{i}@example.org", "when": datetime.datetime(2026, 1, 1)},
                      [StepRow(f"s{i}", "wait", "waiting", 0.0)]) for i in range(n)]

    t = time.perf_counter()
    for s in snaps:
        data = copy.deepcopy(dict(s.data))
        work(data)
        codec.encode(data)
    anchor = n / (time.perf_counter() - t)

    t = time.perf_counter()
    for s in snaps:
        assert engine.advance(OneStep, s, now=10.0).state == "finished"
    due = n / (time.perf_counter() - t)

    t = time.perf_counter()
    for s in snaps:
        assert engine.advance(Waiting, s, now=10.0).wake_at == 70.0
    recheck = n / (time.perf_counter() - t)

    print(f"{n} automations, one process")
    print(f"anchor (copy data, call the step, encode data): {anchor:10,.0f}/s")
    print(f"engine, due one-step automation:                {due:10,.0f}/s  ({due / anchor:.2f} x anchor)")
    print(f"engine, AsSoonAs staying false:                 {recheck:10,.0f}/s  ({recheck / anchor:.2f} x anchor)")


if __name__ == "__main__":
    main()
