"""UI commands for the browser: flash, refresh, javascript, fields, target.

A command is a small JSON-able dict ``{"command": NAME, ...}``. Two things produce them: the
``ui_notification`` of a finished background task, and ``background_response(...)`` in a check-in
action, which has docassemble's several call forms.
"""

from __future__ import annotations

from typing import Any

from mailgate.errors import ActionError

UI_NOTIFICATIONS = ("flash", "refresh", "javascript", "fields")


def notification_command(mode: str, value: Any) -> dict[str, Any]:
    """The command a finished task with ``ui_notification=mode`` sends, given its value."""
    if mode == "flash":
        return {"command": "flash", "message": "" if value is None else str(value)}
    if mode == "refresh":
        return {"command": "refresh"}
    if mode == "javascript":
        return {"command": "javascript", "script": "" if value is None else str(value)}
    if mode == "fields":
        if not isinstance(value, dict):
            raise ActionError(f"ui_notification 'fields' needs the task to respond with a dict of field -> value, not {type(value).__name__}")
        return {"command": "fields", "fields": value}
    raise ActionError(f"unknown ui_notification {mode!r}; use one of {', '.join(UI_NOTIFICATIONS)} or None")


def _target(item: dict[str, Any]) -> dict[str, Any]:
    if "target" not in item:
        raise ActionError(f"background_response target item {item!r} has no 'target' key")
    content = item.get("content", "")
    render = getattr(content, "render_html", None)
    if callable(render):  # a template: Markdown rendered to HTML
        return {"command": "target", "target": str(item["target"]), "content": render(), "html": True}
    return {"command": "target", "target": str(item["target"]), "content": "" if content is None else str(content), "html": True}


def checkin_commands(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn check-in ``background_response(...)`` arguments into commands (docassemble's forms)."""
    if "target" in kwargs:
        return [_target(kwargs)]
    if not args:
        return []
    first = args[0]
    kind = args[1] if len(args) > 1 else None
    if kind is None:
        if first == "refresh":
            return [{"command": "refresh"}]
        if isinstance(first, list) and all(isinstance(i, dict) for i in first):
            return [_target(i) for i in first]
        if isinstance(first, dict) and "target" in first:
            return [_target(first)]
        raise ActionError(
            f"background_response({first!r}) in a check-in needs a kind: 'fields', 'javascript', 'flash', "
            "'refresh', or target=/content="
        )
    if kind == "flash":
        command = notification_command("flash", first)
        if kwargs.get("html"):
            command["html"] = True
        return [command]
    if kind in ("fields", "javascript", "refresh"):
        return [notification_command(kind, first)]
    raise ActionError(f"background_response kind {kind!r} is not one of fields, javascript, flash, refresh")
