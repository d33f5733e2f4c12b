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

from mailgate.automations import context
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
    _key: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._flow = build(cls)

    def __init__(self, **data: Any) -> None:
        """``Class(**data)`` inside an action (or a step) creates an automation bound to the action's
        session, in the action's commit; ``Class(automation_id=ID)`` is a handle on an existing one."""
        binding = _binding(f"{type(self).__name__}(...)")
        if "automation_id" in data or "automation" in data:
            ref = data.pop("automation_id", None) or data.pop("automation", None)
            if data:
                raise AutomationError(f"{type(self).__name__}(automation_id=...) takes no other arguments, got "
                                      f"{', '.join(sorted(data))}")
            binding.handle(self, ref.id if isinstance(ref, Automation) else ref)
            return
        binding.create_in_action(self, data)

    # -- from free code (API, CLI, tests, other interviews' actions) -------------------------------
    @classmethod
    async def start_async(cls, session: str | None = None, user: Any = None, autorun: bool = True,
                          **data: Any) -> tuple[Automation, bool]:
        """Create an automation (bound to ``session``, or free-standing); ``(instance, created)``,
        ``created`` False when ``unique`` returned the running one. It runs in the runner, never here."""
        return await _binding("start_async()").start(cls, session, user, autorun, data)  # type: ignore[no-any-return]

    @classmethod
    def start(cls, session: str | None = None, user: Any = None, autorun: bool = True,
              **data: Any) -> tuple[Automation, bool]:
        """:meth:`start_async` for sync code (a sync action, a thread); on the event loop use ``await start_async``."""
        binding = _binding("start()")
        return binding.blocking(binding.start(cls, session, user, autorun, data), "start()", "start_async")  # type: ignore[no-any-return]

    @classmethod
    async def by_key_async(cls, key: str) -> Automation:
        """The automation whose ``get_key()`` is ``key`` (NotFound otherwise)."""
        return await _binding("by_key_async()").by_key(cls, key)  # type: ignore[no-any-return]

    @classmethod
    def by_key(cls, key: str) -> Automation:
        binding = _binding("by_key()")
        return binding.blocking(binding.by_key(cls, key), "by_key()", "by_key_async")  # type: ignore[no-any-return]

    @classmethod
    async def create_on_message_async(cls, message: str, token: str | None = None, data: Any = None,
                                      user: Any = None, session: str | None = None) -> Any:
        """Create an instance (honouring ``unique`` with its fields taken from ``data``) and queue
        ``message`` before its first node, in one commit; the message's handle."""
        return await _binding("create_on_message_async()").create_on_message(cls, message, token, data, user, session)

    @classmethod
    def create_on_message(cls, message: str, token: str | None = None, data: Any = None, user: Any = None,
                          session: str | None = None) -> Any:
        binding = _binding("create_on_message()")
        return binding.blocking(binding.create_on_message(cls, message, token, data, user, session),
                                "create_on_message()", "create_on_message_async")

    def get_key(self) -> str:
        """The automation's key for URLs (an HMAC of its id: not guessable)."""
        return str(self._key)

    async def run_async(self, wait: float | None = None) -> list[str]:
        """Wake the runner for this automation; with ``wait``, wait (at most that many seconds) until
        nothing of it is due any more. The open nodes."""
        return await _binding("run_async()").run(self, wait)  # type: ignore[no-any-return]

    def run(self, wait: float | None = None) -> list[str]:
        """:meth:`run_async` for sync code. Nodes never run in the caller's thread: the runner runs them."""
        binding = _binding("run()")
        return binding.blocking(binding.run(self, wait), "run()", "run_async")  # type: ignore[no-any-return]

    def nice(self) -> None:
        """Wake the runner for this automation and return at once."""
        _binding("nice()").nice(self)

    async def send_message_async(self, message: str, token: str | None = None, data: Any = None) -> Any:
        return await _binding("send_message_async()").send(self.id, None, message, token, data)

    @classmethod
    async def broadcast_message_async(cls, message: str, token: str | None = None, data: Any = None) -> Any:
        """:meth:`broadcast_message` from async code outside a step: stored in its own commit."""
        return await _binding("broadcast_message_async()").send(None, cls, message, token, data)

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
        self._key = None
        return self

    # The seed's instance API.
    def save(self) -> None:
        """Accepted for the seed's receivers; data is saved with the step's or message's commit."""

    def is_finished(self) -> bool:
        return self._state != "running"

    finished = is_finished

    def send_message(self, message: str, token: str | None = None, data: Any = None) -> Any:
        """Send ``message`` to this instance (queued; delivered by the runner after this commit). In a
        step or receiver: with the step's commit; in an action: with the action's; elsewhere in its
        own commit. Outside steps the result is a MessageHandle (``wait``, ``result``)."""
        if CURRENT_RUN.get() is None:
            return _binding("send_message()").send_now(self.id, None, message, token, data)
        return _outbox("send_message").send(self.id, None, message, token, data)

    @classmethod
    def dispatch_message(cls, automation: Any, message: str, token: str | None = None, data: Any = None) -> Any:
        """Send ``message`` to one automation (an instance or its id), from step or receiver code."""
        target = automation.id if isinstance(automation, Automation) else automation
        if not isinstance(target, str):
            raise AutomationError(f"dispatch_message: automation ids are strings, not {type(target).__name__}")
        if CURRENT_RUN.get() is None:
            return _binding("dispatch_message()").send_now(target, None, message, token, data)
        return _outbox("dispatch_message").send(target, None, message, token, data)

    @classmethod
    def broadcast_message(cls, message: str, token: str | None = None, data: Any = None) -> Any:
        """Send ``message`` to every running instance of this class (stopped by a ``"received"`` result)."""
        if CURRENT_RUN.get() is None:
            return _binding("broadcast_message()").send_now(None, cls, message, token, data)
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


def _binding(function: str) -> Any:
    """The runtime that stores automations for author code (installed by mailgate's core)."""
    found = context.binding()
    if found is None:
        raise AutomationError(f"{function} needs a running mailgate (a daemon, or `mailgate automations` commands); "
                              "none is running in this process")
    return found


def _outbox(function: str) -> Outbox:
    run = CURRENT_RUN.get()
    if run is None:
        raise AutomationError(f"{function}() works inside an automation's step or receiver (run by the automations "
                              "engine)")
    return run


# Attribute names a node must not take (the seed's list, plus this port's instance fields).
