"""``unique``: the key that makes at most one *running* automation per class and value set.

The store enforces it with ``UNIQUE(class, unique_key) WHERE state = 'running'``; :func:`unique_key`
computes the key. ``unique = False`` (the default) gives None: no constraint. ``unique = True`` is the
empty field set: one running instance per class. ``unique = ("email", "session")`` takes each field
from the automation's data at creation (``"session"`` is the pseudo-field for the bound session's id,
None when free-standing). The key is the SHA-256 (hex) of the canonical JSON of ``[[field, value],
...]`` in declared order, values encoded with the tagged codec (so a datetime and its ISO string
differ): fixed length for the index, equal exactly when every value is equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mailgate.automations.errors import AutomationError
from mailgate.core import answers as codec
from mailgate.errors import AnswersError

SESSION = "session"


def unique_fields(cls: type) -> tuple[str, ...] | None:
    """The class's ``unique`` as a field tuple (None: not unique); a clear error for anything else."""
    unique = getattr(cls, "unique", False)
    if unique is False or unique is None:
        return None
    if unique is True:
        return ()
    if isinstance(unique, str) or not isinstance(unique, (tuple, list)) or not all(isinstance(u, str) for u in unique):
        raise AutomationError(f"{cls.__name__}.unique must be True, False or a tuple of data field names, not {unique!r}")
    return tuple(unique)


def unique_key(cls: type, data: Mapping[str, Any], session_id: str | None) -> str | None:
    """The ``unique_key`` of a new automation of ``cls`` with ``data`` bound to ``session_id``."""
    fields = unique_fields(cls)
    if fields is None:
        return None
    pairs = []
    for name in fields:
        if name == SESSION:
            value: Any = session_id
        elif name in data:
            value = data[name]
        else:
            raise AutomationError(f"{cls.__name__} is unique by {', '.join(fields)}: the data lacks {name!r}")
        try:
            pairs.append([name, json.loads(codec.encode_value(value, f"{cls.__name__} unique field {name!r}"))])
        except AnswersError as exc:
            raise AutomationError(str(exc)) from None
    text = json.dumps(pairs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
