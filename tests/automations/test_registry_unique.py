"""Naming and discovering automation classes (AUTOMATIONS.md §4.4) and ``unique`` keys."""

from __future__ import annotations

import datetime
import sys
import textwrap
from pathlib import Path

import pytest

from mailgate.automations import flow
from mailgate.automations.errors import AutomationError, UnknownAutomationClass
from mailgate.automations.registry import AutomationRegistry, load_automations
from mailgate.automations.unique import unique_key
from mailgate.core.interviews import load_interviews
from mailgate.errors import InterviewLoadError

MODULE = textwrap.dedent("""
    from mailgate.automations import flow, this
    from mailgate.core.interviews import Interview

    interview = Interview("{interview}")

    class Welcome(flow.Automation):
        start = flow.Execute()
        end = flow.End()

    class Named(flow.Automation):
        class Meta:
            name = "{meta}"
        end = flow.End()

    class Base(flow.Automation):  # no nodes: a base class, not registered
        def receive_x(self, token, data):
            return None
""")


def write(tmp: Path, name: str, interview: str, meta: str) -> Path:
    path = tmp / f"{name}.py"
    path.write_text(MODULE.format(interview=interview, meta=meta))
    return path


def test_classes_are_found_in_interview_modules_and_files_and_named_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    write(pkg, "flows_a", "a", "alpha")
    other = write(tmp_path, "flows_b", "b", "beta")
    monkeypatch.syspath_prepend(str(pkg))
    try:
        interviews = load_interviews(["flows_a"], [str(other)])
        registry = load_automations(["flows_a"], [str(other)])
    finally:
        sys.modules.pop("flows_a", None)
    assert interviews.names() == ["a", "b"]
    assert len(registry) == 4
    welcome_a = registry.resolve("flows_a.Welcome")
    assert welcome_a.__module__ == "flows_a" and registry.name_of(welcome_a) == "flows_a.Welcome"
    assert registry.resolve("alpha") is registry.resolve("flows_a.Named")
    assert registry.describe()[0] == {"name": "alpha", "verbose_name": "Automation Named", "receivers": []}
    assert registry.name_of(registry.resolve("flows_a.Named")) == "alpha"
    beta = registry.resolve("beta")
    assert beta.__name__ == "Named" and beta.__module__.startswith("mailgate_interview_flows_b_")
    # The interview loader and this one share the file's module: the class objects are the same.
    assert sys.modules[beta.__module__].Named is beta
    with pytest.raises(UnknownAutomationClass, match="'Welcome' is ambiguous: .*flows_a.Welcome"):
        registry.resolve("Welcome")
    with pytest.raises(UnknownAutomationClass, match="no automation class named 'Nope'; known classes: alpha"):
        registry.resolve("Nope")


def test_a_bare_name_resolves_when_one_class_has_it() -> None:
    class Lonely(flow.Automation):
        end = flow.End()

    registry = AutomationRegistry([Lonely])
    assert registry.resolve("Lonely") is Lonely
    assert registry.resolve(Lonely.get_automation_class_name()) is Lonely
    with pytest.raises(UnknownAutomationClass):
        AutomationRegistry().resolve("Lonely")


def test_two_classes_with_one_name_are_refused() -> None:
    def make() -> type[flow.Automation]:
        class Same(flow.Automation):
            class Meta:
                name = "same"
            end = flow.End()
        return Same

    with pytest.raises(InterviewLoadError, match="two automation classes are named 'same'"):
        AutomationRegistry([make(), make()])


def test_a_failing_module_is_a_clear_load_error() -> None:
    with pytest.raises(InterviewLoadError, match="cannot import module 'no_such_module_xyz'"):
        load_automations(["no_such_module_xyz"])


class Free(flow.Automation):
    end = flow.End()


class Singleton(flow.Automation):
    unique = True
    end = flow.End()


class ByEmail(flow.Automation):
    unique = ("email",)
    end = flow.End()


class ByEmailToo(flow.Automation):
    unique = ("email",)
    end = flow.End()


class PerSession(flow.Automation):
    unique = ("email", "session")
    end = flow.End()


def test_unique_keys() -> None:
    assert unique_key(Free, {"email": "a"}, None) is None
    single = unique_key(Singleton, {"email": "a"}, "s1")
    assert single is not None and single == unique_key(Singleton, {}, None)  # one per class, whatever the data
    a = unique_key(ByEmail, {"email": "a@x", "other": 1}, "s1")
    assert a == unique_key(ByEmail, {"email": "a@x", "other": 2}, "s2")
    assert a != unique_key(ByEmail, {"email": "b@x"}, "s1")
    assert a == unique_key(ByEmailToo, {"email": "a@x"}, None)  # the store's index pairs it with the class
    assert len(a or "") == 64
    s1 = unique_key(PerSession, {"email": "a@x"}, "s1")
    assert s1 != unique_key(PerSession, {"email": "a@x"}, "s2")
    assert s1 != unique_key(PerSession, {"email": "a@x"}, None)
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert unique_key(ByEmail, {"email": when}, None) != unique_key(ByEmail, {"email": when.isoformat()}, None)
    with pytest.raises(AutomationError, match="unique by email: the data lacks 'email'"):
        unique_key(ByEmail, {}, None)

    class Wrong(flow.Automation):
        unique = "email"  # type: ignore[assignment]
        end = flow.End()

    with pytest.raises(AutomationError, match="must be True, False or a tuple"):
        unique_key(Wrong, {"email": "a"}, None)
