"""Automations: durable multi-step workflows, a native port of Django Automations (issue 17).

Authors write ``from mailgate.automations import flow, this``. So far this package holds the author
API (:mod:`.flow`, checked at class creation by :mod:`.graph`), the class registry
(:mod:`.registry`), ``unique`` keys (:mod:`.unique`) and the pure engine (:mod:`.engine`). The
runner that stores, claims and runs automations is :mod:`mailgate.core.automation_runner`; what
``Class(**data)``, ``Class.start`` and messages from outside a step do is
:mod:`mailgate.core.automation_author`.
"""

from __future__ import annotations

from mailgate.automations import flow
from mailgate.automations.flow import this

__all__ = ["flow", "this"]
