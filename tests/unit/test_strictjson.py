from __future__ import annotations

import pytest

from mailgate.edges.web import strictjson
from mailgate.edges.web.strictjson import MAX_JSON_DEPTH, JSONRejected


@pytest.mark.parametrize(("text", "deepest"), [
    ("", 0), ("1", 0), ('"[[["', 0), ("[]", 1), ('[1, {"a": [[]]}]', 4),
    ('["]]]\\" [[[", [[]]]', 3),  # brackets inside strings, an escaped quote inside a string
    ('["\\\\", [[]]]', 3),  # a string that ends in an escaped backslash
    ("[[]][[[]]]", 3),
])
def test_depth_counts_containers_outside_strings(text: str, deepest: int) -> None:
    assert strictjson.depth(text) == deepest


def test_loads_takes_json_up_to_the_limit_and_refuses_what_a_store_cannot_keep() -> None:
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert strictjson.loads(ok) is not None
    assert strictjson.loads('{"emoji": "\\ud83d\\ude00", "n": 1.5e300}') == {"emoji": "\U0001f600", "n": 1.5e300}
    for text, message in [("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "deeper than"),
                          ('["\\ud800"]', "lone UTF-16 surrogate"), ('{"\\udc00": 1}', "lone UTF-16 surrogate"),
                          ("[NaN]", "NaN is not JSON"), ("Infinity", "Infinity is not JSON"), ("[-1e400]", "too large"),
                          ("{", "not valid JSON"), ('{"a": [}', "not valid JSON")]:
        with pytest.raises(JSONRejected, match=message):
            strictjson.loads(text)
