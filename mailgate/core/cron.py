"""Scheduled tasks: ``cron_hourly``/``daily``/``weekly``/``monthly`` and custom types over sessions.

:class:`Cron` runs them: a *fire* claims its (type, period) in the store, so each period runs once
however many daemons share the store, then runs the event as the cron user on every cron-enabled
session of the interviews that define it: under the session lease, on fresh answers, in parallel up
to ``[scheduler] concurrency``, one page of sessions at a time.  When each type is due comes
from a :class:`Calendar`, which the scheduler edge builds on APScheduler's cron triggers; the same
edge calls :meth:`Cron.fire` on time.

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
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from mailgate import metrics
from mailgate.config import Config
from mailgate.core.context import CRON_USER
from mailgate.core.interviews import Registry
from mailgate.core.sessions import Sessions
from mailgate.errors import MailgateError
from mailgate.store.base import Store

log = logging.getLogger(__name__)


class Calendar(Protocol):
    """When each scheduled type fires: the scheduler edge implements it on its cron triggers."""

    tz: ZoneInfo
    types: dict[str, str]  # scheduled type -> cron expression

    def previous_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None: ...

    def next_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None: ...


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
    """Runs scheduled types over sessions; :class:`Calendar` says when they are due."""

    def __init__(self, config: Config, store: Store, registry: Registry, sessions: Sessions, calendar: Calendar,
                 holder: str) -> None:
        self._store = store
        self._registry = registry
        self._sessions = sessions
        self._holder = holder  # who claims the periods this process runs (its process id)
        self.config = config
        self.calendar = calendar
        self.tz = calendar.tz
        self.types = calendar.types

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._store.now(), self.tz)

    def previous_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None:
        """The latest scheduled fire at or before ``now``."""
        return self.calendar.previous_fire(type_, now)

    def next_fire(self, type_: str, now: dt.datetime) -> dt.datetime | None:
        """The first scheduled fire after ``now``."""
        return self.calendar.next_fire(type_, now)

    async def fire(self, type_: str, now: dt.datetime | None = None) -> CronReport | None:
        """Run the period that ``now`` falls in, unless some daemon already did; None if it did."""
        now = now or self.now()
        scheduled = self.previous_fire(type_, now) or now
        period = period_key(type_, scheduled)
        if not await self._store.claim_period(type_, period, self._holder):
            log.info("%s %s already ran", type_, period, extra={"event": "cron.already_ran"})
            return None
        return await self.run(type_, period=period)

    async def catch_up(self, now: dt.datetime | None = None) -> list[CronReport]:
        """At start-up: run once the latest period of each type that was missed while no daemon ran.

        Only types that ran before are caught up (a fresh install does not fire everything at once).
        """
        now = now or self.now()
        last = await self._store.last_periods()
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
        interviews = [iv.name for iv in self._registry if iv.has_action(type_)]
        limit = asyncio.Semaphore(self.config.scheduler.concurrency)

        async def one(session_id: str) -> None:
            async with limit:
                try:
                    result = await self._sessions.run_action(session_id, type_, {}, CRON_USER, kind="cron")
                except MailgateError as exc:
                    report.errors += 1
                    log.warning("%s on session %s failed: %s", type_, session_id, exc, extra={"event": "cron.session_failed", "session": session_id})
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
            ids = await self._store.cron_session_ids(interviews, after, self.config.scheduler.page_size)
            if not ids:
                break
            await asyncio.gather(*(one(i) for i in ids))
            after = ids[-1]
        if type_ == "cron_daily":
            report.deleted_inactive = await self.delete_inactive()
            await self._store.purge_stashes(self._store.now())  # expired ones already read as absent
            days = self.config.automations.history_days
            if days > 0:  # automations that ended more than [automations] history_days ago, with their history
                autos, steps = await self._store.delete_automation_history(self._store.now() - days * 86400)
                if autos:
                    log.info("deleted %d automations that ended more than %g days ago, with %d steps", autos, days,
                             steps, extra={"event": "automation.history_deleted"})
        report.seconds = time.monotonic() - started
        log.info("%s %s: %d sessions, %d saved, %d exited, %d errors, %d inactive deleted in %.2f s", type_,
                 period or "(manual)", report.sessions, report.saved, report.exited, report.errors,
                 report.deleted_inactive, report.seconds, extra={"event": "cron.ran"})
        metrics.CRON_LAST_SUCCESS.labels(type_).set_to_current_time()
        return report

    async def delete_inactive(self) -> int:
        """Delete sessions inactive longer than their interview's limit, with everything they own, each
        under its lease (one in use is kept)."""
        now = self._store.now()
        overrides = {iv.name: iv.delete_days for iv in self._registry if iv.delete_days is not None}
        groups: list[tuple[float, list[str] | None, list[str]]] = [
            (self.config.sessions.interview_delete_days, None, list(overrides))]
        groups += [(days, [name], []) for name, days in overrides.items()]
        deleted = 0
        for days, only, exclude in groups:
            if not days:
                continue  # 0 = never
            before = now - days * 86400
            while True:
                ids = await self._store.inactive_session_ids(before, only, exclude, 500)
                results = await asyncio.gather(*(self._sessions.delete_if_inactive(i, before) for i in ids))
                deleted += sum(results)
                if not any(results):
                    break  # none left, or only sessions in use (kept: the page would come back the same)
        return deleted
