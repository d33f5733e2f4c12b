"""Interviews: named collections of actions, and loading them from modules and files."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate.errors import (
    ActionError,
    BrowserForbidden,
    InterviewLoadError,
    UnknownAction,
    UnknownInterview,
)

Handler = Callable[[dict[str, Any]], Any]
INCOMING_EMAIL = "incoming_email"


def never_browser(name: str) -> bool:
    """Whether ``name`` is an event that mailgate itself runs (incoming mail, the built-in scheduled
    types and, by convention, every ``cron_*`` name), which a page may never run."""
    return name == INCOMING_EMAIL or name.startswith("cron_")


@dataclass(frozen=True)
class Action:
    name: str
    fn: Handler
    is_async: bool
    browser: bool = False  # a page may run it (``run``) or check in with it (``checkin``) over /ws


class Interview:
    """A named interview. Register handlers with ``@interview.action("name")``.

    ``delete_days`` overrides ``[sessions] interview_delete_days`` for this interview's sessions.
    """

    def __init__(self, name: str, *, delete_days: int | None = None) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("an interview needs a non-empty name")
        self.name = name
        self.delete_days = delete_days
        self.actions: dict[str, Action] = {}

    def action(self, name: str, *, browser: bool = False) -> Callable[[Handler], Handler]:
        """Decorator: register a sync or async handler ``fn(answers)`` under ``name``.

        ``browser=True`` lets the session's pages run it over the WebSocket, as a foreground action
        (``client.run``) or as the check-in action of a form. Every other action is out of a page's
        reach: whatever a browser sends can be forged, so only actions written to take the page's
        arguments as untrusted input should be browser actions. ``incoming_email`` and ``cron_*``
        never are, and a browser action cannot be a callback (``background_response_action``,
        ``background_error_action``), whose arguments are trusted.
        """
        if browser and never_browser(name):
            raise ValueError(f"interview {self.name!r}: {name!r} is run by mailgate itself and cannot be a browser action")

        def register(fn: Handler) -> Handler:
            if name in self.actions:
                raise ValueError(f"interview {self.name!r} already has an action {name!r}")
            self.actions[name] = Action(name, fn, inspect.iscoroutinefunction(fn), browser=browser)
            return fn

        return register

    def has_action(self, name: str) -> bool:
        return name in self.actions

    def browser_action(self, name: str) -> Action:
        """The action a page asked for, if the interview lets pages run it (else ``BrowserForbidden``)."""
        action = self.get_action(name)
        if not action.browser:
            raise BrowserForbidden(
                f"action {name!r} of interview {self.name!r} cannot be run from a browser; "
                f"declare it with @interview.action({name!r}, browser=True) if pages should run it")
        return action

    def callback_action(self, name: str, function: str) -> Action:
        """The action named as a callback by ``function`` (it must not be a browser action)."""
        action = self.get_action(name)
        if action.browser:
            raise ActionError(
                f"{function}({name!r}): {name!r} is a browser action (browser=True), so a page could run it with "
                "forged arguments; a callback must be an action pages cannot run")
        return action

    def get_action(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            known = ", ".join(sorted(self.actions)) or "none"
            raise UnknownAction(f"interview {self.name!r} has no action {name!r}; its actions: {known}") from None

    def __repr__(self) -> str:
        return f"Interview({self.name!r}, actions={sorted(self.actions)})"


class Registry:
    """The interviews this process knows, by name."""

    def __init__(self, interviews: Iterable[Interview] = ()) -> None:
        self._by_name: dict[str, Interview] = {}
        for interview in interviews:
            self.add(interview)

    def add(self, interview: Interview) -> None:
        existing = self._by_name.get(interview.name)
        if existing is not None and existing is not interview:
            raise InterviewLoadError(f"two interviews are named {interview.name!r}; interview names must be unique")
        self._by_name[interview.name] = interview

    def get(self, name: str) -> Interview:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none loaded; add them to [interviews] modules or paths"
            raise UnknownInterview(f"no interview named {name!r}; known interviews: {known}") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def load_interviews(modules: Iterable[str] = (), paths: Iterable[str] = ()) -> Registry:
    """Import the given modules and files and collect every ``Interview`` defined at their top level."""
    registry = Registry()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise InterviewLoadError(f"cannot import interview module {name!r}: {type(exc).__name__}: {exc}") from exc
        _collect(module, registry, name)
    for path in paths:
        _collect(_import_path(Path(path)), registry, path)
    return registry


def _import_path(path: Path) -> Any:
    if not path.is_file():
        raise InterviewLoadError(f"interview file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"mailgate_interview_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InterviewLoadError(f"cannot load {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise InterviewLoadError(f"interview file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _collect(module: Any, registry: Registry, where: str) -> None:
    found = [v for v in vars(module).values() if isinstance(v, Interview)]
    if not found:
        raise InterviewLoadError(f"{where!r} defines no Interview at its top level; add `interview = Interview(\"name\")`")
    for interview in found:
        registry.add(interview)
