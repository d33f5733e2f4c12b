"""The automations author API: ``flow.Automation``, ``this`` and the nodes, in Django Automations' syntax.

An automation class lists nodes as class attributes; they run in declaration order unless a
modifier redirects them::

    from mailgate.automations import flow, this

    class Reminder(flow.Automation):
        start = flow.Execute(this.send_mail)
        wait = flow.Execute().AsSoonAs(this.replied).SkipAfter(timedelta(days=3))
        branch = flow.If(this.replied).Then(this.thank).Else(this.remind)
        ...

Unlike Django Automations, a node object holds no run state and is frozen when its class is
created (AUTOMATIONS.md §2.1): every instance's state lives in its data and its step rows, which the
engine (:mod:`mailgate.automations.engine`) reads and returns. Mistakes that the seed discovers at
run time (a misspelt target, an ``If`` without ``Then``, a Split path that can end without its
Join, ...) raise ``TypeError`` naming the node when the class is created (:mod:`.graph`). After
creation the nodes are no longer class attributes (``Class.get_node(name)`` returns one); this keeps
them out of every instance's reach and leaves ``Class.start(...)`` free for the runner although the
seed's examples name their first node ``start``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from mailgate.automations.context import CURRENT_RUN, Outbox
from mailgate.automations.errors import AutomationError
from mailgate.automations.graph import SHADOWED, Flow, build
from mailgate.automations.nodes import (
    End,
    Execute,
    Form,
    If,
    Join,
    Node,
    Ref,
    Repeat,
    SendMessage,
    Split,
    This,
    this,
)

__all__ = ["Automation", "End", "Execute", "Form", "If", "Join", "Node", "Ref", "Repeat", "SendMessage", "Split",
           "This", "ValidationError", "require_data_parameters", "this"]


class ValidationError(Exception):
    """Raised by a form's ``clean(values)``: ``errors`` maps each field to its message."""

    def __init__(self, errors: Mapping[str, str] | str) -> None:
        self.errors = {"__all__": errors} if isinstance(errors, str) else {str(k): str(v) for k, v in errors.items()}
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


def require_data_parameters(**kinds: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a receiver: the message's data must carry each parameter, convertible to its type
    (``@require_data_parameters(email=str)``); a message that does not is never delivered."""
    for key, kind in kinds.items():
        if not callable(kind):
            raise TypeError(f"require_data_parameters({key}={kind!r}): the type must be callable, like str or int")

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._mailgate_required_data = dict(kinds)  # type: ignore[attr-defined]
        return fn

    return mark


# ------------------------------------------------------------------------------------- the class


class _Namespace(dict[str, Any]):
    """A class body's namespace that notices a node replaced by a later definition of the same name
    (``evaluate = flow.Execute(this.evaluate)`` then ``def evaluate``: the node would vanish silently)."""

    def __init__(self) -> None:
        super().__init__()
        self.shadowed: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        old = self.get(key)
        if isinstance(old, Node) and value is not old:
            self.shadowed.append((key, value))
        super().__setitem__(key, value)


class AutomationMeta(type):
    """Only collects what the class body replaced; every check is in :func:`graph.build`."""

    @classmethod
    def __prepare__(mcs, name: str, bases: tuple[type, ...], **kwargs: Any) -> _Namespace:  # type: ignore[override]
        return _Namespace()

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> AutomationMeta:
        body = dict(namespace)
        if bases:  # flow.Automation itself has no nodes and is not checked
            body[SHADOWED] = tuple(getattr(namespace, "shadowed", ()))
        return super().__new__(mcs, name, bases, body, **kwargs)


class Automation(metaclass=AutomationMeta):
    """Base class of automations. Each class attribute that is a :class:`Node` is a named step."""

    unique: ClassVar[bool | tuple[str, ...]] = False
    publish_receivers: ClassVar[bool] = False
    default_template_name: ClassVar[str | None] = None
    context: ClassVar[Mapping[str, Any] | None] = None

    _flow: ClassVar[Flow]  # the checked graph, set at class creation

    # The instance's fields, set by ``_bind``.
    id: str | None
    data: dict[str, Any]
    session_id: str | None
    answers: dict[str, Any] | None
    _state: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._flow = build(cls)

    def __init__(self, **data: Any) -> None:
        raise AutomationError(f"{type(self).__name__}(...) starts an automation through the automations runner, "
                              "which is not built yet; nothing can start automations in the daemon so far")

    @classmethod
    def _bind(cls, automation_id: str | None, data: dict[str, Any], *, session_id: str | None = None,
              answers: dict[str, Any] | None = None, state: str = "running") -> Automation:
        """An instance over existing state (the engine's way in; ``data`` is kept live, not copied)."""
        self = object.__new__(cls)
        self.id = automation_id
        self.data = data
        self.session_id = session_id
        self.answers = answers
        self._state = state
        return self

    # The seed's instance API.
    def save(self) -> None:
        """Accepted for the seed's receivers; data is saved with the step's or message's commit."""

    def is_finished(self) -> bool:
        return self._state != "running"

    finished = is_finished

    def send_message(self, message: str, token: str | None = None, data: Any = None) -> Any:
        """Send ``message`` to this instance (queued; delivered by the runner after this commit)."""
        return _outbox("send_message").send(self.id, None, message, token, data)

    @classmethod
    def dispatch_message(cls, automation: Any, message: str, token: str | None = None, data: Any = None) -> Any:
        """Send ``message`` to one automation (an instance or its id), from step or receiver code."""
        target = automation.id if isinstance(automation, Automation) else automation
        if not isinstance(target, str):
            raise AutomationError(f"dispatch_message: automation ids are strings, not {type(target).__name__}")
        return _outbox("dispatch_message").send(target, None, message, token, data)

    @classmethod
    def broadcast_message(cls, message: str, token: str | None = None, data: Any = None) -> Any:
        """Send ``message`` to every running instance of this class (stopped by a ``"received"`` result)."""
        return _outbox("broadcast_message").send(None, cls, message, token, data)

    @classmethod
    def satisfies_data_requirements(cls, message: str, data: Any) -> bool:
        """Whether ``data`` meets the receiver's ``@require_data_parameters`` (True without any)."""
        receiver = getattr(cls, f"receive_{message}", None)
        required = getattr(receiver, "_mailgate_required_data", None) or {}
        for key, kind in required.items():
            if not isinstance(data, Mapping) or key not in data:
                return False
            try:
                kind(data[key])
            except (TypeError, ValueError):
                return False
        return True

    @classmethod
    def receivers(cls) -> list[str]:
        """The message names this class receives (its ``receive_<name>`` methods)."""
        return sorted(n[len("receive_"):] for n in dir(cls) if n.startswith("receive_") and callable(getattr(cls, n)))

    @classmethod
    def get_node(cls, name: str) -> Node:
        try:
            return cls._flow.nodes[name]  # type: ignore[no-any-return]
        except KeyError:
            raise AutomationError(f"{cls.__name__} has no node {name!r}; its nodes: {', '.join(cls._flow.order)}") from None

    @classmethod
    def node_names(cls) -> tuple[str, ...]:
        return tuple(cls._flow.order)

    @classmethod
    def get_verbose_name(cls) -> str:
        meta = getattr(cls, "Meta", None)
        return str(getattr(meta, "verbose_name", None) or f"Automation {cls.__name__}")

    @classmethod
    def get_verbose_name_plural(cls) -> str:
        meta = getattr(cls, "Meta", None)
        return str(getattr(meta, "verbose_name_plural", None) or f"Automations {cls.__name__}")

    @classmethod
    def get_automation_class_name(cls) -> str:
        """The class's name: ``Meta.name`` if set, else its dotted path ``module.Class``."""
        meta = getattr(cls, "Meta", None)
        name = getattr(meta, "name", None)
        return str(name) if name else f"{cls.__module__}.{cls.__qualname__}"


def _outbox(function: str) -> Outbox:
    run = CURRENT_RUN.get()
    if run is None:
        raise AutomationError(f"{function}() works inside an automation's step or receiver (run by the automations "
                              "engine); the runner that sends messages from elsewhere is not built yet")
    return run


# Attribute names a node must not take (the seed's list, plus this port's instance fields).
