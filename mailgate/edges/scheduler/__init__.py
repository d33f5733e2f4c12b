"""The scheduler edge: APScheduler's cron triggers say when each scheduled type is due, and its
asyncio scheduler calls the core's :meth:`~mailgate.core.cron.Cron.fire` on time."""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from mailgate.config import Config
from mailgate.core.cron import Cron
from mailgate.errors import ConfigError, StoreError

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


class CronCalendar:
    """The configured schedule on APScheduler's cron triggers (a :class:`mailgate.core.cron.Calendar`)."""

    def __init__(self, config: Config) -> None:
        self.tz = ZoneInfo(config.scheduler.timezone)
        self.types = schedule(config)
        self.triggers = {name: CronTrigger.from_crontab(expr, timezone=self.tz) for name, expr in self.types.items()}

    def previous_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None:
        trigger = self.triggers[type_]
        start = now - LOOKBACK.get(type_, dt.timedelta(days=32))
        fire = trigger.get_next_fire_time(None, start)
        previous = None
        while fire is not None and fire <= now:
            previous = fire
            fire = trigger.get_next_fire_time(fire, self._after(fire))
        return previous

    def next_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None:
        result: dt.datetime | None = self.triggers[type_].get_next_fire_time(None, self._after(now))
        return result

    def _after(self, moment: dt.datetime) -> dt.datetime:
        # One second later in real time. Aware datetime arithmetic is wall-clock arithmetic and drops
        # `fold`, which on the night the clocks go back steps *backwards* (and loops forever).
        return (moment.astimezone(dt.UTC) + dt.timedelta(seconds=1)).astimezone(self.tz)


class Scheduler:
    """APScheduler (3.x, asyncio) calling :meth:`Cron.fire` on the configured expressions."""

    def __init__(self, cron: Cron, calendar: CronCalendar) -> None:
        self.cron = cron
        self.calendar = calendar
        self._scheduler = AsyncIOScheduler(timezone=calendar.tz)

    def start(self) -> None:
        for type_, trigger in self.calendar.triggers.items():
            # coalesce: a backlog of missed fires runs once; the period claim makes that once per period
            self._scheduler.add_job(self._job, trigger, args=[type_], id=type_, coalesce=True, max_instances=1,
                                    misfire_grace_time=3600)
        self._scheduler.start()
        log.info("scheduler started (%s): %s", self.cron.tz,
                 ", ".join(f"{t} '{e}'" for t, e in self.cron.types.items()), extra={"event": "scheduler.started"})

    async def _job(self, type_: str) -> None:
        try:
            await self.cron.fire(type_)
        except StoreError as exc:  # the store says what to do; the next fire (or the catch-up) runs the period
            log.error("%s failed: %s", type_, exc, extra={"event": "cron.failed"})
        except Exception:
            log.exception("%s failed", type_, extra={"event": "cron.failed"})

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
