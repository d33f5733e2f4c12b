"""Repeat (fixed intervals from the stored start, At(h, m) daily across both DST changes, missed
periods firing once) and the "reply or remind" automation of AUTOMATIONS.md §5.1 written with the DSL."""

from __future__ import annotations

import datetime
import zoneinfo

from mailgate.automations import flow, this
from mailgate.automations.engine import EngineConfig
from mailgate.core.context import User
from tests.automations.driver import Driver

T0 = 1_800_000_000.0
MIN = 60.0
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


class Every30(flow.Automation):
    tick = flow.Execute(this.work)
    again = flow.Repeat().EveryNMinutes(30)

    def work(self, task):
        self.data.setdefault("runs", []).append(task.now)


def test_every_n_minutes_fires_at_start_plus_k_intervals() -> None:
    d = Driver(Every30, now=T0 + 7)
    d.run()
    d.until(T0 + 7 + 3 * 3600)
    assert d.data["runs"] == [T0 + 7 + k * 30 * MIN for k in range(7)]
    assert d.data["_again_start"] == T0 + 7  # the stored start point
    assert d.wake_at == T0 + 7 + 7 * 30 * MIN


def test_missed_periods_fire_once() -> None:
    d = Driver(Every30, now=T0)
    d.run()
    d.run(T0 + 3 * 30 * MIN + 10 * MIN)  # three periods passed while nothing ran
    assert d.data["runs"] == [T0, T0 + 100 * MIN]
    assert d.wake_at == T0 + 4 * 30 * MIN  # back on the start + k·30 min grid


class Nightly(flow.Automation):
    report = flow.Execute(this.work)
    loop = flow.Repeat(this.report).At(21, 0)

    def work(self, task):
        self.data.setdefault("runs", []).append(task.now)


def local(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, BERLIN)


def test_at_fires_daily_at_local_time_across_both_dst_changes() -> None:
    config = EngineConfig(timezone="Europe/Berlin")
    for first, last in (((2026, 3, 26), (2026, 4, 2)), ((2026, 10, 22), (2026, 10, 29))):
        start = datetime.datetime(*first, 12, 0, tzinfo=BERLIN).timestamp()
        end = datetime.datetime(*last, 12, 0, tzinfo=BERLIN).timestamp()
        d = Driver(Nightly, now=start, config=config)
        d.run()
        d.until(end)
        fires = [local(t) for t in d.data["runs"][1:]]  # the first run is the start itself
        assert [(f.hour, f.minute) for f in fires] == [(21, 0)] * 7
        assert [f.date() for f in fires] == [datetime.date(*first) + datetime.timedelta(days=i) for i in range(7)]
        gaps = {fires[i + 1].timestamp() - fires[i].timestamp() for i in range(6)}
        assert gaps == {86400.0, 82800.0} if first[1] == 3 else gaps == {86400.0, 90000.0}


class Gap(flow.Automation):
    work = flow.Execute(this.mark)
    loop = flow.Repeat().At(2, 30)

    def mark(self, task):
        self.data.setdefault("runs", []).append(task.now)


def test_at_inside_the_spring_forward_gap_fires_once_after_it() -> None:
    config = EngineConfig(timezone="Europe/Berlin")
    d = Driver(Gap, now=datetime.datetime(2026, 3, 28, 12, tzinfo=BERLIN).timestamp(), config=config)
    d.run()
    d.until(datetime.datetime(2026, 3, 30, 12, tzinfo=BERLIN).timestamp())
    fires = [local(t) for t in d.data["runs"][1:]]
    assert [(f.month, f.day, f.hour, f.minute) for f in fires] == [(3, 29, 3, 30), (3, 30, 2, 30)]


class CaseForm:
    def clean(self, values):
        return {"closed": bool(values.get("closed"))}


class ReplyOrRemind(flow.Automation):
    """AUTOMATIONS.md §5.1: mail, wait up to 3 days for a reply, thank or remind, wait again, then a
    caseworker takes over."""

    start = flow.Execute(this.ask)
    wait = flow.Execute().AsSoonAs(this.replied).SkipAfter(datetime.timedelta(days=3))
    branch = flow.If(this.replied).Then(this.thank).Else(this.remind)
    thank = flow.Execute(this.send_thanks).Next(this.end)
    remind = flow.Execute(this.send_reminder)
    wait_again = flow.Execute().AsSoonAs(this.replied).SkipAfter(datetime.timedelta(days=3))
    branch_again = flow.If(this.replied).Then(this.thank).Else(this.give_up)
    give_up = flow.Form(CaseForm, description="No reply after two mails").Permission("caseworker")
    end = flow.End()

    def ask(self, task):
        task.send_email(to=self.data["to"], subject="Your documents")

    def replied(self, task):
        return self.data.get("replied", False)

    def send_thanks(self, task):
        task.send_email(to=self.data["to"], subject="Thank you")

    def send_reminder(self, task):
        task.send_email(to=self.data["to"], subject="Reminder")

    def receive_email(self, token, data):
        self.data["replied"] = True


DAYS3 = 3 * 86400.0


def reply_driver() -> tuple[Driver, list[str]]:
    mails: list[str] = []
    d = Driver(ReplyOrRemind, {"to": "a@example.org"}, now=T0,
               hooks={"send_email": lambda **kw: mails.append(kw["subject"])})
    d.run()
    return d, mails


def test_a_reply_reaches_thank_at_once_and_sends_one_thank_you() -> None:
    d, mails = reply_driver()
    assert d.wake_at == T0 + 60  # the AsSoonAs recheck; the SkipAfter timer is later
    d.send("email", "docs", {"address": "a@example.org"})
    d.run(T0 + 3600)
    assert mails == ["Your documents", "Thank you"]
    assert d.state == "finished"
    assert [(n, m) for n, _, m in d.history()] == [
        ("start", "OK"), ("wait", "OK"), ("branch", "True"), ("thank", "OK"), ("end", "OK")]


def test_no_reply_reminds_once_then_opens_the_caseworker_form() -> None:
    d, mails = reply_driver()
    d.until(T0 + DAYS3 + 1)
    assert mails == ["Your documents", "Reminder"]
    d.until(T0 + 2 * DAYS3 + 2)
    assert mails == ["Your documents", "Reminder"]
    form = d.step("give_up", "interaction")
    assert form.assignee_privileges == ["caseworker"]
    assert [(n, m) for n, _, m in d.history()] == [
        ("start", "OK"), ("wait", "skipped"), ("branch", "False"), ("remind", "OK"),
        ("wait_again", "skipped"), ("branch_again", "False"), ("give_up", None)]
    d.submit(form.id, User(id="cw", privileges=("caseworker",)), {"closed": True})
    assert d.state == "finished" and d.data["give_up"] == {"closed": True}


def test_reply_and_timeout_at_the_same_instant_take_exactly_one_branch() -> None:
    d, mails = reply_driver()
    d.until(T0 + DAYS3 - 1)
    d.send("email", "docs", {})
    d.run(T0 + DAYS3)  # the SkipAfter timer and the reply are both due now
    branches = [n for n, s, _ in d.history() if n in ("thank", "remind")]
    assert len(branches) == 1
    assert mails.count("Thank you") + mails.count("Reminder") == 1
    assert d.step("wait").state == "skipped" and d.step("branch").message == "True"
