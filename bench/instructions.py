"""Benchmark: CPU instructions per check-in and per background task, this tree against another revision.

On a shared machine the CPU time of the same code swings by a third from one minute to the next, so
a change of a few per cent cannot be seen in seconds. Instructions counted by valgrind's callgrind
do not depend on what else the machine runs. Each workload runs in process (the daemon's core and its
SQLite store, no network) twice under callgrind, with a few and with many units; the difference
divided by the difference in units is the cost of one unit, without the start-up. The anchor is the
same workload on ``--base`` (a git revision checked out into a temporary worktree), measured in the
same run.

    python bench/instructions.py [--base bd76898] [--units 400]

Needs valgrind (Debian: valgrind). Workloads: an async check-in and a sync (``def``) check-in that
change nothing, on 100 sessions; a no-op background action from enqueue to its finished event.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One script for every revision: the imports fall back to the layout before mailgate/core/ existed.
WORKLOAD = r'''
import asyncio, os, sys, tempfile
root, workload, units = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
from mailgate import Interview, User, background_response
from mailgate.config import load_config
try:
    from mailgate.core.interviews import Registry
    from mailgate.daemon.lifecycle import Daemon
    LAYOUT = "core"
except ImportError:
    from mailgate.daemon import Daemon
    from mailgate.interviews import Registry
    LAYOUT = "flat"

iv = Interview("bench")


@iv.action("ck")
async def ck(answers):
    background_response()


@iv.action("cks")
def cks(answers):
    background_response()


@iv.action("noop")
async def noop(answers):
    background_response(1)


async def checkins(daemon, action):
    rt = daemon.runtime
    sids = [(await rt.create_session("bench", {"a": i, "b": "x" * 50})).id for i in range(100)]
    for _ in range(1 + units // len(sids)):  # the first round warms up
        await asyncio.gather(*(rt.run_checkin(s, action, {"f": "v", "_changed": None}, User()) for s in sids))


async def tasks(daemon):
    rt = daemon.runtime
    sid = (await rt.create_session("bench")).id
    done, count = asyncio.Event(), 0

    def on_event(event):
        nonlocal count
        if event.kind == "task":
            count += 1
            if count == units:
                done.set()

    if LAYOUT == "core":
        (await daemon.start_feed()).subscribe(on_event, sid)
    else:
        daemon.bus.subscribe(on_event, sid)
    for i in range(0, units, 50):
        await asyncio.gather(*(rt.start_background_action(sid, "noop", arguments={"i": j})
                               for j in range(i, min(units, i + 50))))
    await asyncio.wait_for(done.wait(), 600)


async def main():
    folder = tempfile.mkdtemp()
    config = load_config(None).replace(store={"path": os.path.join(folder, "bench.sqlite3")},
                                       tasks={"workers": 16, "poll_interval": 0.5})
    roles = ("worker",) if workload == "task" else ()
    async with Daemon(config, registry=Registry([iv]), roles=roles) as daemon:
        if workload == "task":
            await tasks(daemon)
        else:
            await checkins(daemon, "ck" if workload == "async check-in" else "cks")

asyncio.run(main())
'''

WORKLOADS = ("async check-in", "sync check-in", "task")


def instructions(script: Path, tree: Path, workload: str, units: int) -> int:
    out = tempfile.mktemp(prefix="callgrind.")
    env = dict(os.environ, PYTHONHASHSEED="0")
    res = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script),
                          str(tree), workload, str(units)], env=env, capture_output=True, text=True)
    Path(out).unlink(missing_ok=True)
    found = re.search(r"Collected : (\d+)", res.stderr)
    if res.returncode != 0 or found is None:
        raise SystemExit(f"{workload} on {tree} failed:\n{res.stderr[-3000:]}")
    return int(found.group(1))


def per_unit(script: Path, tree: Path, workload: str, units: int) -> float:
    few = units // 4
    return (instructions(script, tree, workload, units) - instructions(script, tree, workload, few)) / (units - few)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="bd76898", help="git revision to compare with (the anchor)")
    parser.add_argument("--units", type=int, default=400, help="check-ins or tasks in the long run (a quarter in the short)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    folder = Path(tempfile.mkdtemp(prefix="mailgate-bench-instr-"))
    base = folder / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                   capture_output=True)
    try:
        script = folder / "workload.py"
        script.write_text(WORKLOAD)
        print(f"instructions per unit (callgrind), {args.units} units less {args.units // 4}; anchor: {args.base}")
        print(f"{'':<16} {args.base:>14} {'this tree':>14} {'ratio':>7}")
        for workload in WORKLOADS:
            anchor = per_unit(script, base, workload, args.units)
            mine = per_unit(script, ROOT, workload, args.units)
            print(f"{workload:<16} {anchor:>14,.0f} {mine:>14,.0f} {mine / anchor:>7.3f}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
