"""Benchmark: live push to browsers (task completion -> flash at the client) and memory per idle WebSocket.

Method. The real daemon runs in a subprocess (``mailgate serve``, roles web+worker, a fresh SQLite
file in a temp folder, ``[web] port = 0``, ``[tasks] workers = 8``, send queue and limits at their
defaults); the clients run in this process on one event loop (aiohttp). For each N in ``--clients``:

1. N sessions of the bench interview (bench/interviews.py, loaded with ``[interviews] paths``) are
   created through ``POST /api/sessions``, and a browser token for each through
   ``POST /api/sessions/{id}/token``.
2. The daemon's RSS (VmRSS in /proc/PID/status) is read, N WebSockets are opened (one per session)
   and every "welcome" is awaited; after a short settle the RSS is read again: the difference over N
   is the memory per idle connection.
3. For ``--sample`` sessions, ``--batch`` at a time with ``--gap`` seconds between batches (latency,
   not a thundering herd), a background action is started through ``POST /api/sessions/{id}/tasks``
   with ``ui_notification = "flash"``. Its handler ends with ``background_response(repr(time.time()))``,
   so the flash text is the moment the handler finished ("task completion"); the client notes
   ``time.time()`` when the matching flash event arrives. Latency = receipt - completion, same
   machine clock; it includes the durable commit of the task's outcome, the fan-out and the send.

Anchor, same run: a bare aiohttp WebSocket echo server (a tiny script written into the temp folder,
in its own subprocess, no heartbeat, default limits) with the same N idle connections: its memory per
idle connection, and the round trip of a timestamp sent by as many clients in batches of the same
size (a round trip, so the anchor crosses the loopback twice where a push crosses it once). Both
servers are up at once and the two systems take turns batch by batch, so a change in the machine's
background load hits both alike; figures are ratios against the anchor because the machines are
shared and noisy. Servers and clients share the machine's cores.

Across nodes (``--store postgres --nodes 2``): the pushes come from a PostgreSQL store shared by two
daemons in separate processes: node A (``roles = ["web"]``) holds the pages, node B (``roles =
["worker"]``, ``[tasks] workers = 8``) claims and runs the tasks that A's API queued. B's commit of
the task's outcome rings PostgreSQL's ``NOTIFY mailgate_events``; A's listener wakes A's event feed,
which reads the events and pushes the flash. Latency is measured as above (the handler's
``time.time()`` just before it returns, to the client's receipt; one machine clock), so it includes
B's commit, the doorbell, A's read of the events, the fan-out and the send. Each N gets a fresh
database (tests/pg.py: the server of ``MAILGATE_TEST_PG``, 127.0.0.1:5432 by default), dropped
afterwards. Anchors, same run and taking turns with it batch by batch: the single-node SQLite push
above (its own daemon, its own N pages) and the aiohttp echo round trip. ``--nodes 1`` runs web and
worker in one PostgreSQL daemon instead.

    python bench/push.py [--clients 1000,5000] [--sample 500] [--batch 4] [--gap 0.05]
    python bench/push.py --store postgres --nodes 2 --clients 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
INTERVIEW_FILE = Path(__file__).resolve().parent / "interviews.py"
INTERVIEW = "bench-web"
API_KEY = "bench-api-key"
GOAL_P99_MS = 50.0

ECHO_SERVER = '''
import asyncio
from aiohttp import WSMsgType, web


async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def main():
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"echo listening on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
'''


# -- servers in subprocesses --------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident set size of the server process (VmRSS), in KiB."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        assert found, text
        return int(found.group(1))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def problems(self) -> list[str]:
        """ERROR/WARNING lines the server logged (a healthy run has none)."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if " ERROR " in line or " WARNING " in line or "Traceback" in line]


def _wait_for_port(name: str, proc: subprocess.Popen[bytes], log: Path, pattern: str) -> int:
    return int(_wait_for_line(name, proc, log, pattern).group(1))


def _wait_for_line(name: str, proc: subprocess.Popen[bytes], log: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while True:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)  # polling the log for the bound port (a subprocess: no event to wait on)


def start_daemon(folder: Path, tag: str, web: dict[str, Any] | None = None, *, roles: tuple[str, ...] = ("web", "worker"),
                 dsn: str | None = None) -> Server:
    """``mailgate serve`` with ``roles`` (web + worker by default) on a fresh SQLite file in ``folder``,
    or on the PostgreSQL database ``dsn``; returns once it listens (once it started, without the web role)."""
    # thousands of pages from one address: lift the per-address cap that protects a real server
    web_keys = {"port": 0, "api_key": API_KEY, "max_sockets_per_address": 0, **(web or {})}
    store = ([f"path = {json.dumps(str(folder / f'{tag}.sqlite3'))}"] if dsn is None
             else ['backend = "postgres"', f"dsn = {json.dumps(dsn)}"])
    lines = [
        "[daemon]", f"roles = {json.dumps(list(roles))}", "grace_period = 2.0",
        "[store]", *store,
        "[interviews]", f"paths = [{json.dumps(str(INTERVIEW_FILE))}]",
        "[tasks]", "workers = 8",
        "[web]", *(f"{k} = {json.dumps(v)}" for k, v in web_keys.items()),
    ]
    config = folder / f"{tag}.toml"
    config.write_text("\n".join(lines) + "\n")
    log = folder / f"{tag}.log"
    env = dict(os.environ, MAILGATE_CONFIG=str(config), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mailgate", "serve"], env=env, cwd=folder,
                                stdout=out, stderr=subprocess.STDOUT)
    if "web" in roles:
        port = _wait_for_port("the mailgate daemon", proc, log, r"web listening on 127\.0\.0\.1:(\d+)")
    else:
        _wait_for_line("the mailgate daemon", proc, log, r"mailgate started: roles ")
        port = 0
    return Server("mailgate", proc, port, log)


def start_echo(folder: Path) -> Server:
    """The anchor: a bare aiohttp WebSocket echo server in its own process."""
    script = folder / "echo_server.py"
    script.write_text(ECHO_SERVER)
    log = folder / "echo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    port = _wait_for_port("the echo server", proc, log, r"echo listening on 127\.0\.0\.1:(\d+)")
    return Server("echo", proc, port, log)


# -- clients ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Client:
    """One browser page: its socket, and the latency the current sample is waiting for."""

    ws: aiohttp.ClientWebSocketResponse
    session_id: str = ""
    waiter: asyncio.Future[float] | None = None
    reader: asyncio.Task[None] | None = field(default=None, repr=False)

    def resolve(self, latency: float) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(latency)


def client_session() -> aiohttp.ClientSession:
    # no session-wide total timeout: it must not reach the long-lived WebSockets; API calls set their own
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, connect=60))


async def api(http: aiohttp.ClientSession, port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with http.request(method, f"http://127.0.0.1:{port}{path}", json=body, timeout=aiohttp.ClientTimeout(total=120),
                            headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        data = await r.json()
        if r.status >= 300:
            raise SystemExit(f"{method} {path} -> {r.status}: {data}")
        return data


async def bounded(items: Iterable[Any], fn: Callable[[Any], Awaitable[Any]], concurrency: int) -> list[Any]:
    """``[await fn(x) for x in items]`` with at most ``concurrency`` calls in flight, order kept."""
    items = list(items)
    out: list[Any] = [None] * len(items)
    it = iter(range(len(items)))

    async def worker() -> None:
        for i in it:
            out[i] = await fn(items[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def sessions_with_tokens(http: aiohttp.ClientSession, port: int, n: int) -> list[tuple[str, str]]:
    """N sessions of the bench interview and a browser token for each: (session id, token)."""
    async def one(_: int) -> tuple[str, str]:
        sid = (await api(http, port, "POST", "/api/sessions", {"interview": INTERVIEW, "answers": {"counter": 0}}))["id"]
        token = (await api(http, port, "POST", f"/api/sessions/{sid}/token", {}))["token"]
        return sid, token

    return await bounded(range(n), one, 64)


async def open_clients(http: aiohttp.ClientSession, urls: list[tuple[str, str]], welcome: bool,
                       on_text: Callable[[Client, str, float], None] | None) -> list[Client]:
    """Open one WebSocket per (session id, url); with ``welcome``, wait for the daemon's "welcome".

    With ``on_text``, a reader task per client hands it every text frame with its receipt time.
    """
    async def one(item: tuple[str, str]) -> Client:
        sid, url = item
        ws = await http.ws_connect(url, autoping=True, max_msg_size=0)
        if welcome:
            msg = await ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data).get("type") != "welcome":
                raise SystemExit(f"expected a welcome, got {msg!r}")
        return Client(ws, sid)

    clients = await bounded(urls, one, 100)
    if on_text is not None:
        for c in clients:
            c.reader = asyncio.create_task(_read(c, on_text))
    return clients


async def _read(client: Client, on_text: Callable[[Client, str, float], None]) -> None:
    async for msg in client.ws:  # also answers the server's pings
        if msg.type == aiohttp.WSMsgType.TEXT:
            on_text(client, msg.data, time.time())


async def close_clients(clients: list[Client]) -> None:
    for c in clients:
        if c.reader is not None:
            c.reader.cancel()
    await bounded(clients, lambda c: c.ws.close(), 200)


def on_flash(client: Client, text: str, received: float) -> None:
    data = json.loads(text)
    if data.get("type") == "event" and data.get("kind") == "command" and data["data"].get("command") == "flash":
        client.resolve(received - float(data["data"]["message"]))


def on_echo(client: Client, text: str, received: float) -> None:
    client.resolve(received - float(text))


async def sample_latencies(systems: list[tuple[list[Client], Callable[[Client], Awaitable[None]]]], sample: int,
                           batch: int, gap: float) -> list[tuple[list[float], int]]:
    """Per system: fire its trigger for ``sample`` clients, ``batch`` at a time; the latencies (s) and the lost.

    The systems take turns batch by batch, so a change in the machine's background load hits all alike.
    """
    rng = random.Random(7)
    out: list[tuple[list[float], int]] = [([], 0) for _ in systems]
    loop = asyncio.get_running_loop()
    for start in range(0, sample, batch):
        for k, (clients, trigger) in enumerate(systems):
            picked = rng.sample(clients, min(batch, sample - start))
            for c in picked:
                c.waiter = loop.create_future()
            await asyncio.gather(*(trigger(c) for c in picked))
            waiters = [c.waiter for c in picked if c.waiter is not None]
            done, pending = await asyncio.wait(waiters, timeout=10)
            out[k][0].extend(f.result() for f in done)
            out[k] = (out[k][0], out[k][1] + len(pending))
            for c in picked:
                c.waiter = None
            await asyncio.sleep(gap)  # spacing the batches: latency, not a thundering herd
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float
    kib_per_conn: float
    lost: int
    max_ms: float = 0.0


def figures(lat: list[float], lost: int, kib_per_conn: float) -> Figures:
    return Figures(statistics.median(lat) * 1000, percentile(lat, 0.99) * 1000, kib_per_conn, lost, max(lat) * 1000)


async def settle() -> None:
    await asyncio.sleep(2.0)  # let the last handshakes' garbage go before reading RSS


async def bench_n(folder: Path, n: int, args: argparse.Namespace) -> tuple[Figures, Figures]:
    """Both servers up at once, N clients on each; the figures of (mailgate, echo)."""
    echo = start_echo(folder)
    daemon: Server | None = None
    try:
        daemon = start_daemon(folder, f"push-{n}")
        async with client_session() as http:
            ids = await sessions_with_tokens(http, daemon.port, n)
            await settle()
            before = daemon.rss_kib(), echo.rss_kib()
            echo_clients = await open_clients(http, [("", f"http://127.0.0.1:{echo.port}/ws")] * n, False, on_echo)
            mg_clients = await open_clients(
                http, [(sid, f"http://127.0.0.1:{daemon.port}/ws?token={tok}") for sid, tok in ids], True, on_flash)
            await settle()
            after = daemon.rss_kib(), echo.rss_kib()
            port = daemon.port

            async def push(c: Client) -> None:
                await api(http, port, "POST", f"/api/sessions/{c.session_id}/tasks", {"action": "stamp", "ui_notification": "flash"})

            async def send_echo(c: Client) -> None:
                await c.ws.send_str(repr(time.time()))

            systems: list[tuple[list[Client], Callable[[Client], Awaitable[None]]]] = [(mg_clients, push), (echo_clients, send_echo)]
            await sample_latencies(systems, min(20, args.sample), args.batch, args.gap)  # warm-up
            (mg_lat, mg_lost), (echo_lat, echo_lost) = await sample_latencies(systems, args.sample, args.batch, args.gap)
            await close_clients(mg_clients + echo_clients)
    finally:
        echo.stop()
        if daemon is not None:
            daemon.stop()
    if daemon is not None:
        for line in daemon.problems()[:10]:
            print(f"  daemon log: {line}")

    return (figures(mg_lat, mg_lost, (after[0] - before[0]) / n),
            figures(echo_lat, echo_lost, (after[1] - before[1]) / n))


def page_urls(daemon: Server, ids: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(session id, WebSocket URL) of one page per (session id, token) on ``daemon``."""
    return [(sid, f"http://127.0.0.1:{daemon.port}/ws?token={tok}") for sid, tok in ids]


def pusher(http: aiohttp.ClientSession, daemon: Server) -> Callable[[Client], Awaitable[None]]:
    """The trigger of one push: queue the ``stamp`` task of the page's session through ``daemon``'s API."""
    async def push(c: Client) -> None:
        await api(http, daemon.port, "POST", f"/api/sessions/{c.session_id}/tasks", {"action": "stamp", "ui_notification": "flash"})

    return push


async def bench_nodes(folder: Path, n: int, dsn: str, args: argparse.Namespace) -> dict[str, Figures]:
    """PostgreSQL (node A: web; node B: worker), the single-node SQLite daemon and the echo server,
    all up at once with N pages each, taking turns batch by batch; their figures by name."""
    servers: list[Server] = []
    try:
        echo = start_echo(folder)
        servers.append(echo)
        sqlite = start_daemon(folder, f"push-{n}")
        servers.append(sqlite)
        if args.nodes == 2:
            node_a = start_daemon(folder, f"pg-web-{n}", roles=("web",), dsn=dsn)
            servers.append(node_a)
            servers.append(start_daemon(folder, f"pg-worker-{n}", roles=("worker",), dsn=dsn))
        else:
            node_a = start_daemon(folder, f"pg-{n}", dsn=dsn)
            servers.append(node_a)
        measured = (node_a, sqlite, echo)
        async with client_session() as http:
            pg_ids = await sessions_with_tokens(http, node_a.port, n)
            sqlite_ids = await sessions_with_tokens(http, sqlite.port, n)
            await settle()
            before = [s.rss_kib() for s in measured]
            echo_clients = await open_clients(http, [("", f"http://127.0.0.1:{echo.port}/ws")] * n, False, on_echo)
            pg_pages = await open_clients(http, page_urls(node_a, pg_ids), True, on_flash)
            sqlite_pages = await open_clients(http, page_urls(sqlite, sqlite_ids), True, on_flash)
            await settle()
            after = [s.rss_kib() for s in measured]

            async def send_echo(c: Client) -> None:
                await c.ws.send_str(repr(time.time()))

            systems: list[tuple[list[Client], Callable[[Client], Awaitable[None]]]] = [
                (pg_pages, pusher(http, node_a)), (sqlite_pages, pusher(http, sqlite)), (echo_clients, send_echo)]
            await sample_latencies(systems, min(20, args.sample), args.batch, args.gap)  # warm-up
            measured_lat = await sample_latencies(systems, args.sample, args.batch, args.gap)
            await close_clients(pg_pages + sqlite_pages + echo_clients)
    finally:
        for server in reversed(servers):
            server.stop()
    for server in servers:
        for line in server.problems()[:10]:
            print(f"  {server.log.stem} log: {line}")
    names = (f"postgres push, {args.nodes} node{'s' if args.nodes > 1 else ''}", "sqlite push, 1 node", "aiohttp echo (round trip)")
    return {name: figures(lat, lost, (after[k] - before[k]) / n)
            for k, (name, (lat, lost)) in enumerate(zip(names, measured_lat, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", default="1000,5000", help="comma-separated numbers of concurrent WebSocket clients")
    parser.add_argument("--sample", type=int, default=500, help="pushes (and echo round trips) measured per N")
    parser.add_argument("--batch", type=int, default=4, help="pushes started at the same time")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between batches")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: push from a PostgreSQL store (anchored on the SQLite run, measured alongside)")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                        help="with --store postgres, 2: the pages on a web daemon, the tasks run by a worker daemon")
    args = parser.parse_args()
    if args.nodes != 1 and args.store != "postgres":
        parser.error("--nodes 2 needs --store postgres (the daemons share the store)")
    counts = [int(x) for x in args.clients.split(",") if x.strip()]
    if args.store == "postgres":
        main_postgres(args, counts)
        return
    folder = Path(tempfile.mkdtemp(prefix="mailgate-bench-push-"))
    results: dict[int, tuple[Figures, Figures]] = {}
    try:
        print(f"push: task completion -> flash at the client; {args.sample} samples per N, {args.batch} at a time, "
              f"{args.gap:g} s apart; anchor: bare aiohttp echo round trip")
        for n in counts:
            started = time.perf_counter()
            results[n] = asyncio.run(bench_n(folder, n, args))
            print(f"  N={n}: done in {time.perf_counter() - started:.0f} s")
        print()
        print(f"{'clients':>7}  {'':<26} {'p50 ms':>8} {'p99 ms':>8} {'KiB/conn':>9} {'lost':>5}")
        for n, (mine, echo) in results.items():
            for name, f in (("mailgate push", mine), ("aiohttp echo (round trip)", echo)):
                print(f"{n:>7}  {name:<26} {f.p50_ms:>8.2f} {f.p99_ms:>8.2f} {f.kib_per_conn:>9.1f} {f.lost:>5}")
        print()
        for n, (mine, echo) in results.items():
            print(f"N={n}: mailgate / echo:  p50 {mine.p50_ms / echo.p50_ms:.2f}x   p99 {mine.p99_ms / echo.p99_ms:.2f}x   "
                  f"memory per idle connection {mine.kib_per_conn / echo.kib_per_conn:.2f}x")
        if 1000 in results:
            p99 = results[1000][0].p99_ms
            print(f"goal: push p99 under {GOAL_P99_MS:g} ms at 1,000 clients: {'met' if p99 < GOAL_P99_MS else 'NOT met'} "
                  f"(p99 {p99:.2f} ms)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main_postgres(args: argparse.Namespace, counts: list[int]) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.pg import ADMIN_DSN, create_database, drop_database

    folder = Path(tempfile.mkdtemp(prefix="mailgate-bench-push-"))
    results: dict[int, dict[str, Figures]] = {}
    try:
        print(f"push: task completion -> flash at the client; PostgreSQL at {ADMIN_DSN.rsplit('@', 1)[-1]}, "
              f"{args.nodes} node{'s' if args.nodes > 1 else ''}; {args.sample} samples per N, {args.batch} at a time, "
              f"{args.gap:g} s apart; anchors: the SQLite single-node push and a bare aiohttp echo round trip")
        for n in counts:
            started = time.perf_counter()
            dsn = create_database()
            try:
                results[n] = asyncio.run(bench_nodes(folder, n, dsn, args))
            finally:
                drop_database(dsn)
            print(f"  N={n}: done in {time.perf_counter() - started:.0f} s")
        print()
        print(f"{'clients':>7}  {'':<26} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'KiB/conn':>9} {'lost':>5}")
        for n, by_name in results.items():
            for name, f in by_name.items():
                print(f"{n:>7}  {name:<26} {f.p50_ms:>8.2f} {f.p99_ms:>8.2f} {f.max_ms:>8.2f} {f.kib_per_conn:>9.1f} {f.lost:>5}")
        print()
        for n, by_name in results.items():
            (pg_name, pg), (sqlite_name, sqlite), (_, echo) = by_name.items()
            for name, mine, anchor in ((f"{pg_name} / {sqlite_name}", pg, sqlite), (f"{pg_name} / echo", pg, echo),
                                       (f"{sqlite_name} / echo", sqlite, echo)):
                print(f"N={n}: {name + ':':<48} p50 {mine.p50_ms / anchor.p50_ms:5.2f}x   p99 {mine.p99_ms / anchor.p99_ms:5.2f}x   "
                      f"max {mine.max_ms / anchor.max_ms:5.2f}x   memory per idle connection {mine.kib_per_conn / anchor.kib_per_conn:.2f}x")
        if 1000 in results:
            p99 = next(iter(results[1000].values())).p99_ms
            print(f"goal: push p99 under {GOAL_P99_MS:g} ms at 1,000 clients ({next(iter(results[1000]))}): "
                  f"{'met' if p99 < GOAL_P99_MS else 'NOT met'} (p99 {p99:.2f} ms)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
