"""Messages (dispatch order, results, require_data_parameters, dropped when finished, a message
advances the automation at once, create_on_message order) and forms (assignees, validation, first
submit stores the values, a second is refused)."""

from __future__ import annotations

import datetime

import pytest

from mailgate.automations import engine, flow, this
from mailgate.automations.errors import (
    AutomationError,
    FormAlreadyDone,
    FormForbidden,
    FormInvalid,
    FormNotFound,
)
from mailgate.core.context import ANONYMOUS, User
from tests.automations.driver import Driver

T0 = 1_800_000_000.0


class Inbox(flow.Automation):
    start = flow.Execute(this.note_start)
    wait = flow.Execute(this.note_reply).AsSoonAs(this.replied)
    end = flow.End()

    def note_start(self, task):
        self.data["started_with"] = list(self.data.get("got", []))

    def replied(self, task):
        return "reply" in self.data.get("got", [])

    def note_reply(self, task):
        self.data["replied_at"] = task.now

    def receive_ping(self, token, data):
        self.data.setdefault("got", []).append(token)
        return f"pong {token}"

    @flow.require_data_parameters(email=str, count=int)
    def receive_signup(self, token, data):
        self.data["email"] = data["email"]
        return "ok"

    def receive_broken(self, token, data):
        self.data["half"] = True
        self.send_message("never")
        raise KeyError("missing")


def test_messages_are_delivered_in_order_and_advance_at_once() -> None:
    d = Driver(Inbox, now=T0)
    d.run()
    assert d.open_nodes() == ["wait"]
    d.send("ping", "one")
    d.send("ping", "reply")
    d.send("ping", "three")  # arrives after the reply finished the automation: dropped
    d.run(T0 + 5)  # well before any recheck: the message itself advances the automation
    assert d.data["got"] == ["one", "reply"]
    assert d.data["replied_at"] == T0 + 5 and d.state == "finished"
    assert [(m.state, m.result) for m in d.consumed] == [
        ("delivered", "pong one"), ("delivered", "pong reply"), ("dropped", None)]
    assert "finished" in (d.consumed[2].error or "")


def test_require_data_parameters_unknown_receivers_and_failing_receivers() -> None:
    d = Driver(Inbox, now=T0)
    d.run()
    d.send("signup", data={"email": "a@example.org"})  # no count
    d.send("signup", data={"email": "a@example.org", "count": "x"})  # not an int
    d.send("nosuch")
    d.send("broken")
    d.send("signup", data={"email": "b@example.org", "count": "2"})  # convertible
    out = d.run(T0 + 1)
    assert [m.state for m in out.messages] == ["dropped", "dropped", "dropped", "dropped", "delivered"]
    assert "require_data_parameters" in (out.messages[0].error or "")
    assert "no receiver receive_nosuch" in (out.messages[2].error or "")
    assert "KeyError" in (out.messages[3].error or "")
    assert "half" not in d.data and out.sent == []  # the failing receiver's changes are undone
    assert d.data["email"] == "b@example.org"
    assert Inbox.satisfies_data_requirements("signup", {"email": "x", "count": 1})
    assert not Inbox.satisfies_data_requirements("signup", {"email": "x"})
    assert Inbox.satisfies_data_requirements("ping", None)


def test_create_on_message_delivers_before_the_first_node() -> None:
    d = Driver(Inbox, now=T0)
    d.send("ping", "early")
    d.run()
    assert d.data["started_with"] == ["early"]
    assert [m.state for m in d.consumed] == ["delivered"]


def test_messages_to_a_finished_automation_are_dropped() -> None:
    d = Driver(Inbox, {"got": ["reply"]}, now=T0)
    d.run()
    assert d.state == "finished"
    d.send("ping", "late")
    d.run(T0 + 1)
    assert [(m.state, m.result) for m in d.consumed] == [("dropped", None)]
    assert d.data["got"] == ["reply"]


class Review:
    fields = {"score": "int", "note": "str"}

    def clean(self, values):
        errors = {}
        if not isinstance(values.get("score"), int) or not 1 <= values["score"] <= 5:
            errors["score"] = "a whole number from 1 to 5"
        if errors:
            raise flow.ValidationError(errors)
        return {"score": values["score"], "note": str(values.get("note", ""))}


class Reviewed(flow.Automation):
    review = flow.Form(Review, description="Rate it").Group(name="editors").Permission("reviews")
    personal = flow.Form(Review).User(id="u7").SkipAfter(datetime.timedelta(days=1))
    end = flow.End()


EDITOR = User(id="e1", privileges=("editors", "reviews"))


def test_forms_check_assignees_validate_store_once_and_refuse_a_second_submit() -> None:
    d = Driver(Reviewed, now=T0)
    d.run()
    step = d.step("review", "interaction")
    assert step.assignee_privileges == ["editors", "reviews"]
    for user in (ANONYMOUS, User(id="e2", privileges=("editors",)), User(id="x", privileges=("reviews",))):
        with pytest.raises(FormForbidden):
            d.submit(step.id, user, {"score": 3})
    with pytest.raises(FormInvalid) as info:
        d.submit(step.id, EDITOR, {"score": 9})
    assert info.value.errors == {"score": "a whole number from 1 to 5"} and info.value.status == 400
    assert d.step("review").state == "interaction" and "review" not in d.data
    d.now = T0 + 30
    d.submit(step.id, EDITOR, {"score": 4, "note": "fine"})
    assert d.data["review"] == {"score": 4, "note": "fine"}
    validated = d.data["_review_validated"]
    assert validated["user_id"] == "e1"
    assert validated["time"] == datetime.datetime.fromtimestamp(T0 + 30, datetime.UTC)
    assert d.step("review").state == "done" and d.step("review").submitted_by == EDITOR.to_json()
    with pytest.raises(FormAlreadyDone) as again:
        d.submit(step.id, EDITOR, {"score": 1})
    assert again.value.status == 409 and d.data["review"]["score"] == 4
    personal = d.step("personal", "interaction")
    assert personal.assignee_user == "u7" and personal.wake_at == T0 + 30 + 86400
    with pytest.raises(FormForbidden):
        d.submit(personal.id, EDITOR, {"score": 2})
    with pytest.raises(FormNotFound):
        d.submit("nope", EDITOR, {"score": 2})


def test_admins_always_may_and_a_resolver_replaces_the_rule() -> None:
    d = Driver(Reviewed, now=T0)
    d.run()
    step = d.step("review", "interaction")
    seen = []

    def resolver(user, row):
        seen.append((user.id, row.node))
        return user.id == "boss"

    with pytest.raises(FormForbidden):
        d.submit(step.id, EDITOR, {"score": 2}, resolver=resolver)
    d.submit(step.id, User(id="boss"), {"score": 2}, resolver=resolver)
    assert seen == [("e1", "review"), ("boss", "review")]
    admin = User(id="root", privileges=("admin",))
    d.submit(d.step("personal", "interaction").id, admin, {"score": 5})
    assert d.data["personal"]["score"] == 5 and d.state == "finished"


def test_skip_after_closes_an_unanswered_form() -> None:
    d = Driver(Reviewed, now=T0)
    d.run()
    d.submit(d.step("review").id, EDITOR, {"score": 3})
    d.until(T0 + 86400)
    assert d.step("personal").state == "skipped" and d.state == "finished"
    with pytest.raises(FormAlreadyDone):
        d.submit(d.step("personal").id, User(id="u7"), {"score": 3})


class Listener(flow.Automation):
    wait = flow.Execute().AsSoonAs(this.heard, recheck=None)
    end = flow.End()

    def heard(self, task):
        return self.data.get("heard", False)

    def receive_news(self, token, data):
        self.data["heard"] = True
        return "received" if self.data.get("catch") else self.data["n"]


def test_a_broadcast_stops_at_the_first_received() -> None:
    drivers = [Driver(Listener, {"n": n, "catch": n == 1}, now=T0) for n in range(3)]
    for d in drivers:
        d.run()
    drivers[2].state = "finished"
    message = engine.QueuedMessage("b1", "news", None, {})
    out = engine.broadcast(Listener, [d.snapshot() for d in drivers], message, now=T0 + 1)
    assert out.results == [0, "received"] and out.received_by == drivers[1].id
    assert list(out.outcomes) == [drivers[0].id, drivers[1].id]  # the third was never reached
    assert out.outcomes[drivers[0].id].state == "finished"  # and each delivery advanced its automation


class Announcer(flow.Automation):
    start = flow.Execute(this.talk)
    end = flow.End()

    def talk(self, task):
        self.data["unmet"] = Inbox.broadcast_message("signup", data={"email": "x"}) is None
        self.data["met"] = Inbox.broadcast_message("signup", data={"email": "x", "count": 1}) is not None


def test_require_data_parameters_is_checked_at_send_time() -> None:
    d = Driver(Announcer, now=T0)
    out = d.run()
    assert d.data == {"unmet": True, "met": True}
    assert [(m.broadcast_class, m.data) for m in out.sent] == [
        (Inbox.get_automation_class_name(), {"email": "x", "count": 1})]
    with pytest.raises(AutomationError, match=r"broadcast_message\(\) needs a running mailgate"):
        Inbox.broadcast_message("signup", data={"email": "x", "count": 1})
