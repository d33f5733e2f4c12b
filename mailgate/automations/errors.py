"""Errors of the automations author API and engine (all derive from :class:`MailgateError`)."""

from __future__ import annotations

from mailgate.errors import MailgateError, NotFound


class AutomationError(MailgateError):
    """An automation cannot do what was asked (bad data, no runner, a malformed snapshot)."""


class SnapshotError(AutomationError):
    """The runner handed the engine an inconsistent snapshot (a bug of the runner, never a step error)."""


class UnknownAutomationClass(NotFound):
    """No loaded automation class has this name, or the name is ambiguous."""


class OrphanedAutomation(AutomationError):
    """An open step names a node the class no longer has; the engine refuses to run it."""

    def __init__(self, message: str, nodes: list[str]) -> None:
        super().__init__(message)
        self.nodes = nodes


class FormError(AutomationError):
    """A form submission was refused; ``status`` is the HTTP status the web edge answers with."""

    status = 400


class FormNotFound(FormError, NotFound):
    status = 404


class FormForbidden(FormError):
    status = 403


class FormAlreadyDone(FormError):
    status = 409


class FormInvalid(FormError):
    """``errors`` maps each field to its message (from ``flow.ValidationError``)."""

    status = 400

    def __init__(self, message: str, errors: dict[str, str]) -> None:
        super().__init__(message)
        self.errors = errors
