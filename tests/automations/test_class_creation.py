"""Class creation: every malformed automation is rejected with a TypeError naming the class and node
(AUTOMATIONS.md §4.1), nodes are frozen afterwards, and the class-level API (names, Meta, receivers)."""

from __future__ import annotations

import datetime

import pytest

from mailgate.automations import flow, this
from mailgate.automations.errors import AutomationError
from mailgate.automations.registry import AutomationRegistry


def rejects(body: dict[str, object], *needles: str) -> str:
    with pytest.raises(TypeError) as info:
        type("Bad", (flow.Automation,), body)
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    return text


def test_underscore_and_reserved_names_are_rejected() -> None:
    rejects({"_hidden": flow.Execute(), "end": flow.End()}, "Bad._hidden", "must not start with '_'")
    for name in ("data", "save", "id", "run", "send_message", "unique", "kill", "receive_ping"):
        rejects({name: flow.Execute(), "end": flow.End()}, f"Bad.{name}", "cannot be a node")


def test_the_seed_node_name_start_is_allowed() -> None:
    class Ok(flow.Automation):
        start = flow.Execute()
        end = flow.End()

    assert Ok.node_names() == ("start", "end")


def test_unresolvable_references_are_rejected() -> None:
    rejects({"a": flow.Execute().Next(this.nowhere), "end": flow.End()}, "Bad.a", ".Next names 'nowhere'")
    rejects({"a": flow.Execute().Next("self.nowhere"), "end": flow.End()}, "Bad.a", "'nowhere'")
    rejects({"a": flow.Execute(this.missing), "end": flow.End()}, "Bad.a", "'missing', which is no method")
    rejects({"a": flow.If(this.gone).Then(this.end), "end": flow.End()}, "Bad.a", "'gone'")
    rejects({"a": flow.Execute().AsSoonAs("self.nope"), "end": flow.End()}, "Bad.a", "'nope'")
    rejects({"a": flow.Execute().OnError(this.err), "end": flow.End()}, "Bad.a", ".OnError names 'err'")
    rejects({"a": flow.Execute(this.end), "end": flow.End()}, "Bad.a", "names node 'end'; a method")
    rejects({"a": flow.Repeat(this.x).EveryHour(), "end": flow.End()}, "Bad.a", "'x'")


def test_if_without_then_is_rejected() -> None:
    rejects({"a": flow.If(lambda t: True), "end": flow.End()}, "Bad.a", "If needs .Then")
    rejects({"a": flow.If(lambda t: True).Else(this.end), "end": flow.End()}, "Bad.a", "If needs .Then")


@pytest.mark.parametrize("node", [
    lambda: flow.Execute().Next(this.end).Next(this.end),
    lambda: flow.Execute().SkipIf(True).SkipIf(False),
    lambda: flow.Execute().AfterWaitingFor(datetime.timedelta(1)).AfterWaitingFor(datetime.timedelta(2)),
    lambda: flow.Execute().OnError(this.end).OnError(this.end),
    lambda: flow.If(True).Then(this.end).Then(this.end),
    lambda: flow.Form(object).User(id="u").User(id="v"),
])
def test_duplicate_modifiers_are_rejected(node: object) -> None:
    rejects({"a": node(), "end": flow.End()}, "Bad.a", "given twice")  # type: ignore[operator]


def test_split_without_next_is_rejected() -> None:
    rejects({"s": flow.Split(), "j": flow.Join(), "end": flow.End()}, "Bad.s", "at least one .Next")


def test_split_path_reaching_end_without_its_join_is_rejected() -> None:
    rejects({
        "s": flow.Split().Next(this.a).Next(this.b),
        "a": flow.Execute().Next(this.j),
        "b": flow.If(lambda t: t.data.get("x")).Then(this.end).Else(this.j),  # the Then branch skips the Join
        "j": flow.Join(),
        "end": flow.End(),
    }, "Bad.s", "path to 'b' can reach End ('end') without its Join")
    rejects({  # falling off the last node counts too
        "s": flow.Split().Next(this.a).Next(this.b),
        "a": flow.Execute().Next(this.j),
        "j": flow.Join().Next(this.end),
        "end": flow.End(),
        "b": flow.Execute(),
    }, "Bad.s", "fall off the last node")


def test_split_paths_meeting_at_different_joins_are_rejected() -> None:
    rejects({
        "s": flow.Split().Next(this.a).Next(this.b),
        "a": flow.Execute().Next(this.j1),
        "b": flow.Execute().Next(this.j2),
        "j1": flow.Join().Next(this.end),
        "j2": flow.Join(),
        "end": flow.End(),
    }, "Bad.s", "different Joins")


def test_other_malformed_nodes_are_rejected() -> None:
    rejects({"r": flow.Repeat()}, "Bad.r", "Repeat needs a schedule")
    rejects({"x": flow.Execute(42), "end": flow.End()}, "Bad.x", "a callable")
    rejects({"x": flow.Execute(), "end": flow.End}, "Bad.end", "write flow.End(...)")
    rejects({"r": flow.Repeat().EveryNMinutes(0)}, "Bad.r", "positive number")
    rejects({"r": flow.Repeat().At(25, 0)}, "Bad.r", "hour 0-23")
    rejects({"f": flow.Form(object()), "end": flow.End()}, "Bad.f", "clean(values)")
    rejects({"f": flow.Form(type("F", (), {"clean": lambda s, v: v})).User(email="x"), "end": flow.End()},
            "Bad.f", "by id only")
    rejects({"a": flow.Execute().AsSoonAs(this.ok, recheck=-1), "end": flow.End(), "ok": lambda s, t: True},
            "Bad.a", "recheck")


def test_one_node_object_under_two_names_is_rejected() -> None:
    shared = flow.Execute()
    rejects({"a": shared, "b": shared, "end": flow.End()}, "Bad.b", "also node 'a'")


def test_a_node_replaced_later_in_the_class_body_is_rejected() -> None:
    # The seed's IssueDiscussion has `evaluate = flow.Execute(this.evaluate)`; a method of that name
    # would silently replace the node.
    with pytest.raises(TypeError, match=r"Shadow.evaluate: the node is replaced by a method"):
        class Shadow(flow.Automation):
            evaluate = flow.Execute(this.evaluate)
            end = flow.End()

            def evaluate(self, task):  # noqa: F811 - the mistake under test
                return 1


def test_every_problem_is_reported_at_once() -> None:
    text = rejects({"a": flow.If(True), "b": flow.Execute().Next(this.c), "end": flow.End()})
    assert "Bad.a: If needs .Then" in text and "Bad.b: .Next names 'c'" in text


class Valid(flow.Automation):
    class Meta:
        verbose_name = "Valid automation"
        name = "valid"

    publish_receivers = True
    start = flow.Execute(this.go)
    end = flow.End()

    def go(self, task):
        return 1

    def receive_ping(self, token, data):
        return "pong"


def test_nodes_are_frozen_and_out_of_the_class_namespace() -> None:
    node = Valid.get_node("start")
    with pytest.raises(AttributeError, match="immutable"):
        node.Next(this.end)
    with pytest.raises(AttributeError, match="immutable"):
        node.threaded = True  # type: ignore[misc]
    assert "start" not in vars(Valid)
    with pytest.raises(AutomationError, match="no node 'nope'"):
        Valid.get_node("nope")


def test_names_meta_and_receivers() -> None:
    assert Valid.get_automation_class_name() == "valid"
    assert Valid.get_verbose_name() == "Valid automation"

    class Plain(flow.Automation):
        end = flow.End()

    assert Plain.get_automation_class_name() == f"{__name__}.test_names_meta_and_receivers.<locals>.Plain"
    assert Plain.get_verbose_name() == "Automation Plain"
    assert Plain.get_verbose_name_plural() == "Automations Plain"
    assert Valid.receivers() == ["ping"]
    assert AutomationRegistry([Valid, Plain]).describe() == [
        {"name": Plain.get_automation_class_name(), "verbose_name": "Automation Plain", "receivers": []},
        {"name": "valid", "verbose_name": "Valid automation", "receivers": ["ping"]}]  # published ones only


def test_instantiating_outside_the_runner_gives_a_clear_error() -> None:
    with pytest.raises(AutomationError, match=r"Valid\(\.\.\.\) needs a running mailgate"):
        Valid(email="a@example.org")


def test_inherited_nodes_come_first_and_may_be_replaced() -> None:
    class Base(flow.Automation):
        start = flow.Execute(this.go)
        end = flow.End()

        def go(self, task):
            return "base"

    class Child(Base):
        start = flow.Execute(this.go).Next(this.extra)
        extra = flow.Execute().Next(this.end)

    assert Child.node_names() == ("start", "end", "extra")
    assert Base.get_node("start") is not Child.get_node("start")
    assert Child._flow.specs["start"].next == "extra"
    assert Base._flow.specs["start"].next == "end"
