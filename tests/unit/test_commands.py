from __future__ import annotations

import pytest

from mailgate.core.commands import checkin_commands, notification_command
from mailgate.errors import ActionError


def test_checkin_forms_of_background_response() -> None:
    assert checkin_commands((), {"target": "t", "content": "<b>x</b>"}) == [
        {"command": "target", "target": "t", "content": "<b>x</b>", "html": True}]
    assert [c["target"] for c in checkin_commands(([{"target": "a", "content": "1"}, {"target": "b", "content": "2"}],), {})] == ["a", "b"]
    assert checkin_commands(({"f": 1}, "fields"), {}) == [{"command": "fields", "fields": {"f": 1}}]
    assert checkin_commands(('alert("x")', "javascript"), {}) == [{"command": "javascript", "script": 'alert("x")'}]
    assert checkin_commands(("Hello", "flash"), {}) == [{"command": "flash", "message": "Hello"}]
    assert checkin_commands(("<i>Hi</i>", "flash"), {"html": True}) == [{"command": "flash", "message": "<i>Hi</i>", "html": True}]
    assert checkin_commands(("refresh",), {}) == [{"command": "refresh"}]
    assert checkin_commands((), {}) == []


def test_bad_forms_are_explained() -> None:
    with pytest.raises(ActionError, match="needs a kind"):
        checkin_commands(("text",), {})
    with pytest.raises(ActionError, match="not one of"):
        checkin_commands(("text", "toast"), {})
    with pytest.raises(ActionError, match="dict of field"):
        notification_command("fields", 3)
    with pytest.raises(ActionError, match="unknown ui_notification"):
        notification_command("toast", 3)


def test_template_content_is_rendered() -> None:
    class Template:
        def render_html(self) -> str:
            return "<p>rendered</p>"

    assert checkin_commands((), {"target": "t", "content": Template()})[0]["content"] == "<p>rendered</p>"
