"""The tagged JSON codec for a session's answers (never pickle).

Plain JSON values pass through. Other supported values become a one-key object ``{"$mg": tag, ...}``:
``datetime``, ``date``, ``time``, ``set``, ``frozenset``, ``tuple`` and references to mailgate objects
(a background task, an e-mail) that are stored by id and resolved again on load. A registered
datetime subclass (docassemble's ``DADateTime``) is a ``datetime`` marked with its kind, so it comes
back as itself (and as a plain datetime where its class is not registered). A dict that itself
has the key ``"$mg"`` is escaped so that user data can never be mistaken for a tag.

Answers nest at most :data:`MAX_DEPTH` containers deep and hold Unicode text only (no lone UTF-16
surrogates): deeper values would exhaust Python's recursion limit, and a surrogate cannot be written
as UTF-8, so both are refused with an :class:`AnswersError` naming where they are.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable
from typing import Any, Protocol

from mailgate.errors import AnswersError

TAG = "$mg"
# Containers (dict, list, tuple, set) inside one another. Generous for interview data, and far
# below the recursion limit even with a tag's two JSON levels per container.
MAX_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")


class Reference(Protocol):
    """A mailgate object kept in answers by reference (``Task``, ``DAEmail``)."""

    ref_kind: str

    @property
    def id(self) -> str: ...


_ref_types: dict[str, Callable[[str], Any]] = {}
_ref_classes: dict[type, str] = {}


_datetime_types: dict[str, type[dt.datetime]] = {}
_datetime_kinds: dict[type, str] = {}


def register_datetime(kind: str, cls: type[dt.datetime]) -> None:
    """Teach the codec a datetime subclass: stored as ``{"$mg": "datetime", "v": ..., "as": kind}``."""
    _datetime_types[kind] = cls
    _datetime_kinds[cls] = kind


def register_reference(kind: str, cls: type, factory: Callable[[str], Any]) -> None:
    """Teach the codec a reference type: instances of ``cls`` are stored as ``{"$mg": kind, "id": ...}``."""
    _ref_types[kind] = factory
    _ref_classes[cls] = kind


def encode(answers: dict[str, Any]) -> str:
    """Answers -> compact JSON text. Raises AnswersError naming the path of an unsupported value."""
    if not isinstance(answers, dict):
        raise AnswersError(f"answers must be a dict, not {type(answers).__name__}")
    return _dumps(answers, "answers")


def _dumps(value: Any, path: str) -> str:
    text = json.dumps(_enc(value, path, 0), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if not text.isascii() and _SURROGATE.search(text):  # rare: find which string, for the message
        _find_surrogate(value, path)
    return text


def _find_surrogate(value: Any, path: str) -> None:
    stack = [(value, path)]
    while stack:
        v, where = stack.pop()
        found = _SURROGATE.search(v) if isinstance(v, str) else None
        if found:
            raise AnswersError(f"{where} holds a lone UTF-16 surrogate ({ascii(found.group())}), "
                               "which is not Unicode text; store well-formed strings")
        if isinstance(v, dict):
            for k, item in v.items():
                if isinstance(k, str) and _SURROGATE.search(k):
                    raise AnswersError(f"{where} has a key {k!r} with a lone UTF-16 surrogate, which is not Unicode text")
                stack.append((item, f"{where}[{k!r}]"))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(v))
        elif isinstance(v, (set, frozenset)):
            stack.extend((item, f"{where}{{...}}") for item in v)
    raise AnswersError(f"{path} holds a lone UTF-16 surrogate, which is not Unicode text; store well-formed strings")


def _too_deep(path: str) -> AnswersError:
    return AnswersError(f"{path} nests containers deeper than {MAX_DEPTH} levels; flatten it")


def _enc(value: Any, path: str, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise AnswersError(f"{path} is {value!r}, which JSON cannot hold; store None or a string instead")
        return value
    if depth >= MAX_DEPTH and isinstance(value, (dict, list, tuple, set, frozenset)):
        raise _too_deep(path)
    depth += 1
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise AnswersError(f"{path} has a key {k!r} of type {type(k).__name__}; dict keys in answers must be strings")
            out[k] = _enc(v, f"{path}[{k!r}]", depth)
        return {TAG: "dict", "v": out} if TAG in out else out
    if isinstance(value, list):
        return [_enc(v, f"{path}[{i}]", depth) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [_enc(v, f"{path}[{i}]", depth) for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        items = [_enc(v, f"{path}{{...}}", depth) for v in value]
        items.sort(key=lambda x: json.dumps(x, sort_keys=True))  # stable text: unchanged sets compare equal
        return {TAG: "set" if isinstance(value, set) else "frozenset", "v": items}
    if isinstance(value, dt.datetime):
        subclass = _datetime_kinds.get(type(value))
        if subclass is not None:
            return {TAG: "datetime", "v": value.isoformat(), "as": subclass}
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
    except (TypeError, ValueError, RecursionError) as exc:
        raise AnswersError(f"stored answers are not valid JSON: {exc}") from None
    value = _dec(raw, 0)
    if not isinstance(value, dict):
        raise AnswersError("stored answers are not a JSON object")
    return value


def _dec(value: Any, depth: int) -> Any:
    if not isinstance(value, (list, dict)):
        return value
    tag = value.get(TAG) if isinstance(value, dict) else None
    if isinstance(value, dict) and isinstance(tag, str) and (tag in _LEAF_TAGS or tag in _ref_types):
        return _dec_leaf(value, tag)
    if depth >= MAX_DEPTH:  # the same containers as _enc counts, so whatever encode wrote decodes
        raise _too_deep("stored data")
    depth += 1
    if isinstance(value, list):
        return [_dec(v, depth) for v in value]
    if tag is None:
        return {k: _dec(v, depth) for k, v in value.items()}
    if tag == "dict":
        return {k: _dec(v, depth) for k, v in value["v"].items()}
    if tag == "tuple":
        return tuple(_dec(v, depth) for v in value["v"])
    if tag == "set":
        return {_dec(v, depth) for v in value["v"]}
    if tag == "frozenset":
        return frozenset(_dec(v, depth) for v in value["v"])
    raise AnswersError(f"stored answers hold an unknown tag {tag!r}; was it written by a newer mailgate?")


_LEAF_TAGS = ("datetime", "date", "time")


def _dec_leaf(value: dict[str, Any], tag: str) -> Any:
    if tag == "datetime":
        return _datetime_types.get(value.get("as", ""), dt.datetime).fromisoformat(value["v"])
    if tag == "date":
        return dt.date.fromisoformat(value["v"])
    if tag == "time":
        return dt.time.fromisoformat(value["v"])
    return _ref_types[tag](value["id"])


def encode_value(value: Any, what: str = "value") -> str:
    """One value (a task result, an action argument) -> JSON text with the same tags."""
    return _dumps(value, what)


def decode_value(text: str) -> Any:
    """Inverse of :func:`encode_value`."""
    try:
        raw = json.loads(text)
    except RecursionError:
        raise _too_deep("a stored value") from None
    return _dec(raw, 0)


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
