"""The one exception root of mailgate.

Every error that mailgate raises on purpose derives from :class:`MailgateError`; each edge (CLI,
SMTP, HTTP) translates foreign exceptions into these at exactly one place. The message of every
error says what went wrong and, where it can, what to do next.
"""

from __future__ import annotations


class MailgateError(Exception):
    """Root of all mailgate errors."""


class ConfigError(MailgateError):
    """A configuration file or value is invalid; ``errors`` lists every problem found, one line each."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors) if errors else [message]


class NotFound(MailgateError):
    """A session, task, mailbox or e-mail does not exist."""


class UnknownInterview(NotFound):
    """No loaded interview has this name."""


class UnknownAction(NotFound):
    """The interview defines no action of this name."""


class BrowserForbidden(MailgateError):
    """A page asked to run an action its interview does not declare ``browser=True``."""


class InterviewLoadError(MailgateError):
    """An interview module or file could not be imported."""


class AnswersError(MailgateError):
    """Answers cannot be encoded or decoded (e.g. a value that is not serialisable)."""


class LeaseTimeout(MailgateError):
    """The session lease could not be acquired within the time budget."""


class BudgetExceeded(MailgateError):
    """A locked action ran past its time budget; its changes were not saved."""


class VersionConflict(MailgateError):
    """The session was saved by someone else since it was read."""


class LeaseLost(MailgateError):
    """A worker tried to finish a task whose lease it no longer holds."""


class ActionError(MailgateError):
    """An action raised or ended in a way its context does not allow."""


class TaskNotReady(MailgateError):
    """A bounded wait for a task ended before the task finished."""


class TaskFailed(MailgateError):
    """``Task.get()`` on a task that failed and has no value from an error action."""


class StoreError(MailgateError):
    """The store failed for a reason outside mailgate's domain (its disk, its file, its locks).

    Backends raise these (never their driver's own exceptions); edges answer them as temporary
    failures (HTTP 503 with Retry-After, SMTP 451) because the same request can succeed later.
    """


class StoreUnavailable(StoreError):
    """The store cannot be used now: it cannot be opened, stayed locked too long, or an I/O error."""


class StoreFull(StoreError):
    """The disk holding the store, or the database itself, is full; nothing was written."""


class StoreConflict(StoreError):
    """The store refused a write on a constraint that is not an expected domain outcome."""


class AutomationFenced(StoreConflict):
    """An automation's commit was refused as a whole: its version moved on (another run, a submit,
    a kill, a retry) or its claim passed to another holder since it was read. Nothing was applied."""


class InteractionClosed(MailgateError):
    """A submit to an automation step that no longer waits for one (already submitted, or ended)."""
