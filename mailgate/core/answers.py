"""The tagged JSON codec for a session's answers (never pickle).

Plain JSON values pass through. Other supported values become a one-key object ``{"$mg": tag, ...}``:
``datetime``, ``date``, ``time``, ``set``, ``frozenset``, ``tuple`` and references to mailgate objects
(a background task, an e-mail) that are stored by id and resolved again on load. A dict that itself
has the key ``"$mg"`` is escaped so that user data can never be mistaken for a tag.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from typing import Any, Protocol

from mailgate.errors import AnswersError

TAG = "$mg"


class Reference(Protocol):
    """A mailgate object kept in answers by reference (``Task``, ``DAEmail``)."""

    ref_kind: str

    @property
    def id(self) -> str: ...


_ref_types: dict[str, Callable[[str], Any]] = {}
_ref_classes: dict[type, str] = {}


def register_reference(kind: str, cls: type, factory: Callable[[str], Any]) -> None:
    """Teach the codec a reference type: instances of ``cls`` are stored as ``{"$mg": kind, "id": ...}``."""
    _ref_types[kind] = factory
    _ref_classes[cls] = kind


def encode(answers: dict[str, Any]) -> str:
    """Answers -> compact JSON text. Raises AnswersError naming the path of an unsupported value."""
    if not isinstance(answers, dict):
        raise AnswersError(f"answers must be a dict, not {type(answers).__name__}")
    return json.dumps(_enc(answers, "answers"), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _enc(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise AnswersError(f"{path} is {value!r}, which JSON cannot hold; store None or a string instead")
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise AnswersError(f"{path} has a key {k!r} of type {type(k).__name__}; dict keys in answers must be strings")
            out[k] = _enc(v, f"{path}[{k!r}]")
        return {TAG: "dict", "v": out} if TAG in out else out
    if isinstance(value, list):
        return [_enc(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [_enc(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        items = [_enc(v, f"{path}{{...}}") for v in value]
        items.sort(key=lambda x: json.dumps(x, sort_keys=True))  # stable text: unchanged sets compare equal
        return {TAG: "set" if isinstance(value, set) else "frozenset", "v": items}
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "v": value.isoformat()}
    kind = _ref_classes.get(type(value))
    if kind is not None:
        return {TAG: kind, "id": value.id}
    raise AnswersError(
        f"{path} holds a {type(value).__module__}.{type(value).__qualname__}, which answers cannot store; "
        "use JSON types, datetime, date, time, set, tuple, or a Task/DAEmail"
    )


def decode(text: str) -> dict[str, Any]:
    """JSON text -> answers, with tagged values and references restored."""
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise AnswersError(f"stored answers are not valid JSON: {exc}") from None
    value = _dec(raw)
    if not isinstance(value, dict):
        raise AnswersError("stored answers are not a JSON object")
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: _dec(v) for k, v in value.items()}
    if tag == "dict":
        return {k: _dec(v) for k, v in value["v"].items()}
    if tag == "tuple":
        return tuple(_dec(v) for v in value["v"])
    if tag == "set":
        return {_dec(v) for v in value["v"]}
    if tag == "frozenset":
        return frozenset(_dec(v) for v in value["v"])
    if tag == "datetime":
        return dt.datetime.fromisoformat(value["v"])
    if tag == "date":
        return dt.date.fromisoformat(value["v"])
    if tag == "time":
        return dt.time.fromisoformat(value["v"])
    factory = _ref_types.get(tag)
    if factory is None:
        raise AnswersError(f"stored answers hold an unknown tag {tag!r}; was it written by a newer mailgate?")
    return factory(value["id"])


def encode_value(value: Any, what: str = "value") -> str:
    """One value (a task result, an action argument) -> JSON text with the same tags."""
    return json.dumps(_enc(value, what), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode_value(text: str) -> Any:
    """Inverse of :func:`encode_value`."""
    return _dec(json.loads(text))


def references(answers: Any) -> list[Any]:
    """Every reference object (Task, DAEmail) inside decoded answers, for batch prefetching."""
    found: list[Any] = []
    stack = [answers]
    while stack:
        v = stack.pop()
        if type(v) in _ref_classes:
            found.append(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
    return found
