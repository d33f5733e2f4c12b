"""The node classes of the automations author API (re-exported by :mod:`mailgate.automations.flow`).

A node holds only its declaration: modifiers record their arguments (problems such as a modifier
given twice are kept and reported, naming the node, when the class is created), and the class's
creation freezes it. Run state never lives here (AUTOMATIONS.md §2.1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Self

DEFAULT = object()  # AsSoonAs(recheck=...) not given: ``[automations] recheck_interval``


@dataclass(frozen=True)
class Ref:
    """``this.name``: a forward reference to a node or method, resolved when the class is created."""

    name: str


class This:
    """``this.x`` stands for the attribute ``x`` of the automation class being defined."""

    def __getattr__(self, name: str) -> Ref:
        if name.startswith("__"):
            raise AttributeError(name)
        return Ref(name)


this = This()


# --------------------------------------------------------------------------------------------- nodes


class Node:
    """Base class of all nodes. Modifiers return the node, so they chain; after the class that holds
    the node is created, the node is frozen and modifiers raise."""

    kind: ClassVar[str] = "node"

    def __init__(self, *args: Any, description: str = "", **kwargs: Any) -> None:
        self.description = description
        self.name: str | None = None
        self.owner: type | None = None
        self.problems: list[str] = []  # found while chaining, reported by name at class creation
        self.next: Any = None
        self.as_soon_as: Any = None
        self.recheck: Any = DEFAULT
        self.wait_until: Any = None
        self.wait_for: Any = None
        self.skip_if: Any = None
        self.skip_after: Any = None
        self._frozen = False

    def __setattr__(self, key: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"node {self.name!r} of {getattr(self.owner, '__name__', '?')} is immutable after "
                                 f"its class is created (run state lives in the automation's data and steps)")
        object.__setattr__(self, key, value)

    def _once(self, field: str, value: Any, modifier: str) -> Self:
        if getattr(self, field) is not None:
            self.problems.append(f".{modifier}() given twice")
        setattr(self, field, value)
        return self

    # Modifiers of every node (the seed's names).
    def Next(self, node: Any) -> Self:  # noqa: N802 - the seed's API
        return self._once("next", node, "Next")

    def AsSoonAs(self, condition: Any, recheck: Any = DEFAULT) -> Self:  # noqa: N802
        """Wait until ``condition`` is true; rechecked on entry, after each message, at the node's timers
        and every ``recheck`` seconds (a number or timedelta; default ``[automations] recheck_interval``;
        None: messages and timers only)."""
        if recheck is not DEFAULT and recheck is not None:
            seconds = recheck.total_seconds() if isinstance(recheck, dt.timedelta) else recheck
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
                self.problems.append(f".AsSoonAs(recheck={recheck!r}): give a positive number of seconds, a timedelta or None")
            recheck = float(seconds) if isinstance(seconds, (int, float)) else recheck
        self.recheck = recheck
        return self._once("as_soon_as", condition, "AsSoonAs")

    def AfterWaitingUntil(self, when: Any) -> Self:  # noqa: N802
        return self._once("wait_until", when, "AfterWaitingUntil")

    def AfterWaitingFor(self, delta: Any) -> Self:  # noqa: N802
        return self._once("wait_for", delta, "AfterWaitingFor")

    def SkipIf(self, condition: Any) -> Self:  # noqa: N802
        return self._once("skip_if", condition, "SkipIf")

    def SkipAfter(self, delta: Any) -> Self:  # noqa: N802
        return self._once("skip_after", delta, "SkipAfter")

    def __set_name__(self, owner: type, name: str) -> None:
        # A second name for the same object is reported by the class check (an exception raised here
        # would reach the author wrapped in a RuntimeError).
        if self.name is None:
            self.name = name
            self.owner = owner

    def _freeze(self) -> None:
        object.__setattr__(self, "problems", tuple(self.problems))
        self._frozen = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or '(unbound)'}>"


class Execute(Node):
    """Run ``func(task, *args, **kwargs)`` (a callable, ``this.method`` or ``"self.method"``); or subclass
    and implement ``method(self, task, *args, **kwargs)``. ``threaded=True`` runs it as a background
    task while the automation moves on; it is never passed to the callable."""

    kind = "execute"

    def __init__(self, *args: Any, threaded: bool = False, description: str = "", **kwargs: Any) -> None:
        super().__init__(description=description)
        overridden = type(self).method is not Execute.method
        if overridden or not args:
            self.func: Any = None
            self.args = args
        else:
            self.func, self.args = args[0], args[1:]
        self.kwargs = MappingProxyType(dict(kwargs))
        self.threaded = bool(threaded)
        self.on_error: Any = None

    def method(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        """Override in a subclass to make a named executable node; the default does nothing."""
        return None

    def OnError(self, node: Any) -> Self:  # noqa: N802
        self._once("on_error", node, "OnError")
        return self


class End(Node):
    """Finish the automation (it fails if other paths are still open)."""

    kind = "end"


class Join(Node):
    """Wait until every path of the Split that opened this path has arrived."""

    kind = "join"


class Split(Node):
    """Open one path per ``.Next(node)``; they meet again at one Join."""

    kind = "split"

    def __init__(self, *args: Any, description: str = "", **kwargs: Any) -> None:
        super().__init__(description=description)
        self.paths: tuple[Any, ...] = ()

    def Next(self, node: Any) -> Self:  # noqa: N802 - a Split takes several
        self.paths = (*self.paths, node)
        return self


class If(Node):
    """``If(cond).Then(x).Else(y)``: x/y are nodes to jump to or callables to run; without Else the
    automation continues with the next node. The step's message is ``True`` or ``False``."""

    kind = "if"

    def __init__(self, condition: Any, description: str = "", **kwargs: Any) -> None:
        super().__init__(description=description)
        self.condition = condition
        self.then: Any = None
        self.otherwise: Any = None

    def Then(self, target: Any) -> Self:  # noqa: N802
        self._once("then", target, "Then")
        return self

    def Else(self, target: Any) -> Self:  # noqa: N802
        self._once("otherwise", target, "Else")
        return self


class Repeat(Node):
    """Loop back to ``start`` (default: the first node) on a schedule: ``.At(h, m)`` daily in the
    scheduler's time zone (with ``.EveryNDays(n)``: every n days at h:m), or every n hours, minutes or
    days counted from the stored time the node was first entered. Missed periods fire once."""

    kind = "repeat"

    def __init__(self, start: Any = None, description: str = "", **kwargs: Any) -> None:
        super().__init__(description=description)
        self.start = start
        self.at: tuple[int, int] | None = None
        self.every: float | None = None  # seconds
        self.every_days: int | None = None

    def _interval(self, seconds: float, what: str) -> Self:
        if self.every is not None:
            self.problems.append(f".{what}() given after another interval")
        self.every = seconds
        return self

    def At(self, hour: int, minute: int = 0) -> Self:  # noqa: N802
        if not (isinstance(hour, int) and isinstance(minute, int) and 0 <= hour < 24 and 0 <= minute < 60):
            self.problems.append(f".At({hour!r}, {minute!r}): hour 0-23 and minute 0-59 expected")
        self._once("at", (hour, minute), "At")
        return self

    def EveryHour(self, hours: int = 1) -> Self:  # noqa: N802
        return self._positive(hours, "EveryHour")._interval(hours * 3600.0, "EveryHour")

    def EveryNMinutes(self, minutes: int) -> Self:  # noqa: N802
        return self._positive(minutes, "EveryNMinutes")._interval(minutes * 60.0, "EveryNMinutes")

    def EveryNDays(self, days: int) -> Self:  # noqa: N802
        self._positive(days, "EveryNDays")
        self.every_days = days
        return self._interval(days * 86400.0, "EveryNDays")

    def EveryDay(self) -> Self:  # noqa: N802
        return self.EveryNDays(1)

    def _positive(self, n: Any, what: str) -> Self:
        if not isinstance(n, (int, float)) or isinstance(n, bool) or n <= 0:
            self.problems.append(f".{what}({n!r}): a positive number expected")
        return self


class Form(Node):
    """A user task: ``form`` is any object (or class) with ``clean(values) -> dict`` raising
    ``flow.ValidationError``. ``.User(id=...)``, ``.Group(name=g)`` (privilege g) and ``.Permission(p)``
    (privilege p) are ANDed; privilege ``admin`` always may."""

    kind = "form"

    def __init__(self, form: Any, template_name: str | None = None, description: str = "",
                 context: Mapping[str, Any] | None = None) -> None:
        super().__init__(description=description)
        self.form = form
        self.template_name = template_name
        self.context = MappingProxyType(dict(context or {}))
        self.user: str | None = None
        self.group: str | None = None
        self.permissions: tuple[str, ...] = ()

    def User(self, **selector: Any) -> Self:  # noqa: N802
        if set(selector) != {"id"}:
            self.problems.append(f".User({', '.join(selector)}): mailgate users are selected by id only: .User(id=...)")
        return self._once_form("user", str(selector.get("id")), "User")

    def Group(self, **selector: Any) -> Self:  # noqa: N802
        if set(selector) != {"name"}:
            self.problems.append(f".Group({', '.join(selector)}): groups are privileges, selected by name: .Group(name=...)")
        return self._once_form("group", str(selector.get("name")), "Group")

    def Permission(self, permission: str) -> Self:  # noqa: N802
        if not isinstance(permission, str) or not permission:
            self.problems.append(f".Permission({permission!r}): a privilege name expected")
        self.permissions = (*self.permissions, str(permission))
        return self

    def _once_form(self, field: str, value: str, modifier: str) -> Self:
        self._once(field, value, modifier)
        return self

    def privileges(self) -> list[str]:
        """The privileges an assignee needs (Group and every Permission)."""
        found = ([self.group] if self.group is not None else []) + list(self.permissions)
        return list(dict.fromkeys(found))


class SendMessage(Node):
    """Send ``message`` to ``target``: an automation id (str), an instance, a class or a class name
    (broadcast), or a callable taking the task and returning one of those. Recorded as an outgoing
    message; the runner delivers it, never in-process."""

    kind = "send"

    def __init__(self, target: Any, message: str, token: str | None = None, data: Any = None,
                 description: str = "") -> None:
        super().__init__(description=description)
        if not isinstance(message, str) or not message:
            self.problems.append(f"SendMessage(message={message!r}): a receiver name expected")
        self.target = target
        self.message = message
        self.token = token
        self.data = data
