"""``automations show``'s history tree (Split paths indented and whole, the Join's continuation back at
the Split's level, nested Splits, loops kept flat) and what ``list``/``show`` call orphaned."""

from __future__ import annotations

from mailgate.automations import flow
from mailgate.automations.registry import AutomationRegistry
from mailgate.config import load_config
from mailgate.core.automation_admin import AutomationAdmin
from mailgate.core.automation_views import history_tree
from mailgate.store.base import AutomationRecord, StepRecord


def rec(seq: int, node: str, previous: str | None = None, split: str | None = None, state: str = "done",
        message: str | None = "OK", attempts: int = 1) -> StepRecord:
    return StepRecord(f"s{seq}", seq, "a1", previous, split, node, state, message, None, None, None, None, None,  # type: ignore[arg-type]
                      attempts, float(seq), float(seq), float(seq), None, None, None)


def shape(lines: list[str]) -> list[str]:
    return [line.rsplit("  ", 1)[0] for line in lines]


def test_split_paths_are_indented_and_the_join_continues_at_the_split_level() -> None:
    steps = [rec(1, "start"), rec(2, "split", "s1"), rec(3, "a", "s2", "s2"), rec(4, "b", "s2", "s2"),
             rec(5, "join", "s3", "s2", "joined", "Joined"), rec(6, "b2", "s4", "s2", attempts=2),
             rec(7, "join", "s6", "s2", "joined", "Joined"), rec(8, "end", "s7")]
    assert shape(history_tree(steps)) == [
        "start [done] OK", "split [done] OK",
        "  a [done] OK", "  join [joined] Joined",
        "  b [done] OK", "  b2 [done] OK (attempts 2)", "  join [joined] Joined",
        "end [done] OK"]


def test_nested_splits_and_a_long_loop() -> None:
    steps = [rec(1, "outer"), rec(2, "x", "s1", "s1"), rec(3, "inner", "s1", "s1"), rec(4, "y", "s3", "s3"),
             rec(5, "z", "s3", "s3"), rec(6, "j_in", "s4", "s3", "joined"), rec(7, "j_in", "s5", "s3", "joined"),
             rec(8, "after_inner", "s7", "s1"), rec(9, "j_out", "s2", "s1", "joined"),
             rec(10, "j_out", "s8", "s1", "joined"), rec(11, "end", "s10", None, "waiting", None, 0)]
    assert shape(history_tree(steps)) == [
        "outer [done] OK", "  x [done] OK", "  j_out [joined] OK",
        "  inner [done] OK", "    y [done] OK", "    j_in [joined] OK", "    z [done] OK", "    j_in [joined] OK",
        "  after_inner [done] OK", "  j_out [joined] OK", "end [waiting]"]
    loop = [rec(1, "tick")] + [rec(i, "tick", f"s{i - 1}") for i in range(2, 5001)]
    assert len(history_tree(loop)) == 5000  # no recursion per step


class Tiny(flow.Automation):
    first = flow.Execute()
    end = flow.End()


def auto(state: str = "running", cls: str = "") -> AutomationRecord:
    return AutomationRecord("a1", 1, cls or Tiny.get_automation_class_name(), None, state, "{}", 1, None, "k",  # type: ignore[arg-type]
                            "{}", None, None, None, 0.0, 0.0, None)


def test_orphaned_says_which_class_or_node_is_gone() -> None:
    admin = AutomationAdmin(load_config(None), None, None, classes=AutomationRegistry([Tiny]))  # type: ignore[arg-type]
    assert admin.orphaned(auto(), [rec(1, "first", state="waiting", message=None)]) is None
    assert admin.orphaned(auto(), [rec(1, "second", state="waiting"), rec(2, "old", state="done")]) == "Tiny has no node second"
    assert admin.orphaned(auto(cls="gone.Class"), []) == "class gone.Class is not loaded"
    assert admin.orphaned(auto("finished", "gone.Class"), []) is None  # ended: nothing to run
