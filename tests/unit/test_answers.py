from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from mailgate.core import answers as codec
from mailgate.core.tasks import Task
from mailgate.errors import AnswersError


def test_round_trip_of_tagged_values() -> None:
    value = {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
        "day": dt.date(2026, 1, 2),
        "at": dt.time(9, 30),
        "tags": {"b", "a"},
        "frozen": frozenset({1}),
        "pair": (1, "x"),
        "task": Task("abc"),
        "nested": [{"$mg": "user data that looks like a tag"}],
        "plain": [1, 2.5, None, True, "é"],
    }
    text = codec.encode(value)
    assert "pickle" not in text
    back = codec.decode(text)
    assert back == value
    assert isinstance(back["task"], Task) and back["task"].id == "abc"
    assert back["when"].tzinfo is not None and back["naive"].tzinfo is None


def test_sets_encode_stably() -> None:
    assert codec.encode({"s": {3, 1, 2}}) == codec.encode({"s": {2, 3, 1}})


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"x": object()}, "answers['x']"),
        ({"x": [1, {"y": b"bytes"}]}, "answers['x'][1]['y']"),
        ({"x": float("nan")}, "answers['x']"),
        ({"x": {1: "int key"}}, "answers['x']"),
    ],
)
def test_unserialisable_value_names_its_path(value: dict, path: str) -> None:
    with pytest.raises(AnswersError) as info:
        codec.encode(value)
    assert path in str(info.value)


def test_decode_errors_are_clear() -> None:
    with pytest.raises(AnswersError, match="not valid JSON"):
        codec.decode("{")
    with pytest.raises(AnswersError, match="unknown tag 'martian'"):
        codec.decode(json.dumps({"x": {"$mg": "martian", "id": "1"}}))
    with pytest.raises(AnswersError, match="not a JSON object"):
        codec.decode("[]")


def test_references_finds_tasks_anywhere() -> None:
    answers = {"a": Task("1"), "b": [{"c": (Task("2"),)}], "d": "Task"}
    assert sorted(t.id for t in codec.references(answers)) == ["1", "2"]


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [codec.MAX_DEPTH + 1, 500, 5000])
def test_deep_answers_are_refused_not_a_recursion_error(levels: int) -> None:
    with pytest.raises(AnswersError, match=f"deeper than {codec.MAX_DEPTH} levels"):
        codec.encode({"a": nested(levels - 1)})  # the answers dict is the first level
    with pytest.raises(AnswersError, match=f"deeper than {codec.MAX_DEPTH} levels"):
        codec.encode_value(nested(levels))
    text = "[" * levels + "]" * levels
    with pytest.raises(AnswersError, match="deeper than"):
        codec.decode_value(text)
    with pytest.raises(AnswersError):
        codec.decode('{"a":' + text + "}")


def test_the_deepest_answers_allowed_round_trip_with_tags_inside() -> None:
    deepest = {"a": nested(codec.MAX_DEPTH - 2, (dt.date(2026, 1, 2), Task("t")))}
    assert codec.decode(codec.encode(deepest)) == deepest
    assert codec.decode_value(codec.encode_value(nested(codec.MAX_DEPTH, dt.time(9)))) == nested(codec.MAX_DEPTH, dt.time(9))


@pytest.mark.parametrize(("value", "where"), [
    ({"name": "\ud800"}, "answers['name']"),
    ({"list": ["ok", ("x", "a\udfffb")]}, "answers['list'][1][1]"),
    ({"k\udc80": 1}, "key"),
    ({"s": {"\ud83d"}}, "answers['s']{...}"),
])
def test_lone_surrogates_are_refused_naming_where(value: dict[str, Any], where: str) -> None:
    with pytest.raises(AnswersError, match="lone UTF-16 surrogate") as info:
        codec.encode(value)
    assert where in str(info.value)
    pair = json.loads('"\\ud83d\\ude00"')  # JSON's escaped surrogate pair is one character
    assert codec.decode(codec.encode({"emoji": pair})) == {"emoji": "\U0001f600"}


def test_a_dadatetime_comes_back_as_a_dadatetime() -> None:
    from mailgate.author.dates import DADateTime, as_datetime
    due = as_datetime("2026-01-05 10:30", timezone="America/New_York").plus(days=20)
    back = codec.decode(codec.encode({"due": due, "plain": dt.datetime(2026, 1, 5, tzinfo=dt.UTC)}))
    assert type(back["due"]) is DADateTime and back["due"] == due and back["due"].utcoffset() == due.utcoffset()
    assert back["due"].plus(days=1).format_date() == "January 26, 2026" and str(back["due"]) == "January 25, 2026"
    assert type(back["plain"]) is dt.datetime  # only the registered subclass is marked
    # a kind this process does not know (an older or newer writer) still reads as a datetime
    unknown = codec.decode('{"d": {"$mg": "datetime", "v": "2026-01-05T00:00:00+00:00", "as": "Other"}}')
    assert unknown["d"] == dt.datetime(2026, 1, 5, tzinfo=dt.UTC) and type(unknown["d"]) is dt.datetime
