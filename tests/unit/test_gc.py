"""``tune_gc``: the garbage collector settings ``mailgate serve`` and ``mailgate demo`` apply once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mailgate.daemon.lifecycle import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(*before)


def test_sets_the_young_threshold_and_freezes_what_lives_from_the_start(restore_gc: None) -> None:
    gc.set_threshold(700, 11, 12)
    kept = [[i] for i in range(1000)]  # alive "since the start": frozen, no collection walks it again
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, 11, 12)
    assert gc.get_freeze_count() >= len(kept)


def test_zero_keeps_pythons_threshold(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0


def test_garbage_is_collected_before_freezing(restore_gc: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    import weakref

    gc.disable()  # no automatic pass may free it first
    node = Node()
    ref = weakref.ref(node)
    del node
    assert ref() is not None
    tune_gc(50_000)
    assert ref() is None  # collected, not frozen for the life of the process
