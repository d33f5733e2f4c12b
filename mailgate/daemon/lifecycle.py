"""The Daemon: one object that owns the process's lifecycle, used by the CLI and by the tests.

``async with Daemon(config) as daemon:`` opens and migrates the store, loads the interviews, starts
the roles this process runs, and watches each long-running background task: if one of them dies,
it is logged and the daemon stops (under systemd, ``Restart=on-failure`` then starts a clean
process). Leaving the block, or SIGTERM/SIGINT in :meth:`run_until_stopped`, stops in reverse
order: workers get ``grace_period`` to finish; what does not finish goes back to the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from mailgate.author import dates as _dates  # noqa: F401 - registers docassemble's DADateTime with the answers' codec
from mailgate.automations.registry import AutomationRegistry, load_automations
from mailgate.config import Config, load_config, tables
from mailgate.core.cron import Cron
from mailgate.core.events import EventFeed
from mailgate.core.inbound import Inbound
from mailgate.core.ingest import Ingest
from mailgate.core.interviews import Registry, load_interviews
from mailgate.core.pool import WorkerPool
from mailgate.core.runtime import Runtime
from mailgate.daemon import sdnotify
from mailgate.daemon.preflight import listen_error, load_tls, require_store
from mailgate.daemon.resources import AcceptFailureLog, raise_open_files_limit
from mailgate.edges.scheduler import CronCalendar, Scheduler, check_schedule
from mailgate.edges.smtp.server import SmtpServer, server_hostname
from mailgate.edges.web.app import WebServer
from mailgate.errors import ConfigError, MailgateError
from mailgate.mail.auth import DnsResolver, Resolver
from mailgate.store import Store, check_keys, open_store

if TYPE_CHECKING:
    from mailgate.store.copy import CopyReport, ProgressCallback
    from mailgate.store.rekey import RekeyProgress, RekeyReport

log = logging.getLogger(__name__)
IMPLEMENTED_ROLES = ("smtp", "web", "worker", "scheduler")
FEED_ROLES = ("web",)  # roles that push events to subscribers in this process


def check_config(config: Config) -> None:
    """What only the edges can check of a loaded config (the cron expressions); ConfigError if wrong."""
    check_schedule(config)


async def migrate_store(config: Config, on_step: Callable[[int, int], None] | None = None) -> tuple[list[int], int]:
    """Apply the store's pending migrations: (the numbers applied, the schema version now);
    ``on_step(done, pending)`` after each."""
    store = open_store(config.store)
    await store.open()
    try:
        applied = await store.migrate(on_step)
        return applied, await store.schema_version()
    finally:
        await store.close()


async def store_status(config: Config) -> tuple[int, int]:
    """(the store's schema version, the latest this code knows), without migrating it."""
    store = open_store(config.store)
    try:
        await store.open()
        return await store.schema_version(), store.latest_migration()
    finally:
        await store.close()


async def copy_store(config: Config, dsn: str, *, on_progress: ProgressCallback | None = None,
                     verify_only: bool = False) -> CopyReport:
    """Copy the configured SQLite store whole into the empty PostgreSQL database ``dsn`` and verify
    it (``verify_only``: only compare the two). See :mod:`mailgate.store.copy`."""
    if config.store.backend != "sqlite":
        raise ConfigError("db copy copies the SQLite store ([store] path) into PostgreSQL, but [store] backend is "
                          f"{config.store.backend!r}; run it with the config the SQLite daemon used")
    if not dsn:
        raise MailgateError("db copy needs the target: --to postgresql://USER@HOST/DATABASE (or MAILGATE_STORE_DSN)")
    try:
        from mailgate.store import copy
    except ImportError as exc:
        raise ConfigError(f"db copy needs the PostgreSQL driver ({exc}); install it with: "
                          "pip install 'mailgate[postgres]'") from exc
    if verify_only:
        return await copy.verify_copy(config.store.path, dsn, on_progress=on_progress,
                                      connect_timeout=config.store.connect_timeout)
    return await copy.copy_to_postgres(config.store.path, dsn, on_progress=on_progress,
                                       connect_timeout=config.store.connect_timeout)


async def rekey_store(config: Config, *, on_progress: RekeyProgress | None = None, vacuum: bool = False) -> RekeyReport:
    """Re-seal every row of the store under ``[store] encryption_key``; see :mod:`mailgate.store.rekey`."""
    from mailgate.store import rekey

    rekey.check_configured(config.store)
    if config.store.backend == "sqlite":
        require_store(config)
    return await rekey.run(config.store, on_progress, vacuum)


class Daemon:
    def __init__(self, config: Config, *, roles: Sequence[str] | None = None, registry: Registry | None = None,
                 clock: Callable[[], float] = time.time, resolver: Resolver | None = None,
                 one_shot: bool = False, existing_store: bool = False,
                 automations: AutomationRegistry | None = None) -> None:
        self.config = config
        self.one_shot = one_shot  # a CLI command: no systemd notifications, no lifecycle log lines
        self.existing_store = existing_store  # a CLI command on the store: never create an empty one
        self.roles = tuple(roles if roles is not None else config.daemon.roles)
        self._registry = registry
        self._automations = automations
        self._clock = clock
        self.store: Store | None = None
        self.runtime: Runtime | None = None
        self.pool: WorkerPool | None = None
        self.inbound: Inbound | None = None
        self.ingest: Ingest | None = None
        self.smtp: SmtpServer | None = None
        self.web: WebServer | None = None
        self.cron: Cron | None = None
        self.scheduler: Scheduler | None = None
        self._resolver = resolver
        self._catch_up_task: asyncio.Task[None] | None = None
        self.failed: str | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._stop = asyncio.Event()
        self._stopping = False
        self._accept_failures = AcceptFailureLog()
        self._started = False  # "mailgate stopped" only after "mailgate started"
        self._sighup = False

    async def __aenter__(self) -> Daemon:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        check_config(self.config)
        active = [r for r in self.roles if r in IMPLEMENTED_ROLES]
        for role in self.roles:
            if role not in IMPLEMENTED_ROLES:
                log.warning("role %r is not part of this version yet; running %s", role, ", ".join(active) or "nothing",
                            extra={"event": "daemon.role_unavailable"})
        registry = self._registry or load_interviews(self.config.interviews.modules, self.config.interviews.paths)
        classes = self._automations
        if classes is None:  # automation classes live in the interview modules and files
            classes = load_automations(self.config.interviews.modules, self.config.interviews.paths)
        if not self.one_shot:
            raise_open_files_limit()  # before the SMTP edge sizes its connection cap from it
            self._accept_failures.install(asyncio.get_running_loop())
        if self.existing_store:
            require_store(self.config)
        if "smtp" in self.roles and self.config.smtp.tls_cert:
            load_tls(self.config.smtp.tls_cert, self.config.smtp.tls_key)  # names the files, unlike ssl's error
        self.store = open_store(self.config.store, clock=self._clock)
        await self.store.open()
        if self.existing_store and await self.store.schema_version() == 0:
            raise MailgateError(f"the {self.config.store.backend} store has no mailgate schema yet; "
                                "create it with: mailgate db migrate")
        await self.store.migrate()
        await check_keys(self.store)  # a wrong or missing [store] encryption_key stops here, not at the first read
        self.runtime = Runtime(self.config, self.store, registry,
                               feed=EventFeed(self.store, self.config.web.event_poll_interval), automations=classes)
        if not self.one_shot:
            self.runtime.outbound.check()  # an unusable DKIM key or CA file stops the start, not the first send
        await self.runtime.open()
        rt = self.runtime
        self.inbound = Inbound(self.config, self.store, rt.registry, rt.mailboxes, rt.commits, rt.executor,
                               self._resolver or _dns_resolver(self.config), server_hostname(self.config.smtp))
        self.inbound.automation_classes = classes
        if "worker" in self.roles:
            self.pool = WorkerPool(self.store, rt.commits, rt.task_runner, self.config.tasks, rt.process_id)
            self.spawn("workers", self.pool.run())
            self.spawn("automations", rt.automation_runner.run())
        if self.config.smtp.process_queue and ("smtp" in self.roles or "worker" in self.roles):
            self.ingest = Ingest(self.config, self.store, self.inbound, rt.commits, rt.process_id, rt.outbound)
            self.spawn("inbound-processor", self.ingest.run())
        if "smtp" in self.roles:
            self.smtp = SmtpServer(self.inbound, self.config.smtp)
            await self._listen("smtp", self.config.smtp.host, self.config.smtp.port, self.smtp.start)
        if any(role in FEED_ROLES for role in self.roles):
            await self.start_feed()
        if "web" in self.roles:
            self.web = WebServer(self.runtime, self.config.web, self.inbound)
            await self._listen("web", self.config.web.host, self.config.web.port, self.web.start)
            metrics_at = self.config.web.metrics_address()
            if metrics_at is not None:
                await self._listen("web", metrics_at[0], metrics_at[1], self.web.start_metrics)
            self.spawn("web-heartbeat", self.web.heartbeat())
        calendar = CronCalendar(self.config)
        self.cron = Cron(self.config, self.store, rt.registry, rt.sessions, calendar, rt.process_id)
        if "scheduler" in self.roles:
            self.scheduler = Scheduler(self.cron, calendar)
            self.scheduler.start()
            self._catch_up_task = asyncio.get_running_loop().create_task(self._catch_up(), name="cron-catch-up")
        if self.one_shot:
            return
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            self.spawn("systemd-watchdog", sdnotify.watchdog(interval))
        self._started = True
        # before READY=1: systemd may send the reload (SIGHUP) as soon as it has READY=1, and a
        # SIGHUP with no handler ends the process
        self._sighup = _add_signal_handler(signal.SIGHUP, self.reload)
        sdnotify.notify(f"READY=1\nSTATUS=serving: {','.join(active) or 'no roles'}")
        log.info("mailgate started: roles %s, store %s, interviews %s", ",".join(active), self.config.store.backend,
                 ",".join(registry.names()) or "none", extra={"event": "daemon.started"})

    async def _listen(self, table: str, host: str, port: int, start: Callable[[], Awaitable[None]]) -> None:
        """Start a listener; failing to bind is one line that says what to do (StartupError)."""
        try:
            await start()
        except OSError as exc:
            raise listen_error(table, host, port, exc) from exc

    @property
    def feed(self) -> EventFeed:
        """This process's event feed (it delivers only once :meth:`start_feed` has run)."""
        assert self.runtime is not None, "the daemon has not started"
        return self.runtime.feed

    async def start_feed(self) -> EventFeed:
        """Run the event feed as the named task ``event-feed``, unless it runs already. The roles in
        ``FEED_ROLES`` start it; code that watches events in a daemon without them (tests,
        benchmarks) calls this."""
        feed = self.feed
        if "event-feed" not in self._tasks:
            await feed.open()
            self.spawn("event-feed", feed.run())
        return feed

    async def _catch_up(self) -> None:
        assert self.cron is not None
        try:
            await self.cron.catch_up()
        except Exception:
            log.exception("catching up missed scheduled runs failed", extra={"event": "cron.catch_up_failed"})

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a named background task that must live as long as the daemon."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._watch)
        return task

    def _watch(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        log.error("background task %r stopped unexpectedly: %r; stopping the daemon", task.get_name(), exc,
                  exc_info=exc, extra={"event": "daemon.task_died"})
        self.failed = task.get_name()
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: read the config file again and apply what can change live.

        Live: ``[daemon] log_level`` and the STARTTLS certificate and key (read again even when their
        paths did not change, for a renewed certificate; open connections keep the one they started
        with). Every other changed key is named in one log line as needing a restart, and keeps its
        running value. A config that does not load is logged and changes nothing.
        """
        sdnotify.notify("RELOADING=1")
        try:
            self._reload()
        finally:
            sdnotify.notify("READY=1")

    def _reload(self) -> None:
        running = self.config
        try:
            new = load_config(None if running.source == "<defaults>" else running.source)
            check_config(new)
            if self.smtp is not None and new.smtp.tls_cert:
                load_tls(new.smtp.tls_cert, new.smtp.tls_key)
        except MailgateError as exc:
            log.error("reload: %s; kept the running configuration", str(exc).replace("\n", "; "),
                      extra={"event": "daemon.reload_failed"})
        else:
            changed = changed_keys(running, new)
            # a new certificate is live; turning STARTTLS on or off changes the server: a restart
            toggled = bool(running.smtp.tls_cert) != bool(new.smtp.tls_cert)
            live = [key for key in changed if key in LIVE_KEYS and not (toggled and key.startswith("smtp.tls_"))]
            restart = [key for key in changed if key not in live]
            # logged before the new level applies, so that a quieter level does not hide it
            log.log(logging.WARNING if restart else logging.INFO,
                    "reloaded %s: changed live: %s; changed but needs a restart: %s", running.source,
                    ", ".join(live) or "nothing", ", ".join(restart) or "nothing",
                    extra={"event": "daemon.reloaded", "live": live, "restart": restart})
            self.config = dataclasses.replace(
                running, daemon=dataclasses.replace(running.daemon, log_level=new.daemon.log_level),
                smtp=running.smtp if toggled else dataclasses.replace(running.smtp, tls_cert=new.smtp.tls_cert,
                                                                      tls_key=new.smtp.tls_key))
            logging.getLogger().setLevel(new.daemon.log_level.upper())
        try:
            if self.smtp is not None:
                cert, key = self.config.smtp.tls_cert, self.config.smtp.tls_key
                if (self.smtp.config.tls_cert, self.smtp.config.tls_key) != (cert, key):
                    self.smtp.config = dataclasses.replace(self.smtp.config, tls_cert=cert, tls_key=key)
                self.smtp.reload_tls()
        except Exception as exc:  # a bad new certificate must not take the running server down
            log.error("reload failed, keeping the old certificate: %s", exc, extra={"event": "daemon.reload_failed"})

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> int:
        """Serve until SIGTERM/SIGINT or a watched task dies; 0 on a requested stop, 1 on a failure."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("stopping (grace period %.1f s)", self.config.daemon.grace_period, extra={"event": "daemon.stopping"})
        return 1 if self.failed else 0

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if not self.one_shot:
            sdnotify.notify("STOPPING=1")
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._catch_up_task is not None:
            self._catch_up_task.cancel()
            await asyncio.gather(self._catch_up_task, return_exceptions=True)
        if self.smtp is not None:
            await self.smtp.stop(self.config.daemon.grace_period)
        if self.web is not None:
            await self.web.stop()
        if self.ingest is not None:  # after the SMTP server: what it queued while stopping is processed now or later
            await self.ingest.stop(self.config.daemon.grace_period)
        if self.pool is not None:
            await self.pool.stop(self.config.daemon.grace_period)
        if self.runtime is not None and "automations" in self._tasks:
            await self.runtime.automation_runner.stop(self.config.daemon.grace_period)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self.inbound is not None:
            self.inbound.close()
        if self.runtime is not None:
            self.runtime.close()
        if self.store is not None:
            await self.store.close()
        self._accept_failures.uninstall()
        if self._started:
            log.info("mailgate stopped", extra={"event": "daemon.stopped"})


def _add_signal_handler(sig: int, handler: Callable[[], None]) -> bool:
    """Handle ``sig`` on the running loop; False where a loop cannot (not the main thread)."""
    try:
        asyncio.get_running_loop().add_signal_handler(sig, handler)
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


# keys a SIGHUP applies to the running daemon; a change to any other key needs a restart
LIVE_KEYS = frozenset({"daemon.log_level", "smtp.tls_cert", "smtp.tls_key"})


def changed_keys(running: Config, new: Config) -> list[str]:
    """``table.key`` of every value that differs, except those the program set itself (``mailgate
    demo``'s interviews and pages): the file never held them."""
    changed = []
    for name in tables():
        old_table, new_table = getattr(running, name), getattr(new, name)
        for f in dataclasses.fields(old_table):
            key = f"{name}.{f.name}"
            if running.origins.get(key) == "set by the program":
                continue
            if getattr(old_table, f.name) != getattr(new_table, f.name):
                changed.append(key)
    return changed


def tune_gc(threshold: int) -> None:
    """Fit Python's garbage collector to a long-running server: call once, when the daemon has started.

    The collector walks its young objects every ``threshold`` allocations (Python's default is 700).
    A daemon with a thousand pages checking in allocates that many in a few check-ins, and its
    collector then took a third of the CPU while finding little: with 50,000 the same daemon ran
    about 60 % more check-ins per second (bench/checkin.py). What lives from the start to the end
    (modules, interviews, the web app) is frozen, so that no full collection walks it again. ``0``
    keeps Python's threshold. Process-wide, so it belongs to the process's entry point (``mailgate
    serve``, ``mailgate demo``), not to a Daemon that tests start in their own process.
    """
    if threshold:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])
    gc.collect()
    gc.freeze()
    log.info("garbage collector: new objects every %d allocations; %d objects from the start frozen",
             gc.get_threshold()[0], gc.get_freeze_count(), extra={"event": "daemon.gc"})


def _dns_resolver(config: Config) -> Resolver:
    servers = config.smtp.dns_servers
    if not servers:
        return DnsResolver(timeout=config.smtp.dns_timeout)
    hosts, ports = [], set()
    for server in servers:
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "53")
        hosts.append(host)
        ports.add(int(port or 53))
    if len(ports) > 1:
        raise ConfigError(f"[smtp] dns_servers must all use one port, not {sorted(ports)}")
    return DnsResolver(timeout=config.smtp.dns_timeout, nameservers=hosts, port=ports.pop())


def check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    from mailgate.config import ROLES

    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return tuple(roles)
