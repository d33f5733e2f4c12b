"""The seed's WebinarWorkflow and IssueDiscussion, ported near verbatim, driven through the engine with
a moving clock; and two instances of one class interleaved (the regression for AUTOMATIONS.md §2.1)."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

from mailgate.automations import flow, this
from mailgate.automations.engine import OPEN_STATES
from mailgate.core.context import User
from tests.automations.driver import Driver

T0 = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC).timestamp()
HOUR = 3600.0


def log(task: object, what: str) -> None:
    task.data.setdefault("log", []).append([what, task.now])  # type: ignore[attr-defined]


webinar = SimpleNamespace(
    send_welcome_mail=lambda task: log(task, "welcome"),
    send_reminder_mail=lambda task: log(task, "reminder"),
    send_replay_mail=lambda task: log(task, "replay"),
    # A callable wait, re-evaluated at every wake-up: moving the webinar moves the reminder.
    reminder_time=lambda task: task.data["webinar_at"] - datetime.timedelta(hours=1),
)


class WebinarWorkflow(flow.Automation):
    start =             flow.Execute(this.init)
    send_welcome_mail = flow.Execute(webinar.send_welcome_mail)
    send_reminder =     (flow.Execute(webinar.send_reminder_mail)
                            .AfterWaitingUntil(webinar.reminder_time))
    send_replay_offer = (flow.Execute(webinar.send_replay_mail)
                            .AfterWaitingFor(datetime.timedelta(minutes=150)))
    end =               flow.End()

    def init(self, task):
        self.data["initialised"] = True
        log(task, "init")


def at(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


def test_webinar_workflow_fires_each_mail_at_or_after_its_due_time() -> None:
    webinar_at = at(T0 + 48 * HOUR)
    d = Driver(WebinarWorkflow, {"webinar_at": webinar_at}, now=T0)
    d.run()
    assert [e[0] for e in d.data["log"]] == ["init", "welcome"]
    assert d.open_nodes() == ["send_reminder"]
    assert d.wake_at == T0 + 47 * HOUR
    d.run(T0 + 47 * HOUR - 1)  # a wake-up a second early runs nothing
    assert [e[0] for e in d.data["log"]] == ["init", "welcome"]
    # The webinar moves a day later: the callable is evaluated again and the timer moves with it.
    d.data["webinar_at"] = at(T0 + 72 * HOUR)
    d.run(T0 + 47 * HOUR)
    assert d.wake_at == T0 + 71 * HOUR
    d.until(T0 + 80 * HOUR)
    fired = {what: t for what, t in d.data["log"]}
    assert fired["reminder"] >= T0 + 71 * HOUR
    assert fired["replay"] >= fired["reminder"] + 150 * 60
    assert d.state == "finished"
    assert [(n, s) for n, s, _ in d.history()] == [
        ("start", "done"), ("send_welcome_mail", "done"), ("send_reminder", "done"),
        ("send_replay_offer", "done"), ("end", "done")]


class IssueList:  # the seed binds a Django model here; in mailgate it is a plain class attribute
    pass


class MailModeration:
    fields = {"approved": "bool"}

    def clean(self, values):
        if not isinstance(values.get("approved"), bool):
            raise flow.ValidationError({"approved": "yes or no"})
        return {"approved": values["approved"]}


forms = SimpleNamespace(MailModeration=MailModeration)


class IssueDiscussion(flow.Automation):
    issue_list = IssueList

    start =         flow.Execute(this.publish_announcement)
    parallel =      flow.Split().Next(this.moderation).Next(this.warning).Next(this.conf_call)

    moderation =    flow.If(this.no_new_mails).Then(this.repeat)
    moderate =      flow.Form(forms.MailModeration).Group(name='Moderators')
    repeat =        (flow.If(this.moderation_deadline_reached)
                        .Then(this.join)
                        .Else(this.moderation)
                    ).AfterWaitingFor(datetime.timedelta(hours=1))

    warning =       (flow.Execute(this.send_deadline_warning)
                        .AfterWaitingFor(datetime.timedelta(days=6))
                        .Next(this.join))

    conf_call =     flow.If(this.conf_call_this_week).Then(this.moderate_call).Else(this.join)
    moderate_call = flow.Execute(this.block_calendar)

    join          = flow.Join()
    evaluate      = flow.Execute(this.evaluate_discussion)  # the seed's this.evaluate: a method named
                                                            # like the node is refused (it replaces it)
    end           = flow.End()

    def publish_announcement(self, task_instance):
        log(task_instance, "announce")

    def no_new_mails(self, task_instance):
        return not self.data.get("new_mails")

    def moderation_deadline_reached(self, task_instance):
        return task_instance.now >= self.data["deadline"]

    def send_deadline_warning(self, task_instance):
        log(task_instance, "warning")

    def conf_call_this_week(self, task_instance):
        return self.data.get("call", False)

    def block_calendar(self, task_instance):
        log(task_instance, "calendar")

    def evaluate_discussion(self, task_instance):
        log(task_instance, "evaluate")
        return {"moderated": self.data.get("moderate", {}).get("approved")}


MODERATOR = User(id="mod1", privileges=("Moderators",))


def test_issue_discussion_splits_loops_hourly_asks_moderators_and_joins() -> None:
    d = Driver(IssueDiscussion, {"deadline": T0 + 6 * 24 * HOUR + 30 * 60, "call": True}, now=T0)
    d.run()
    # Three paths: moderation waits in its hourly loop, warning waits 6 days, the call path ran and
    # already waits at the Join.
    assert sorted(d.open_nodes()) == ["join", "repeat", "warning"]
    assert d.step("join").message == "Open Join"
    assert d.step("parallel").state == "done"
    assert {s.split_id for s in d.rows.values() if s.node in ("moderation", "warning", "conf_call")} == {d.step("parallel").id}
    checks = []
    for hour in range(1, 4):
        d.until(T0 + hour * HOUR)
        checks.append(d.step("repeat").created_at)
    assert checks == [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]  # the If loop ran once an hour
    assert all(d.step(n, "done").message == "False" for n in ("repeat",))
    # New mail: the next hourly pass opens the form for the Moderators group.
    d.data["new_mails"] = True
    d.until(T0 + 4 * HOUR)
    form = d.step("moderate", "interaction")
    assert form.assignee_privileges == ["Moderators"] and form.assignee_user is None
    assert "repeat" not in [s.node for s in d.rows.values() if s.state == "waiting"]  # the path is at the form
    d.now = T0 + 4 * HOUR + 60
    d.data["new_mails"] = False
    d.submit(form.id, MODERATOR, {"approved": True})
    assert d.data["moderate"] == {"approved": True}
    # Days pass: the warning fires after six days, the loop reaches the deadline, all paths join.
    d.until(T0 + 7 * 24 * HOUR)
    fired = {what: t for what, t in d.data["log"]}
    assert fired["warning"] >= T0 + 6 * 24 * HOUR
    assert fired["calendar"] == T0
    assert fired["evaluate"] >= T0 + 6 * 24 * HOUR + 30 * 60
    assert d.state == "finished"
    joined = [s for s in d.rows.values() if s.node == "join"]
    assert sorted((s.state, s.message) for s in joined) == [("joined", "Joined")] * 3
    assert d.step("evaluate").result == {"moderated": True}
    assert not [s for s in d.rows.values() if s.state in OPEN_STATES]


def test_issue_discussion_without_call_joins_from_the_else_branch() -> None:
    d = Driver(IssueDiscussion, {"deadline": T0 + 2 * HOUR}, now=T0)
    d.run()
    assert d.step("conf_call").message == "False"
    assert "moderate_call" not in [s.node for s in d.rows.values()]
    d.until(T0 + 7 * 24 * HOUR)
    assert d.state == "finished"


class Nested(flow.Automation):
    start = flow.Split().Next(this.a).Next(this.inner)
    a = flow.Execute(this.mark).AfterWaitingFor(datetime.timedelta(minutes=5)).Next(this.outer_join)
    inner = flow.Split().Next(this.b).Next(this.c)
    b = flow.Execute(this.mark).Next(this.inner_join)
    c = flow.Execute(this.mark).AfterWaitingFor(datetime.timedelta(minutes=10))
    inner_join = flow.Join()
    after_inner = flow.Execute(this.mark)
    outer_join = flow.Join()
    end = flow.End()

    def mark(self, task):
        log(task, task.node)


def test_nested_split_joins_inner_paths_before_the_outer_join() -> None:
    d = Driver(Nested, now=T0)
    d.run()
    assert sorted(d.open_nodes()) == ["a", "c", "inner_join"]
    d.until(T0 + 5 * 60)
    assert sorted(d.open_nodes()) == ["c", "inner_join", "outer_join"]
    d.until(T0 + 10 * 60)
    assert d.state == "finished"
    assert [w for w, _ in d.data["log"]] == ["b", "a", "c", "after_inner"]
    outer = d.step("start").id
    inner = d.step("inner").id
    assert d.step("inner").split_id == outer
    assert d.step("after_inner").split_id == outer  # after the inner Join the path is the outer one again
    assert sorted(s.split_id for s in d.rows.values() if s.node == "inner_join") == sorted([inner, inner])
