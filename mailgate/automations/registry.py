"""The automation classes this process knows, and how a class is named (AUTOMATIONS.md §4.4).

A class is named by its dotted path ``module.Class``, by its ``Meta.name``, or by its bare class name
when exactly one loaded class has it (files loaded through ``[interviews] paths`` get a generated
module name, so their dotted path is not one a person types). Its canonical name, stored in the
``class`` column, is ``Meta.name`` if set, else the dotted path.

Discovery: :func:`load_automations` takes the ``[interviews]`` ``modules`` and ``paths`` lists and
collects every ``flow.Automation`` subclass defined at the top level of each. Files go through the
interview loader's importer, so a file that defines both interviews and automations is imported once.
``load_interviews`` itself is unchanged (a module must still define an Interview); the runner calls
this function next to it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mailgate.automations.errors import UnknownAutomationClass
from mailgate.automations.flow import Automation
from mailgate.core.interviews import _import_path
from mailgate.errors import InterviewLoadError

AutomationClass = type[Automation]


class AutomationRegistry:
    def __init__(self, classes: Iterable[AutomationClass] = ()) -> None:
        self._by_name: dict[str, AutomationClass] = {}
        for cls in classes:
            self.add(cls)

    def add(self, cls: AutomationClass) -> None:
        name = cls.get_automation_class_name()
        existing = self._by_name.get(name)
        if existing is not None and existing is not cls:
            raise InterviewLoadError(f"two automation classes are named {name!r} ({_where(existing)} and {_where(cls)}); "
                                     "give one another Meta.name")
        self._by_name[name] = cls

    def name_of(self, cls: AutomationClass) -> str:
        return cls.get_automation_class_name()

    def resolve(self, name: str) -> AutomationClass:
        """The class named ``name`` (canonical name, dotted path, Meta.name or unambiguous bare name)."""
        found = self._by_name.get(name)
        if found is not None:
            return found
        dotted = [c for c in self._by_name.values() if f"{c.__module__}.{c.__qualname__}" == name]
        if len(dotted) == 1:
            return dotted[0]
        bare = [c for c in self._by_name.values() if c.__qualname__ == name or c.__name__ == name]
        if len(bare) == 1:
            return bare[0]
        if len(bare) > 1:
            names = ", ".join(sorted(self.name_of(c) for c in bare))
            raise UnknownAutomationClass(f"automation class name {name!r} is ambiguous: {names}; use one of these names")
        known = ", ".join(sorted(self._by_name)) or "none loaded; define them in the [interviews] modules or paths"
        raise UnknownAutomationClass(f"no automation class named {name!r}; known classes: {known}")

    def describe(self) -> list[dict[str, Any]]:
        """Each class's name, verbose name and published receivers (the CLI's ``classes``; the seed's
        ``get_automations``), by name."""
        return [{"name": name, "verbose_name": cls.get_verbose_name(),
                 "receivers": cls.receivers() if cls.publish_receivers else []}
                for name, cls in sorted(self._by_name.items())]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Iterator[AutomationClass]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def collect(module: Any) -> list[AutomationClass]:
    """The Automation subclasses a module defines at its top level (with at least one node)."""
    found = []
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, Automation) and value is not Automation
                and value.__module__ == module.__name__ and value.node_names()):
            found.append(value)
    return found


def load_automations(modules: Iterable[str] = (), paths: Iterable[str] = ()) -> AutomationRegistry:
    """Import the ``[interviews]`` modules and files and collect their automation classes."""
    registry = AutomationRegistry()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise InterviewLoadError(f"cannot import module {name!r}: {type(exc).__name__}: {exc}") from exc
        for cls in collect(module):
            registry.add(cls)
    for path in paths:
        for cls in collect(_import_path(Path(path))):
            registry.add(cls)
    return registry
