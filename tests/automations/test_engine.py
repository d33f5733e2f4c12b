"""The engine's step semantics: two instances of one class interleaved (AUTOMATIONS.md §2.1), the
order SkipIf/SkipAfter -> waits -> AsSoonAs, errors and OnError, threaded steps, Execute subclasses,
SendMessage, End with open paths, loops without a wait, orphaned nodes."""

from __future__ import annotations

import datetime

import pytest

from mailgate.automations import engine, flow, this
from mailgate.automations.engine import EngineConfig, Snapshot, StepRow
from mailgate.automations.errors import AutomationError, OrphanedAutomation, SnapshotError
from tests.automations.driver import Driver
from tests.automations.test_seed_examples import Nested

T0 = 1_800_000_000.0
DAY = 86400.0


class Branchy(flow.Automation):
    start = flow.Execute(this.prepare).OnError(this.err)
    choose = flow.If(this.is_vip).Then(this.vip).Else(this.normal)
    vip = flow.Execute(this.mark).Next(this.end)
    normal = flow.Execute(this.mark).AfterWaitingFor(datetime.timedelta(hours=1)).Next(this.end)
    err = flow.Execute(this.mark).Next(this.end)
    end = flow.End()

    def prepare(self, task):
        if self.data.get("broken"):
            raise ValueError(f"cannot prepare {self.data['who']}")
        self.data["prepared_by"] = task.automation.id

    def is_vip(self, task):
        return self.data["vip"]

    def mark(self, task):
        self.data.setdefault("path", []).append(task.node)
        return task.node


def test_two_instances_of_one_class_interleaved_behave_as_if_alone() -> None:
    a = Driver(Branchy, {"who": "a", "vip": True}, now=T0)
    b = Driver(Branchy, {"who": "b", "vip": False, "broken": True}, now=T0)
    c = Driver(Branchy, {"who": "c", "vip": False}, now=T0)
    b.run()  # b errs first and takes OnError ...
    a.run()  # ... which must not send a (no error) to err, nor b's branch leak into a
    c.run()
    assert b.data["path"] == ["err"] and b.state == "finished"
    assert b.step("start").state == "failed" and b.step("start").error_type == "ValueError"
    assert a.data["path"] == ["vip"] and a.state == "finished" and a.data["prepared_by"] == a.id
    assert c.step("choose").message == "False" and c.open_nodes() == ["normal"]
    a2 = Driver(Branchy, {"who": "a2", "vip": True}, now=T0)
    a2.run()  # a second run of the same If in this process works (the seed raised here)
    assert a2.data["path"] == ["vip"]
    c.until(T0 + 3600)
    assert c.data["path"] == ["normal"] and c.data["prepared_by"] == c.id
    assert "err" not in [n for n, _, _ in c.history()]


class Ordered(flow.Automation):
    wait = (flow.Execute(this.body).SkipIf(this.skip).SkipAfter(datetime.timedelta(hours=2))
            .AfterWaitingFor(datetime.timedelta(hours=1)).AsSoonAs(this.ready, recheck=600))
    end = flow.End()

    def skip(self, task):
        self.data.setdefault("calls", []).append("skip")
        return self.data.get("skip", False)

    def ready(self, task):
        self.data.setdefault("calls", []).append("ready")
        return self.data.get("ready", False)

    def body(self, task):
        self.data["ran_at"] = task.now


def test_skip_first_then_waits_from_creation_then_as_soon_as() -> None:
    d = Driver(Ordered, now=T0)
    d.run()
    assert d.data["calls"] == ["skip"]  # the wait is not over: AsSoonAs is not evaluated yet
    assert d.wake_at == T0 + 3600
    d.run(T0 + 3600)
    assert d.data["calls"] == ["skip", "skip", "ready"]
    assert d.wake_at == T0 + 3600 + 600  # AsSoonAs false: next recheck
    d.data["ready"] = True
    d.data["skip"] = True  # SkipIf is checked before AsSoonAs and wins
    d.run(T0 + 4200)
    assert d.step("wait").state == "skipped" and d.step("wait").message == "skipped"
    assert "ran_at" not in d.data and d.state == "finished"


def test_skip_after_takes_precedence_over_a_true_as_soon_as() -> None:
    d = Driver(Ordered, now=T0)
    d.run()
    d.data["ready"] = True
    d.run(T0 + 7200)  # both due at once: skipped, the body never runs
    assert d.step("wait").state == "skipped" and "ran_at" not in d.data
    e = Driver(Ordered, {"ready": True}, now=T0)
    e.run()
    e.run(T0 + 3600)
    assert e.data["ran_at"] == T0 + 3600 and e.step("wait").message == "OK"


class Recheck(flow.Automation):
    default = flow.Execute().AsSoonAs(this.ready)
    events_only = flow.Execute().AsSoonAs(this.ready, recheck=None)
    end = flow.End()

    def ready(self, task):
        return self.data.get("ready", False)


def test_as_soon_as_rechecks_at_the_configured_interval_or_on_events_only() -> None:
    d = Driver(Recheck, now=T0, config=EngineConfig(recheck_interval=60))
    d.run()
    assert d.wake_at == T0 + 60
    d.data["ready"] = True
    d.run(T0 + 60)
    assert d.step("default").state == "done" and d.step("events_only").state == "done"  # true on entry
    d2 = Driver(Recheck, now=T0)
    d2.data["ready"] = True
    d2.run()
    d2.data["ready"] = False
    assert d2.state == "finished"
    d3 = Driver(Recheck, now=T0)
    d3.run()
    d3.data["ready"] = True
    d3.run(T0 + 60)
    assert d3.state == "finished"
    snap = Snapshot("x", {}, [StepRow("s1", "events_only", "waiting", T0)])
    out = engine.advance(Recheck, snap, now=T0)
    assert out.wake_at is None and out.state == "running"  # recheck=None: no timer, messages only


class Boom(flow.Automation):
    start = flow.Execute(this.explode)
    end = flow.End()

    def explode(self, task):
        raise RuntimeError("the relay is on fire")


def test_an_uncaught_error_fails_the_automation_with_its_traceback() -> None:
    d = Driver(Boom, now=T0)
    out = d.run()
    step = d.step("start")
    assert d.state == "failed" and out.wake_at is None
    assert step.state == "failed" and step.error_type == "RuntimeError"
    assert step.error_message == "the relay is on fire"
    assert step.message == "RuntimeError('the relay is on fire')"
    assert "in explode" in (step.error_trace or "") and "Traceback" in (step.error_trace or "")
    assert d.open_nodes() == []
    d.run(T0 + DAY)  # a failed automation does not move
    assert len(d.rows) == 1


class Storable(flow.Automation):
    start = flow.Execute(this.bad)
    end = flow.End()

    def bad(self, task):
        self.data["thing"] = object()


def test_data_the_codec_cannot_store_fails_the_step() -> None:
    d = Driver(Storable, now=T0)
    d.run()
    assert d.state == "failed" and d.step("start").error_type == "AnswersError"


class Threaded(flow.Automation):
    start = flow.Execute(this.slow, "report", threaded=True, size=3)
    next_ = flow.Execute(this.mark)
    end = flow.End()

    def slow(self, task, name, *, size):
        return f"{name}:{size}"

    def mark(self, task):
        self.data["moved_on"] = True


def test_threaded_steps_become_task_requests_and_the_automation_moves_on() -> None:
    d = Driver(Threaded, now=T0)
    out = d.run()
    step = d.step("start")
    assert out.tasks == [engine.TaskRequest(step.id, "start")]
    assert step.state == "running" and step.message == "threaded" and step.attempts == 1
    assert d.data["moved_on"] is True and d.state == "finished"  # its open task is no open path
    result = engine.call_threaded(Threaded, d.id, d.data, step, now=T0)
    assert result == "report:3"  # threaded=True was never passed to the callable


class SendMail(flow.Execute):
    def method(self, task, mail_id, *, urgent=False):
        task.data.setdefault("mails", []).append([mail_id, urgent])
        return mail_id


class Subclassed(flow.Automation):
    welcome = SendMail("welcome")
    urgent = SendMail("late", urgent=True)
    noop = flow.Execute()
    end = flow.End()


def test_execute_subclasses_implement_method() -> None:
    d = Driver(Subclassed, now=T0)
    d.run()
    assert d.data["mails"] == [["welcome", False], ["late", True]]
    assert d.step("welcome").result == "welcome" and d.step("noop").message == "OK"


class Then(flow.Automation):
    start = flow.If(this.flag).Then(this.on_true)
    after = flow.Execute(this.mark)
    end = flow.End()

    def flag(self, task):
        return True

    def on_true(self, task):
        self.data["then_ran"] = True
        return 42

    def mark(self, task):
        self.data["after"] = True


def test_if_then_with_a_callable_runs_it_and_goes_on() -> None:
    d = Driver(Then, now=T0)
    d.run()
    assert d.data == {"then_ran": True, "after": True}
    assert d.step("start").message == "True" and d.step("start").result == 42


class Other(flow.Automation):
    end = flow.End()

    def receive_hello(self, token, data):
        return None


class Sender(flow.Automation):
    start = flow.SendMessage(Other, "hello", token="t", data={"n": 1})
    direct = flow.SendMessage(this.target, "hello")
    from_code = flow.Execute(this.talk)
    end = flow.End()

    def target(self, task):
        return "0" * 32

    def talk(self, task):
        self.send_message("note", "me", {"x": 1})
        Other.dispatch_message("f" * 32, "hello")


def test_messages_sent_are_recorded_never_delivered_in_process() -> None:
    d = Driver(Sender, now=T0)
    out = d.run()
    sent = [(m.automation_id, m.broadcast_class, m.message, m.token, m.data) for m in out.sent]
    assert sent == [
        (None, Other.get_automation_class_name(), "hello", "t", {"n": 1}),
        ("0" * 32, None, "hello", None, None),
        (d.id, None, "note", "me", {"x": 1}),
        ("f" * 32, None, "hello", None, None),
    ]
    assert [m.step_id for m in out.sent] == [d.step("start").id, d.step("direct").id] + [d.step("from_code").id] * 2
    assert d.queue == [] and d.consumed == []  # nothing came back to this automation in this run


def test_end_with_open_paths_fails_the_automation() -> None:
    snap = Snapshot("x", {}, [StepRow("s1", "end", "waiting", T0), StepRow("s2", "wait", "waiting", T0)])
    out = engine.advance(Recheck2, snap, now=T0)
    end = [s for s in out.updated if s.id == "s1"][0]
    assert out.state == "failed" and end.error_type == "OpenPaths" and "wait" in (end.error_message or "")


class Recheck2(flow.Automation):
    wait = flow.Execute().AfterWaitingFor(datetime.timedelta(days=1))
    end = flow.End()


class Spin(flow.Automation):
    a = flow.Execute().Next(this.a)


def test_a_loop_without_a_wait_fails_instead_of_spinning() -> None:
    d = Driver(Spin, now=T0, config=EngineConfig(max_steps=50))
    d.run()
    assert d.state == "failed" and len(d.rows) == 51
    assert list(d.rows.values())[-1].error_type == "StepLimit"


def test_an_open_step_at_a_removed_node_is_orphaned() -> None:
    snap = Snapshot("x", {}, [StepRow("s1", "gone", "waiting", T0)])
    with pytest.raises(OrphanedAutomation) as info:
        engine.advance(Recheck2, snap, now=T0)
    assert info.value.nodes == ["gone"]


def test_the_snapshot_is_not_modified() -> None:
    rows = [StepRow("s1", "wait", "waiting", T0)]
    data = {"k": [1]}
    out = engine.advance(Recheck2, Snapshot("x", data, rows), now=T0 + DAY)
    assert rows[0].state == "waiting" and data == {"k": [1]}
    assert [s.state for s in out.updated] == ["done"] and out.state == "finished"


class Uncopyable:
    def __deepcopy__(self, memo):
        raise AssertionError("a runtime handle must not be copied")


def test_task_handles_in_data_are_shared_not_copied() -> None:
    from mailgate.core.tasks import Task

    task = Task("t1")
    task._book = Uncopyable()  # type: ignore[assignment]
    out = engine.advance(Recheck2, Snapshot("x", {"job": task, "list": [task]}, [StepRow("s1", "wait", "waiting", T0)]),
                         now=T0)
    assert out.data["job"] is task and out.data["list"][0] is task


class Inspect(flow.Automation):
    start = flow.Execute(this.look).AfterWaitingFor(datetime.timedelta(hours=2))
    mail = flow.Execute(this.send_mail)
    end = flow.End()

    def look(self, task):
        self.data["seen"] = {
            "live": task.data is self.data, "automation": task.automation is self, "id": task.id,
            "node": task.node, "created": task.created, "attempt": task.attempt,
            "hours": task.hours_since_created(), "answers": dict(task.answers),
        }
        task.answers["touched"] = True

    def send_mail(self, task):
        task.send_email(to="a@example.org")


def test_the_step_context() -> None:
    answers = {"name": "Ada"}
    d = Driver(Inspect, now=T0, answers=answers, session_id="s1")
    d.run()
    d.run(T0 + 7200)
    seen = d.data["seen"]
    step = d.step("start")
    assert seen == {"live": True, "automation": True, "id": step.id, "node": "start",
                    "created": datetime.datetime.fromtimestamp(T0, datetime.UTC), "attempt": 1, "hours": 2.0,
                    "answers": {"name": "Ada"}}
    assert answers["touched"] is True  # answers are live: the runner saves them with the commit
    mail = d.step("mail")
    assert d.state == "failed" and mail.error_type == "AutomationError"  # no runner: no send_email hook
    assert "needs the automations runner" in (mail.error_message or "")


class Waits(flow.Automation):
    naive = flow.Execute().AfterWaitingUntil(datetime.datetime(2027, 1, 15, 9, 0))
    a_day = flow.Execute().AfterWaitingUntil(datetime.date(2027, 1, 16))
    bad = flow.Execute().AfterWaitingFor(this.broken_delta)
    end = flow.End()

    def broken_delta(self, task):
        return "soon"


def test_wait_values_naive_datetimes_dates_and_bad_values() -> None:
    zone = "Europe/Berlin"
    start = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC).timestamp()
    d = Driver(Waits, now=start, config=EngineConfig(timezone=zone))
    d.run()
    assert d.wake_at == datetime.datetime(2027, 1, 15, 8, 0, tzinfo=datetime.UTC).timestamp()  # 09:00 CET
    d.until(d.wake_at)
    assert d.wake_at == datetime.datetime(2027, 1, 15, 23, 0, tzinfo=datetime.UTC).timestamp()  # midnight CET
    d.until(d.wake_at)
    bad = d.step("bad")
    assert d.state == "failed" and bad.error_type == "TypeError" and "a timedelta" in (bad.error_message or "")


def test_nodes_hold_no_run_state() -> None:
    before = {name: dict(vars(Branchy.get_node(name))) for name in Branchy.node_names()}
    for n in range(6):
        Driver(Branchy, {"who": n, "vip": n % 2 == 0, "broken": n % 3 == 0}, now=T0).until(T0 + 7200)
    after = {name: dict(vars(Branchy.get_node(name))) for name in Branchy.node_names()}
    assert after == before


def test_a_threaded_step_is_finished_by_its_task_outcome() -> None:
    d = Driver(Threaded, now=T0)
    d.run()
    step = d.step("start")
    done = engine.threaded_done(step, finished_at=T0 + 5, result="report:3")
    assert (done.state, done.message, done.result, done.finished_at) == ("done", "OK", "report:3", T0 + 5)
    failed = engine.threaded_done(step, finished_at=T0 + 5, error=ValueError("disk"), trace="Traceback ...")
    assert (failed.state, failed.error_type, failed.error_message, failed.error_trace) == (
        "failed", "ValueError", "disk", "Traceback ...")
    assert step.state == "running"  # the row given is not modified
    with pytest.raises(AutomationError, match="not a running threaded step"):
        engine.threaded_done(done, finished_at=T0 + 6)


def test_a_snapshot_without_the_split_step_is_the_runner_s_error_not_a_step_error() -> None:
    snap = Snapshot("x", {}, [StepRow("j1", "inner_join", "waiting", T0, split_id="missing")])
    with pytest.raises(SnapshotError, match="lacks Split step missing"):
        engine.advance(Nested, snap, now=T0)
