from __future__ import annotations

from pathlib import Path

import pytest

from mailgate import Interview
from mailgate.core.interviews import Registry, load_interviews
from mailgate.errors import InterviewLoadError, UnknownAction, UnknownInterview
from tests.helpers import INTERVIEWS


def test_sync_and_async_actions() -> None:
    iv = Interview("x")

    @iv.action("a")
    def a(answers: dict) -> None: ...

    @iv.action("b")
    async def b(answers: dict) -> None: ...

    assert not iv.get_action("a").is_async and iv.get_action("b").is_async
    with pytest.raises(ValueError, match="already has an action 'a'"):
        iv.action("a")(a)
    with pytest.raises(UnknownAction, match="has no action 'c'; its actions: a, b"):
        iv.get_action("c")


def test_load_from_module_and_path() -> None:
    registry = load_interviews(["mailgate.demo.background"], [str(INTERVIEWS / "testing.py")])
    assert "background_action" in registry.names() and "testing" in registry.names()
    with pytest.raises(UnknownInterview, match="no interview named 'nope'; known interviews: .*testing"):
        registry.get("nope")


def test_load_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(InterviewLoadError, match="cannot import interview module 'no.such.module'"):
        load_interviews(["no.such.module"])
    with pytest.raises(InterviewLoadError, match="does not exist"):
        load_interviews(paths=[str(tmp_path / "absent.py")])
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('oops')\n")
    with pytest.raises(InterviewLoadError, match="failed to import: RuntimeError: oops"):
        load_interviews(paths=[str(broken)])
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(InterviewLoadError, match="defines no Interview"):
        load_interviews(paths=[str(empty)])


def test_duplicate_names_rejected() -> None:
    with pytest.raises(InterviewLoadError, match="two interviews are named 'x'"):
        Registry([Interview("x"), Interview("x")])
    with pytest.raises(UnknownInterview, match="none loaded"):
        Registry().get("x")
