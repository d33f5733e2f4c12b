from __future__ import annotations

import datetime as dt
import json

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
