"""An ``[automations] assignee_resolver`` for the tests: only the user "dana" may take any form."""

from __future__ import annotations

from typing import Any


def dana_only(user: Any, step: Any) -> bool:
    return bool(user.id == "dana")
