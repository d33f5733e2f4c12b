"""Benchmark: sustained check-ins per second over /ws, against a bare aiohttp WebSocket echo server.

Method. The real daemon runs in a subprocess, set up as in bench/push.py (``mailgate serve``, roles
web+worker, a fresh SQLite file in a temp folder, ``[web] port = 0``, the bench interview of
bench/interviews.py loaded with ``[interviews] paths``), with one change: ``[web]
max_messages_per_second`` is raised to 1,000,000. Its default (20/s, bursts of 40) protects the
server from one flooding page; a closed-loop client sends as fast as replies come back, so it would
be closed (1008) for flooding within a second.

For each C in ``--clients``: C sessions, C browser tokens, C WebSockets (one per session, every
"welcome" awaited), all in this process on one event loop. Each client then runs a closed loop: send
``{"type": "checkin", "ref": R, "action": A, "fields": {"a": .., "b": ..}, "changed": "a"}``, wait
for its ``{"type": "checkin", "ref": R, ...}`` reply, repeat. Replies are counted for ``--duration``
seconds after ``--warmup`` seconds of the same load, for two check-in actions:

- ``calc`` leaves the answers unchanged (ajax-calc: fills C = A * B), so nothing is saved;
- ``bump`` changes them (counter += 1, the draft kept), so every check-in saves the session.

Both are plain ``def`` handlers (mailgate runs them in its thread pool; the goals are judged on
these), and both run again as ``async def`` handlers with the same body (``calc_async``,
``bump_async``: no thread hop), to show what the hop costs. Anchor, same run: a bare
aiohttp echo server (its own subprocess, no heartbeat, default limits) with another C clients in the
same closed loop, sending the same check-in message and waiting for its echo: messages/s. Both
servers are up at once and the windows take turns (echo, calc, bump) for ``--rounds`` rounds, so a
change in the machine's background load hits every system alike; each rate is the mean over its
windows. The CPU time that the server process and this client process used in the windows is printed
too, as a share of one core, to show which side was the limit (they share the machine's cores), and
the server's CPU time per message, which depends less on what else the machine is running. When the
client column reads about 100% for the echo server, the anchor is this client's ceiling rather than
the echo server's, so the ratios flatter mailgate.
Goals: check-ins/s at least 0.5 of the echo rate when the action leaves the answers unchanged, 0.2
when it saves.

    python bench/checkin.py [--clients 1000,5000] [--warmup 2] [--duration 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from push import (  # noqa: E402
    Client,
    Server,
    client_session,
    close_clients,
    open_clients,
    sessions_with_tokens,
    start_daemon,
    start_echo,
)

GOALS = {"calc": 0.5, "bump": 0.2}
ACTIONS = {"calc": 0.5, "calc_async": None, "bump": 0.2, "bump_async": None}  # goal, None: shown for comparison
WHAT = {"calc": "check-in, answers unchanged (no save)", "bump": "check-in that saves",
        "calc_async": "  the same, async def handler", "bump_async": "  the same, async def handler"}


@dataclass
class Rate:
    per_second: float
    errors: int
    server_cpu: float  # share of one core used by the server process during the window
    client_cpu: float  # the same for this (client) process


async def closed_loop(clients: list[Client], server: Server, action: str, warmup: float, duration: float) -> Rate:
    """Every client sends a check-in and waits for its reply, over and over; replies/s in the window."""
    counting = False
    stopping = False
    count = 0
    errors: list[str] = []

    async def run(k: int, client: Client) -> None:
        nonlocal count
        ws = client.ws
        ref = 0
        while not stopping:
            ref += 1
            await ws.send_str(json.dumps({"type": "checkin", "ref": ref, "action": action,
                                          "fields": {"a": ref, "b": k}, "changed": "a"}))
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    errors.append(f"socket {k}: {msg.type.name} {msg.data!r} {msg.extra!r}")
                    return
                data = json.loads(msg.data)
                if data.get("ref") == ref and data.get("type") in ("checkin", "error"):
                    break
            if data["type"] == "error":
                errors.append(str(data["error"]))
            elif counting:
                count += 1

    loops = [asyncio.create_task(run(k, c)) for k, c in enumerate(clients)]
    await asyncio.sleep(warmup)
    counting = True
    cpu0, mine0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.sleep(duration)
    counting = False
    elapsed = time.perf_counter() - t0
    cpu1, mine1 = server.cpu_seconds(), time.process_time()
    measured = count
    stopping = True
    await asyncio.wait_for(asyncio.gather(*loops), 60)  # each loop ends after its outstanding reply
    for line in errors[:5]:
        print(f"  {server.name} {action}: {line}")
    return Rate(measured / elapsed, len(errors), (cpu1 - cpu0) / elapsed, (mine1 - mine0) / elapsed)


async def bench_c(folder: Path, c: int, args: argparse.Namespace) -> tuple[dict[str, Rate], Rate]:
    """Both servers up at once, C clients on each; ``--rounds`` of (echo, calc, bump) windows.

    Taking turns window by window lets a change in the machine's background load hit every system alike.
    """
    echo = start_echo(folder)
    daemon: Server | None = None
    windows: dict[str, list[Rate]] = {"echo": [], **{a: [] for a in ACTIONS}}
    try:
        daemon = start_daemon(folder, f"checkin-{c}", web={"max_messages_per_second": 1_000_000.0})
        async with client_session() as http:
            ids = await sessions_with_tokens(http, daemon.port, c)
            echo_clients = await open_clients(http, [("", f"http://127.0.0.1:{echo.port}/ws")] * c, False, None)
            mg_clients = await open_clients(
                http, [(sid, f"http://127.0.0.1:{daemon.port}/ws?token={tok}") for sid, tok in ids], True, None)
            for _ in range(args.rounds):
                windows["echo"].append(await closed_loop(echo_clients, echo, "calc", args.warmup, args.duration))
                for action in ACTIONS:
                    windows[action].append(await closed_loop(mg_clients, daemon, action, args.warmup, args.duration))
            await close_clients(mg_clients + echo_clients)
    finally:
        echo.stop()
        if daemon is not None:
            daemon.stop()
    if daemon is not None:
        for line in daemon.problems()[:10]:
            print(f"  daemon log: {line}")

    def total(rates: list[Rate]) -> Rate:
        k = len(rates)
        return Rate(sum(r.per_second for r in rates) / k, sum(r.errors for r in rates),
                    sum(r.server_cpu for r in rates) / k, sum(r.client_cpu for r in rates) / k)

    return {a: total(windows[a]) for a in ACTIONS}, total(windows["echo"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", default="1000,5000", help="comma-separated numbers of concurrent closed-loop clients")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each counted window")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds counted per window")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (echo, unchanged, saves) windows")
    args = parser.parse_args()
    counts = [int(x) for x in args.clients.split(",") if x.strip()]
    folder = Path(tempfile.mkdtemp(prefix="mailgate-bench-checkin-"))
    try:
        print(f"check-ins: closed loop, one outstanding message per client; {args.rounds} rounds of "
              f"(echo, unchanged, saves) windows, each {args.warmup:g} s warm-up + {args.duration:g} s counted; "
              "anchor: bare aiohttp echo server, same clients and messages")
        for c in counts:
            mine, echo = asyncio.run(bench_c(folder, c, args))
            print()
            print(f"{'C=' + str(c) + ' clients':<48} {'msgs/s':>8} {'ratio':>6} {'goal':>5} {'server CPU':>11} "
                  f"{'client CPU':>11} {'server us/msg':>14}")
            for name, r, goal in [("bare aiohttp echo", echo, None),
                                  *((f"mailgate {WHAT[a]}", mine[a], g) for a, g in ACTIONS.items())]:
                print(f"  {name:<46} {r.per_second:>8.0f} {r.per_second / echo.per_second:>6.3f} {goal or '':>5} "
                      f"{r.server_cpu:>11.0%} {r.client_cpu:>11.0%} {r.server_cpu / r.per_second * 1e6:>14.0f}"
                      + (f"   errors: {r.errors}" if r.errors else ""))
            verdicts = [f"{WHAT[a]} >= {g} x echo: {'met' if mine[a].per_second >= g * echo.per_second else 'NOT met'}"
                        for a, g in GOALS.items()]
            print("goals: " + "; ".join(verdicts))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
