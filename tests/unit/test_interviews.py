from __future__ import annotations

from pathlib import Path

import pytest

from mailgate import Interview
from mailgate.core.interviews import Registry, load_interviews
from mailgate.errors import (
    ActionError,
    BrowserForbidden,
    InterviewLoadError,
    UnknownAction,
    UnknownInterview,
)
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


def test_browser_actions_are_declared() -> None:
    iv = Interview("x")

    @iv.action("start", browser=True)
    def start(answers: dict) -> None: ...

    @iv.action("save")
    def save(answers: dict) -> None: ...

    assert iv.browser_action("start").browser
    with pytest.raises(BrowserForbidden, match=r"declare it with @interview.action\('save', browser=True\)"):
        iv.browser_action("save")
    with pytest.raises(UnknownAction):
        iv.browser_action("nope")
    # what mailgate itself runs never is a browser action, and a browser action is never a callback
    for name in ("incoming_email", "cron_daily", "cron_nightly"):
        with pytest.raises(ValueError, match="cannot be a browser action"):
            iv.action(name, browser=True)
    assert iv.callback_action("save", "background_response_action").name == "save"
    with pytest.raises(ActionError, match="'start' is a browser action"):
        iv.callback_action("start", "background_response_action")


def test_the_demo_pages_run_only_browser_actions() -> None:
    """Every action a demo page runs (client.run or a check-in form) is declared browser=True, and no
    other action of a demo interview that mailgate calls back is."""
    import re

    from mailgate.edges.web.pages import web_dir

    registry = load_interviews(["mailgate.demo.background", "mailgate.demo.checkin", "mailgate.demo.email",
                                "mailgate.demo.automation"])
    for page in sorted((web_dir() / "demo").glob("*.html")):
        text = page.read_text()
        names = set(re.findall(r'client\.run\("([^"]+)"', text)) | set(re.findall(r'data-mailgate-checkin="([^"]+)"', text))
        interview = registry.get(page.stem)
        assert names, page
        for name in names:
            assert interview.browser_action(name).browser, (page.stem, name)
    assert not registry.get("email-to-case").get_action("save_email").browser
