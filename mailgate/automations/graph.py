"""Checking an automation class when it is created, and the frozen graph the engine walks.

:func:`build` resolves every ``this.x`` / ``"self.x"`` reference to a node name or a method, computes
each node's successor, matches each Split with its Join and rejects (``TypeError``, naming the class
and the node) everything AUTOMATIONS.md §4.1 lists: reserved or underscore names, unresolvable
references, ``If`` without ``Then``, duplicate modifiers, ``Split`` without ``.Next``, and a Split path
that can reach ``End`` (or fall off the last node) without passing its Join.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mailgate.automations import nodes as f

RESERVED = frozenset({
    "broadcast_message", "create_on_message", "data", "dispatch_message", "finished", "get_automation_class_name",
    "get_key", "get_model_instance", "get_verbose_name", "get_verbose_name_plural", "id", "kill", "model_class",
    "nice", "on", "on_signal", "run", "satisfies_data_requirements", "save", "send_message", "unique",
    "publish_receivers", "default_template_name", "context", "is_finished", "session_id", "answers", "key",
    "by_key", "receivers", "get_node", "node_names", "Meta",
})
DEFAULT_RECHECK = "default"
SHADOWED = "_mailgate_shadowed"  # set by flow.AutomationMeta: (name, value) of nodes a class body replaced  # Spec.recheck: use [automations] recheck_interval


@dataclass(frozen=True)
class Call:
    """A resolved callable or constant: ``kind`` is ``method`` (a name on the instance), ``func`` or ``value``."""

    kind: str
    target: Any

    def __call__(self, instance: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "method":
            return getattr(instance, self.target)(task, *args, **kwargs)
        if self.kind == "func":
            return self.target(task, *args, **kwargs)
        return self.target


@dataclass(frozen=True)
class Spec:
    """One node as the engine sees it (all references resolved to node names)."""

    name: str
    node: f.Node
    kind: str
    next: str | None  # explicit .Next or the following node in declaration order (None: the last)
    skip_if: Call | None = None
    skip_after: Call | None = None
    wait_until: Call | None = None
    wait_for: Call | None = None
    as_soon_as: Call | None = None
    recheck: float | str | None = DEFAULT_RECHECK
    func: Call | None = None  # Execute (None with a subclass ``method`` or a no-op)
    on_error: str | None = None
    then_node: str | None = None
    then_call: Call | None = None
    else_node: str | None = None
    else_call: Call | None = None
    paths: tuple[str, ...] = ()
    repeat_start: str | None = None
    join: str | None = None  # Split: the Join its paths meet at


@dataclass(frozen=True)
class Flow:
    order: tuple[str, ...]
    nodes: Mapping[str, f.Node]
    specs: Mapping[str, Spec] = field(default_factory=dict)

    @property
    def first(self) -> str | None:
        return self.order[0] if self.order else None


def _ref_name(value: Any) -> str | None:
    if isinstance(value, f.Ref):
        return value.name
    if isinstance(value, str):
        return value[5:] if value.startswith("self.") else value
    return None


class _Builder:
    def __init__(self, cls: type, nodes: dict[str, f.Node]) -> None:
        self.cls = cls
        self.nodes = nodes
        self.problems: list[str] = []

    def problem(self, node: str, text: str) -> None:
        self.problems.append(f"{self.cls.__qualname__}.{node}: {text}")

    def target(self, node: str, value: Any, what: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, f.Node):
            for name, candidate in self.nodes.items():
                if candidate is value:
                    return name
            self.problem(node, f"{what} names a node object that is not a node of this class")
            return None
        ref = _ref_name(value)
        if ref is None:
            self.problem(node, f"{what}({value!r}): expected this.<node>, 'self.<node>' or a node name")
            return None
        if ref not in self.nodes:
            self.problem(node, f"{what} names {ref!r}, which is no node of this class "
                               f"(nodes: {', '.join(self.nodes)})")
            return None
        return ref

    def call(self, node: str, value: Any, what: str) -> Call | None:
        if value is None:
            return None
        name = _ref_name(value)
        if name is not None:
            if name in self.nodes:
                self.problem(node, f"{what} names node {name!r}; a method or callable is expected here")
                return None
            if not callable(getattr(self.cls, name, None)):
                self.problem(node, f"{what} names {name!r}, which is no method of {self.cls.__qualname__}")
                return None
            return Call("method", name)
        if isinstance(value, f.Node):
            self.problem(node, f"{what} is given a node; a method or callable is expected here")
            return None
        return Call("func", value) if callable(value) else Call("value", value)

    def branch(self, node: str, value: Any, what: str) -> tuple[str | None, Call | None]:
        """If.Then/Else: a node to jump to, or a callable to execute before the next node."""
        name = _ref_name(value)
        if isinstance(value, f.Node) or (name is not None and name in self.nodes):
            return self.target(node, value, what), None
        return None, self.call(node, value, what)


def collect(cls: type) -> tuple[dict[str, f.Node], list[str]]:
    """The class's nodes in order (inherited first) and the names of those it defines itself."""
    nodes: dict[str, f.Node] = {}
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get("_flow")
        if isinstance(inherited, Flow):
            nodes.update(inherited.nodes)
    own = [name for name, value in cls.__dict__.items() if isinstance(value, f.Node)]
    for name in own:
        nodes[name] = cls.__dict__[name]
    return nodes, own


def build(cls: type) -> Flow:
    nodes, own = collect(cls)
    b = _Builder(cls, nodes)
    for name, value in cls.__dict__.get(SHADOWED, ()):
        what = "a method" if callable(value) else f"{type(value).__name__} {value!r}"
        b.problem(name, f"the node is replaced by {what} defined later under the same name in the class body; "
                        "rename one of them")
    for name, value in cls.__dict__.items():
        if isinstance(value, type) and issubclass(value, f.Node):
            b.problem(name, f"is the class flow.{value.__name__}, not a node: write flow.{value.__name__}(...)")
    if SHADOWED in cls.__dict__:
        delattr(cls, SHADOWED)
    for name in own:
        node = nodes[name]
        if name.startswith("_"):
            b.problem(name, "node names must not start with '_' (reserved)")
        elif name in RESERVED or name.startswith("receive_"):
            b.problem(name, "this name is an attribute of flow.Automation (or a receiver) and cannot be a node")
        if node.name != name or node.owner is not cls:
            b.problem(name, f"this node object is also node {node.name!r} of {getattr(node.owner, '__qualname__', '?')}; "
                            "create one node object per attribute")
        for text in node.problems:
            b.problem(name, text)
    order = tuple(nodes)
    specs: dict[str, Spec] = {}
    for i, name in enumerate(order):
        specs[name] = _spec(b, name, nodes[name], order[i + 1] if i + 1 < len(order) else None, order)
    for name, spec in list(specs.items()):
        if spec.kind == "split":
            specs[name] = _with_join(b, specs, name)
    if b.problems:
        raise TypeError("invalid automation class: " + "; ".join(dict.fromkeys(b.problems)))
    for name in own:
        delattr(cls, name)  # nodes live in the frozen graph only (see the module docstring of flow)
        nodes[name]._freeze()
    return Flow(order, MappingProxyType(dict(nodes)), MappingProxyType(specs))


def _spec(b: _Builder, name: str, node: f.Node, following: str | None, order: tuple[str, ...]) -> Spec:
    explicit = b.target(name, node.next, ".Next") if not isinstance(node, f.Split) else None
    recheck: float | str | None = DEFAULT_RECHECK if node.recheck is f.DEFAULT else node.recheck
    common: dict[str, Any] = dict(
        name=name, node=node, kind=node.kind, next=explicit or following,
        skip_if=b.call(name, node.skip_if, ".SkipIf"), skip_after=b.call(name, node.skip_after, ".SkipAfter"),
        wait_until=b.call(name, node.wait_until, ".AfterWaitingUntil"),
        wait_for=b.call(name, node.wait_for, ".AfterWaitingFor"),
        as_soon_as=b.call(name, node.as_soon_as, ".AsSoonAs"), recheck=recheck)
    if isinstance(node, f.Execute):
        func = b.call(name, node.func, "Execute") if node.func is not None else None
        if func is not None and func.kind == "value":
            b.problem(name, f"Execute({node.func!r}): a callable, this.<method> or 'self.<method>' is expected")
        return Spec(**common, func=func, on_error=b.target(name, node.on_error, ".OnError"))
    if isinstance(node, f.If):
        if node.then is None:
            b.problem(name, "If needs .Then(...)")
        then_node, then_call = b.branch(name, node.then, ".Then")
        else_node, else_call = b.branch(name, node.otherwise, ".Else")
        return Spec(**common, func=b.call(name, node.condition, "If"), then_node=then_node, then_call=then_call,
                    else_node=else_node, else_call=else_call)
    if isinstance(node, f.Split):
        if not node.paths:
            b.problem(name, "Split needs at least one .Next(node)")
        paths = tuple(p for p in (b.target(name, p, ".Next") for p in node.paths) if p is not None)
        return Spec(**common, paths=paths)
    if isinstance(node, f.Repeat):
        if node.every is None and node.at is None:
            b.problem(name, "Repeat needs a schedule: .At(h, m), .EveryHour(), .EveryNMinutes(n), .EveryNDays(n) or .EveryDay()")
        if node.at is not None and node.every is not None and node.every_days is None:
            b.problem(name, "Repeat.At(h, m) combines with .EveryNDays(n) / .EveryDay() only")
        start = b.target(name, node.start, "Repeat(start)") if node.start is not None else order[0]
        return Spec(**common, repeat_start=start)
    if isinstance(node, f.Form):
        clean = getattr(node.form, "clean", None)
        if not callable(clean):
            b.problem(name, f"Form({node.form!r}): the form needs a clean(values) method")
    if isinstance(node, f.SendMessage) and (
            isinstance(node.target, f.Ref) or (callable(node.target) and not isinstance(node.target, type))):
        return Spec(**common, func=b.call(name, node.target, "SendMessage target"))
    return Spec(**common)


def successors(specs: Mapping[str, Spec], spec: Spec) -> list[str | None]:
    """Where a path can go after ``spec`` (None: it falls off the last node, which ends it)."""
    if spec.kind == "end":
        return []
    if spec.kind == "repeat":
        return [spec.repeat_start]
    if spec.kind == "if":
        return [spec.then_node or spec.next, spec.else_node or spec.next]
    if spec.kind == "execute" and spec.on_error is not None:
        return [spec.next, spec.on_error]
    if spec.kind == "split":
        join = spec.join
        return [specs[join].next] if join is not None else []
    return [spec.next]


def _with_join(b: _Builder, specs: dict[str, Spec], split: str, stack: tuple[str, ...] = ()) -> Spec:
    spec = specs[split]
    if spec.join is not None or split in stack:
        return spec
    joins: set[str] = set()
    for path in spec.paths:
        seen: set[str] = set()
        todo: list[str | None] = [path]
        while todo:
            name = todo.pop()
            if name is None:
                b.problem(split, f"the path to {path!r} can fall off the last node without reaching a Join")
                continue
            if name in seen:
                continue
            seen.add(name)
            step = specs[name]
            if step.kind == "join":
                joins.add(name)
                continue
            if step.kind == "end":
                b.problem(split, f"the path to {path!r} can reach End ({name!r}) without its Join")
                continue
            if step.kind == "split":
                specs[name] = step = _with_join(b, specs, name, (*stack, split))
            todo.extend(successors(specs, step))
    if len(joins) > 1:
        b.problem(split, f"its paths meet at different Joins ({', '.join(sorted(joins))}); they must meet at one")
    join = next(iter(joins)) if len(joins) == 1 else None
    new = Spec(**{**spec.__dict__, "join": join})
    specs[split] = new
    return new
