"""Strict parsing of JSON from clients: RFC 8259 JSON, bounded nesting, Unicode text only.

``json.loads`` alone accepts ``NaN``/``Infinity``, turns ``1e999`` into ``inf``, recurses until a
``RecursionError`` on deep nesting, and yields lone UTF-16 surrogates (``"\\ud800"``) that no
UTF-8 store can hold. :func:`loads` refuses each of these with a :class:`JSONRejected` whose
message says what to send instead.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from mailgate.core.answers import MAX_DEPTH
from mailgate.errors import MailgateError

# Containers inside a request: the answers codec's limit, plus the body's own object around them.
MAX_JSON_DEPTH = MAX_DEPTH + 2
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONRejected(MailgateError):
    """Client JSON that is not valid, finite, shallow enough, or Unicode text."""


def _constant(name: str) -> Any:
    raise JSONRejected(f"{name} is not JSON (RFC 8259 has no NaN or Infinity); send null or a string instead")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONRejected(f"the number {text[:40]} is too large for a 64-bit float; send a smaller number or a string")
    return value


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, without recursing."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)  # 1 MB of brackets: ~0.2 s


def loads(text: str, what: str = "the request body") -> Any:
    """Parse client JSON; raise :class:`JSONRejected` naming ``what`` for anything a store cannot keep."""
    if depth(text) > MAX_JSON_DEPTH:
        raise JSONRejected(f"{what} nests arrays/objects deeper than {MAX_JSON_DEPTH} levels; flatten it")
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float)
    except JSONRejected:
        raise
    except (ValueError, RecursionError) as exc:
        raise JSONRejected(f"{what} is not valid JSON: {exc}") from None
    # One C-speed pass: json.dumps writes a lone surrogate through as is when ensure_ascii is off.
    if _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
        raise JSONRejected(f"{what} holds a lone UTF-16 surrogate (like \"\\ud800\"), which is not Unicode text; "
                           "send well-formed strings")
    return value
