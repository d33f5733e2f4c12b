"""Scheduled tasks with a controllable clock, on a real SQLite file."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import smtplib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailgate.config import Config
from mailgate.core.cron import Cron, period_key
from mailgate.daemon.lifecycle import Daemon
from mailgate.errors import ActionError
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, wait_until
from tests.helpers import runtime_of as rt
from tests.pg import create_database, drop_database

pytestmark = pytest.mark.asyncio
UTC = dt.UTC


class Clock:
    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: dt.datetime) -> dt.datetime:
        self.now = when.timestamp()
        return when


def cfg(tmp_path: Path, **tables: object) -> Config:
    return make_config(tmp_path, interviews={"modules": ("mailgate.demo.cron", "mailgate.demo.email"),
                                             "paths": (str(Path(__file__).parent.parent / "interviews" / "testing.py"),)},
                       **tables)


def cron(d: Daemon) -> Cron:
    assert d.cron is not None
    return d.cron


async def cron_session(d: Daemon, **answers: object) -> str:
    rec = await rt(d).create_session("testing", {"allow_cron": True, **answers})
    return rec.id


async def test_counter_demo_exits_after_48_hours(tmp_path: Path) -> None:
    start = dt.datetime(2026, 1, 5, 0, 30, tzinfo=UTC)
    clock = Clock(start)
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        sid = (await rt(d).create_session("cron-counter")).id
        await rt(d).run_action(sid, "start")
        for hour in range(1, 49):
            report = await cron(d).fire("cron_hourly", clock.set(start + dt.timedelta(hours=hour)))
            assert report is not None and report.sessions == 1
        assert (await rt(d).get_answers(sid))["counter"] == 48
        assert await cron(d).fire("cron_hourly", clock.set(start + dt.timedelta(hours=48, minutes=10))) is None
        report = await cron(d).fire("cron_hourly", clock.set(start + dt.timedelta(hours=49)))
        assert report is not None and report.exited == 1
        assert await rt(d).store.get_session(sid) is None


async def test_each_period_runs_once_across_two_daemons(tmp_path: Path) -> None:
    when = dt.datetime(2026, 2, 10, 9, 0, tzinfo=UTC)
    clock = Clock(when)
    config = cfg(tmp_path)
    async with Daemon(config, roles=(), clock=clock) as a, Daemon(config, roles=(), clock=clock) as b:
        sid = await cron_session(a)
        reports = await asyncio.gather(cron(a).fire("cron_daily", when), cron(b).fire("cron_daily", when))
        assert sorted(r is None for r in reports) == [False, True]
        assert await cron(b).fire("cron_daily", when + dt.timedelta(hours=5)) is None  # same day
        assert (await rt(b).get_answers(sid))["daily_runs"] == 1
        assert await cron(b).fire("cron_daily", when + dt.timedelta(days=1)) is not None


async def test_missed_daily_fires_once_after_restart(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    config = cfg(tmp_path)
    async with Daemon(config, roles=(), clock=clock) as d:
        sid = await cron_session(d)
        assert await cron(d).fire("cron_daily") is not None  # 2026-03-02 ran
    clock.set(dt.datetime(2026, 3, 6, 10, 0, tzinfo=UTC))  # down for 3 daily fires
    async with Daemon(config, roles=("scheduler",), clock=clock) as d:
        async def caught_up() -> bool:
            return (await rt(d).get_answers(sid))["daily_runs"] == 2

        await wait_until(caught_up, what="the missed cron_daily to run")
        assert d._catch_up_task is not None
        await asyncio.wait_for(d._catch_up_task, 10)
        assert (await rt(d).store.last_periods())["cron_daily"][0] == "2026-03-06"
        assert (await rt(d).get_answers(sid))["daily_runs"] == 2  # once, not once per missed day
        assert await cron(d).catch_up() == []  # nothing left to catch up


async def test_daylight_saving_neither_skips_nor_doubles(tmp_path: Path) -> None:
    paris = ZoneInfo("Europe/Paris")
    config = cfg(tmp_path, scheduler={"timezone": "Europe/Paris", "daily": "30 2 * * *", "hourly": "0 * * * *"})
    async with Daemon(config, roles=()) as d:
        c = cron(d)
        sid = await cron_session(d)
        expected_runs = 0
        # 02:30 does not exist on 2026-03-29 and happens twice on 2026-10-25 in Paris
        for first, last in [(dt.date(2026, 3, 27), dt.date(2026, 4, 1)), (dt.date(2026, 10, 23), dt.date(2026, 10, 28))]:
            fires = []
            fire = c.next_fire("cron_daily", dt.datetime.combine(first, dt.time(0, 0), paris))
            while fire is not None and fire.date() <= last:
                fires.append(fire)
                fire = c.next_fire("cron_daily", fire)
            for fire in fires:  # every time the trigger fires, whatever it does around the change
                await c.fire("cron_daily", fire)
            days = (last - first).days + 1
            expected_runs += days
            assert sorted({period_key("cron_daily", f) for f in fires}) == [
                (first + dt.timedelta(days=i)).isoformat() for i in range(days)]
        assert (await rt(d).get_answers(sid))["daily_runs"] == expected_runs  # one run per local day
        # hourly: every real hour is one period, including the repeated local hour
        start = dt.datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
        hours = [period_key("cron_hourly", (start + dt.timedelta(hours=h)).astimezone(paris)) for h in range(6)]
        assert len(set(hours)) == 6


async def test_cron_runs_as_cron_user_and_can_start_background_actions(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 4, 1, 12, 0, tzinfo=UTC))
    async with Daemon(cfg(tmp_path), roles=("worker",), clock=clock) as d:
        sid = await cron_session(d)
        report = await cron(d).fire("cron_weekly")
        assert report is not None and report.sessions == 1
        answers = await rt(d).get_answers(sid)
        assert answers["cron_user"] == {"id": "cron", "cron": True}
        assert await answers["weekly_task"].get_async(10) == {"id": "cron", "admin": False}


async def test_null_response_skips_save_and_disabled_sessions_are_skipped(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 4, 1, 12, 0, tzinfo=UTC))
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        saved = await cron_session(d)
        unsaved = await cron_session(d, no_save=True)
        disabled = (await rt(d).create_session("testing", {"allow_cron": False})).id
        report = await cron(d).run("cron_hourly")
        assert report.sessions == 2 and report.saved == 1
        assert (await rt(d).get_answers(saved))["hourly_runs"] == 1
        assert "hourly_runs" not in await rt(d).get_answers(unsaved)
        assert "hourly_runs" not in await rt(d).get_answers(disabled)
        # switching allow_cron on through an action makes the session take part
        await rt(d).run_action(disabled, "enable_cron")
        assert (await cron(d).run("cron_hourly")).sessions == 3


async def test_foreground_save_racing_cron_loses_no_update(tmp_path: Path) -> None:
    async with Daemon(cfg(tmp_path), roles=()) as d:
        sid = await cron_session(d, counter=0)
        await asyncio.gather(*(cron(d).run("cron_daily") for _ in range(10)),
                             *(rt(d).run_action(sid, "incr") for _ in range(30)))
        answers = await rt(d).get_answers(sid)
        assert answers["daily_runs"] == 10 and answers["counter"] == 30


async def test_last_access_ignores_the_cron_user(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        sid = await cron_session(d)
        clock.set(dt.datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
        await cron(d).run("cron_daily")
        before = (await rt(d).get_session(sid)).accessed_at
        assert before == dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC).timestamp()
        await rt(d).run_action(sid, "incr")
        assert (await rt(d).get_session(sid)).accessed_at == clock.now


async def test_last_access_functions_take_docassembles_arguments(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    async with Daemon(cfg(tmp_path), roles=(), clock=clock) as d:
        sid = await cron_session(d)
        clock.set(dt.datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
        await cron(d).run("cron_daily")  # a save by the cron user: not an access, unless include_cron
        clock.set(dt.datetime(2026, 5, 5, 0, 0, tzinfo=UTC))

        async def access(**kwargs: object) -> dict[str, object]:
            text = (await rt(d).run_action(sid, "access", kwargs)).text
            assert text is not None
            return dict(json.loads(text))

        assert await access() == {"days": 3.5, "hours": 84.0, "minutes": 5040.0, "time": "2026-05-01T12:00:00+00:00",
                                  "date": "2026-05-01"}
        assert (await access(include_cron=True))["days"] == 0.5
        assert (await access(include_privileges="cron"))["hours"] == 12.0
        seen = await access(timezone="America/New_York", exclude_privileges=["cron"])
        assert seen["time"] == "2026-05-01T08:00:00-04:00" and seen["hours"] == 84.0
        with pytest.raises(ActionError, match="cannot filter by privilege 'advocate'"):
            await access(include_privileges=["advocate"])
        await rt(d).run_action(sid, "incr")  # a user's save: an access
        clock.set(dt.datetime(2026, 5, 5, 6, 0, tzinfo=UTC))
        assert (await access())["hours"] == 6.0


async def test_inactive_sessions_are_deleted_with_every_trace(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    config = cfg(tmp_path, smtp={"port": 0})
    async with Daemon(config, roles=("smtp", "worker"), clock=clock, resolver=StaticResolver({})) as d:
        assert d.smtp is not None
        old = (await rt(d).create_session("email-to-case")).id
        address = (await rt(d).run_action(old, "start")).text
        assert address is not None
        port = d.smtp.port

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port) as c:
                c.sendmail("a@elsewhere.test", [address], b"Subject: hi\r\n\r\nbody\r\n")

        await asyncio.to_thread(send)
        await wait_until(lambda: _tasks_done(d, old), what="incoming_email")
        clock.set(dt.datetime(2026, 8, 1, 12, 0, tzinfo=UTC))
        fresh = (await rt(d).create_session("testing")).id  # accessed now: kept
        clock.set(dt.datetime(2026, 9, 5, 12, 0, tzinfo=UTC))  # old: 96 days idle; fresh: 35
        report = await cron(d).run("cron_daily")
        assert report.deleted_inactive == 1
        store = rt(d).store
        assert await store.get_session(old) is None and await store.get_session(fresh) is not None
        assert await store.list_tasks(session_id=old) == []
        assert await store.list_events(old) == []
        assert await store.list_emails(session_id=old) == []
        assert await store.list_mailboxes(session_id=old) == []
        raw_left = await store._read("SELECT COUNT(*) FROM raw_messages")  # type: ignore[attr-defined]
        assert raw_left[0][0] == 0
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await asyncio.to_thread(send)


@pytest.fixture(params=["sqlite", "postgres"])
def store_dsn(request: pytest.FixtureRequest) -> Iterator[str | None]:
    dsn = create_database() if request.param == "postgres" else None
    try:
        yield dsn
    finally:
        if dsn is not None:
            drop_database(dsn)


async def test_inactivity_deletion_takes_the_lease_and_spares_a_session_in_use(tmp_path: Path,
                                                                              store_dsn: str | None) -> None:
    # An action running on a session that was idle 90 days (its user came back) holds the lease:
    # cron_daily used to delete the session under it, losing the action and the session.
    clock = Clock(dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    config = cfg(tmp_path, sessions={"lock_timeout": 0.3})
    config = config.replace(store=vars(make_config(tmp_path, store_dsn=store_dsn).store))
    async with Daemon(config, roles=(), clock=clock) as d:
        busy = (await rt(d).create_session("testing")).id
        idle = (await rt(d).create_session("testing")).id
        clock.set(dt.datetime(2026, 9, 5, 12, 0, tzinfo=UTC))  # 96 days later
        store = rt(d).store
        assert await store.try_acquire_lease(busy, "other-host#1", 30, 30) is None  # a live action elsewhere
        assert (await cron(d).run("cron_daily")).deleted_inactive == 1
        assert await store.get_session(busy) is not None and await store.get_session(idle) is None
        await store.release_lease(busy, "other-host#1")
        assert (await cron(d).run("cron_daily")).deleted_inactive == 1  # idle still, and free: deleted now
        assert await store.get_session(busy) is None


async def _tasks_done(d: Daemon, sid: str) -> bool:
    tasks = await rt(d).store.list_tasks(session_id=sid)
    return bool(tasks) and all(t.done for t in tasks)


async def test_per_interview_delete_days_override(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    async with Daemon(cfg(tmp_path, sessions={"interview_delete_days": 0}), roles=(), clock=clock) as d:
        keep = (await rt(d).create_session("testing")).id
        rt(d).registry.get("cron-counter").delete_days = 10
        short = (await rt(d).create_session("cron-counter")).id
        clock.set(dt.datetime(2026, 9, 1, 12, 0, tzinfo=UTC))
        assert (await cron(d).run("cron_daily")).deleted_inactive == 1
        assert await rt(d).store.get_session(keep) is not None and await rt(d).store.get_session(short) is None
        rt(d).registry.get("cron-counter").delete_days = None


async def _run_peak(tmp_path: Path, n: int) -> int:
    tmp_path.mkdir()  # noqa: ASYNC240 - test set-up
    async with Daemon(cfg(tmp_path, scheduler={"page_size": 500, "concurrency": 32}), roles=()) as d:
        store = rt(d).store
        await asyncio.gather(*(store.create_session(f"s{i:06d}", "testing", '{"allow_cron":true}', "{}", allow_cron=True)
                               for i in range(n)))
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        report = await cron(d).run("cron_hourly")
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert report.sessions == n and report.errors == 0
        return peak


@pytest.mark.slow
async def test_memory_is_flat_in_the_number_of_sessions(tmp_path: Path) -> None:
    small = await _run_peak(tmp_path / "small", 2000)
    large = await _run_peak(tmp_path / "large", 10_000)
    # one page at a time: five times the sessions must not mean five times the memory
    assert large < small * 1.5 + 1_000_000, (small, large)


async def test_reminder_demo_sends_once_on_day_21(tmp_path: Path) -> None:
    from mailgate import record_messages

    filed = dt.datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    clock = Clock(filed)
    config = cfg(tmp_path, outbound={"default_sender": "Reminders <noreply@example.test>"})
    async with Daemon(config, roles=(), clock=clock) as d:
        sid = (await rt(d).create_session("cron-reminder")).id
        await rt(d).run_action(sid, "start", {"filing_date": "2026-07-01", "email_address": "ann@example.test"})
        sent_on = []
        with record_messages() as outbox:
            for day in range(1, 40):
                before = len(outbox)
                report = await cron(d).fire("cron_daily", clock.set(filed + dt.timedelta(days=day, hours=1)))
                assert report is not None and report.errors == 0
                if len(outbox) > before:
                    sent_on.append(day)
        assert sent_on == [21]  # more than 20 days after filing, exactly once
        assert outbox[0].to == ["ann@example.test"] and outbox[0].subject == "Hey, it's been 20 days."
        assert (await rt(d).get_answers(sid))["_internal"]["tasks"]["20 day reminder"] == 1


def cfg_000(tmp_path: Path) -> Config:
    return make_config(tmp_path, interviews={"paths": (str(Path(__file__).parent.parent / "interviews" / "reminder_000.py"),
                                                       str(Path(__file__).parent.parent / "interviews" / "testing.py"))},
                       outbound={"default_sender": "Reminders <noreply@example.test>"})


async def test_000_reminder_sends_after_20_days_and_survives_100_days_of_cron(tmp_path: Path, store_dsn: str | None,
                                                                          caplog: pytest.LogCaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mailgate import record_messages
    from mailgate.core import actions

    monkeypatch.setattr(actions, "_warned_use_cron", set())  # once per process: this test's daemon is not the first
    filed = dt.datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    clock = Clock(filed)
    config = cfg_000(tmp_path).replace(store=vars(make_config(tmp_path, store_dsn=store_dsn).store))
    async with Daemon(config, roles=(), clock=clock) as d:
        sid = (await rt(d).create_session("reminder-000")).id
        idle = (await rt(d).create_session("testing")).id  # nobody saves it: deleted after 90 days
        caplog.set_level("WARNING", logger="mailgate.core.actions")
        final = await rt(d).run_action(sid, "start", {"filing_date": "2026-07-01", "email_address": "ann@example.test"})
        assert final.text is not None  # the final screen, the page's Mako text:
        assert final.text.rstrip() == "Ok, I'll e-mail you at ann@example.test 20 days\nfrom July 1, 2026."
        sent_on, deleted_on = [], []
        with record_messages() as outbox:
            for day in range(1, 101):
                before = len(outbox)
                report = await cron(d).fire("cron_daily", clock.set(filed + dt.timedelta(days=day, hours=1)))
                assert report is not None and report.errors == 0 and report.sessions == 1  # use_cron honoured
                if len(outbox) > before:
                    sent_on.append(day)
                if report.deleted_inactive:
                    deleted_on.append(day)
        # docassemble's date_difference counts fractional days: filed on July 1 (midnight), the fire
        # on day 20 at 10:00 is 20.4 days later, past 20: the reminder goes then, and only then
        assert sent_on == [20] and outbox[0].to == ["ann@example.test"]
        assert outbox[0].subject == "Hey, it's been 20 days."
        assert deleted_on == [90]  # the idle session, 90 days and an hour after its last save
        kept = await rt(d).store.get_session(sid)
        assert kept is not None  # the cron's daily saves are activity
        assert await rt(d).store.get_session(idle) is None
        assert kept.accessed_at == filed.timestamp()  # ... but not the user's access
        deprecations = [r for r in caplog.records if getattr(r, "event", "") == "answers.use_cron_deprecated"]
        assert len(deprecations) == 1  # one line, not one per save of the 100 days

