"""Scheduled tasks: ``cron_hourly``/``daily``/``weekly``/``monthly`` and custom types over sessions.

:class:`Cron` is the core: a *fire* claims its (type, period) in the store, so each period runs once
however many daemons share the store, then runs the event as the cron user on every cron-enabled
session of the interviews that define it: under the session lease, on fresh answers, in parallel up
to ``[scheduler] concurrency``, one page of sessions at a time. :class:`Scheduler` is only the
APScheduler wiring that calls :meth:`Cron.fire` on the configured cron expressions.

Periods are named so that daylight-saving changes neither skip nor double a run: an hourly period
is a real (UTC) hour; daily, weekly and monthly periods are local calendar dates, weeks and months,
so a daily time that occurs twice on the night the clocks go back still names one period.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from mailgate.core.context import CRON_USER
from mailgate.errors import ConfigError, MailgateError

if TYPE_CHECKING:
    from mailgate.config import Config
    from mailgate.core.runtime import Runtime

log = logging.getLogger(__name__)
BUILTIN = {"cron_hourly": "hourly", "cron_daily": "daily", "cron_weekly": "weekly", "cron_monthly": "monthly"}
LOOKBACK = {"cron_hourly": dt.timedelta(hours=2), "cron_daily": dt.timedelta(days=2),
            "cron_weekly": dt.timedelta(days=8), "cron_monthly": dt.timedelta(days=32)}


def schedule(config: Config) -> dict[str, str]:
    """Scheduled type -> cron expression, built-in types first."""
    out = {name: getattr(config.scheduler, key) for name, key in BUILTIN.items()}
    for item in config.scheduler.custom:
        name, sep, expr = item.partition("=")
        out[name.strip()] = expr.strip()
    return out


def check_schedule(config: Config) -> None:
    src = config.source
    try:
        tz = ZoneInfo(config.scheduler.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{src}: [scheduler] timezone {config.scheduler.timezone!r} is not a known time zone") from None
    for item in config.scheduler.custom:
        name, sep, expr = item.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ConfigError(f"{src}: [scheduler] custom entry {item!r} must look like \"name = cron expression\"")
    for name, expr in schedule(config).items():
        try:
            CronTrigger.from_crontab(expr, timezone=tz)
        except ValueError as exc:
            raise ConfigError(f"{src}: [scheduler] the cron expression {expr!r} of {name} is invalid: {exc}") from None


def period_key(type_: str, fire: dt.datetime) -> str:
    """The name of the period a fire at ``fire`` (aware, in the schedule's zone) belongs to."""
    if type_ == "cron_daily":
        return fire.date().isoformat()
    if type_ == "cron_weekly":
        year, week, _ = fire.isocalendar()
        return f"{year}-W{week:02d}"
    if type_ == "cron_monthly":
        return f"{fire.year}-{fire.month:02d}"
    utc = fire.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H") if type_ == "cron_hourly" else utc.strftime("%Y-%m-%dT%H:%M")


@dataclass
class CronReport:
    type: str
    period: str | None
    sessions: int = 0
    saved: int = 0
    exited: int = 0
    errors: int = 0
    deleted_inactive: int = 0
    seconds: float = 0.0
    responses: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "period": self.period, "sessions": self.sessions, "saved": self.saved,
                "exited": self.exited, "errors": self.errors, "deleted_inactive": self.deleted_inactive,
                "seconds": round(self.seconds, 3),
                "responses": [{"session": s, "response": r} for s, r in self.responses]}


class Cron:
    def __init__(self, runtime: Runtime, config: Config) -> None:
        self.runtime = runtime
        self.config = config
        self.tz = ZoneInfo(config.scheduler.timezone)
        self.types = schedule(config)
        self.triggers = {name: CronTrigger.from_crontab(expr, timezone=self.tz) for name, expr in self.types.items()}

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.runtime.store_clock(), self.tz)

    def previous_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None:
        """The latest scheduled fire at or before ``now``."""
        trigger = self.triggers[type_]
        start = now - LOOKBACK.get(type_, dt.timedelta(days=32))
        fire = trigger.get_next_fire_time(None, start)
        previous = None
        while fire is not None and fire <= now:
            previous = fire
            fire = trigger.get_next_fire_time(fire, self._after(fire))
        return previous

    def next_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None:
        """The first scheduled fire after ``now``."""
        result: dt.datetime | None = self.triggers[type_].get_next_fire_time(None, self._after(now))
        return result

    def _after(self, moment: dt.datetime) -> dt.datetime:
        # One second later in real time. Aware datetime arithmetic is wall-clock arithmetic and drops
        # `fold`, which on the night the clocks go back steps *backwards* (and loops forever).
        return (moment.astimezone(dt.UTC) + dt.timedelta(seconds=1)).astimezone(self.tz)

    async def fire(self, type_: str, now: dt.datetime | None = None) -> CronReport | None:
        """Run the period that ``now`` falls in, unless some daemon already did; None if it did."""
        now = now or self.now()
        scheduled = self.previous_fire(type_, now) or now
        period = period_key(type_, scheduled)
        if not await self.runtime.store.claim_period(type_, period, self.runtime.process_id):
            log.info("%s %s already ran", type_, period, extra={"event": "cron.already_ran"})
            return None
        return await self.run(type_, period=period)

    async def catch_up(self, now: dt.datetime | None = None) -> list[CronReport]:
        """At start-up: run once the latest period of each type that was missed while no daemon ran.

        Only types that ran before are caught up (a fresh install does not fire everything at once).
        """
        now = now or self.now()
        last = await self.runtime.store.last_periods()
        reports = []
        for type_ in self.types:
            scheduled = self.previous_fire(type_, now)
            if type_ in last and scheduled is not None and last[type_][0] != period_key(type_, scheduled):
                log.info("%s missed its %s run; running it now", type_, period_key(type_, scheduled),
                         extra={"event": "cron.catch_up"})
                report = await self.fire(type_, now)
                if report is not None:
                    reports.append(report)
        return reports

    async def run(self, type_: str, *, period: str | None = None,
                  on_result: Callable[[str, Any], None] | None = None) -> CronReport:
        """Run ``type_`` now on every cron-enabled session whose interview defines it."""
        started = time.monotonic()
        report = CronReport(type_, period)
        interviews = [iv.name for iv in self.runtime.registry if iv.has_action(type_)]
        limit = asyncio.Semaphore(self.config.scheduler.concurrency)

        async def one(session_id: str) -> None:
            async with limit:
                try:
                    result = await self.runtime.run_action(session_id, type_, {}, CRON_USER, kind="cron")
                except MailgateError as exc:
                    report.errors += 1
                    log.warning("%s on session %s failed: %s", type_, session_id, exc, extra={"event": "cron.session_failed"})
                    return
                report.sessions += 1
                report.saved += result.saved
                report.exited += result.deleted
                if result.text is not None:
                    report.responses.append((session_id, result.text))
                if on_result is not None:
                    on_result(session_id, result)

        after: str | None = None
        while True:
            ids = await self.runtime.store.cron_session_ids(interviews, after, self.config.scheduler.page_size)
            if not ids:
                break
            await asyncio.gather(*(one(i) for i in ids))
            after = ids[-1]
        if type_ == "cron_daily":
            report.deleted_inactive = await self.delete_inactive()
        report.seconds = time.monotonic() - started
        log.info("%s %s: %d sessions, %d saved, %d exited, %d errors, %d inactive deleted in %.2f s", type_,
                 period or "(manual)", report.sessions, report.saved, report.exited, report.errors,
                 report.deleted_inactive, report.seconds, extra={"event": "cron.ran"})
        return report

    async def delete_inactive(self) -> int:
        """Delete sessions inactive longer than their interview's limit, with everything they own."""
        now = self.runtime.store_clock()
        overrides = {iv.name: iv.delete_days for iv in self.runtime.registry if iv.delete_days is not None}
        groups: list[tuple[float, list[str] | None, list[str]]] = [
            (self.config.sessions.interview_delete_days, None, list(overrides))]
        groups += [(days, [name], []) for name, days in overrides.items()]
        deleted = 0
        for days, only, exclude in groups:
            if not days:
                continue  # 0 = never
            while True:
                ids = await self.runtime.store.inactive_session_ids(now - days * 86400, only, exclude, 500)
                if not ids:
                    break
                results = await asyncio.gather(*(self.runtime.delete_session(i) for i in ids))
                deleted += sum(results)
        return deleted


class Scheduler:
    """APScheduler (3.x, asyncio) calling :meth:`Cron.fire` on the configured expressions."""

    def __init__(self, cron: Cron) -> None:
        self.cron = cron
        self._scheduler = AsyncIOScheduler(timezone=cron.tz)

    def start(self) -> None:
        for type_, trigger in self.cron.triggers.items():
            # coalesce: a backlog of missed fires runs once; the period claim makes that once per period
            self._scheduler.add_job(self._job, trigger, args=[type_], id=type_, coalesce=True, max_instances=1,
                                    misfire_grace_time=3600)
        self._scheduler.start()
        log.info("scheduler started (%s): %s", self.cron.tz,
                 ", ".join(f"{t} '{e}'" for t, e in self.cron.types.items()), extra={"event": "scheduler.started"})

    async def _job(self, type_: str) -> None:
        try:
            await self.cron.fire(type_)
        except Exception:
            log.exception("%s failed", type_, extra={"event": "cron.failed"})

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
