"""The in-memory hand-over of big queued messages from the SMTP edge to this process's processor
(``mailgate/core/handover.py``): what is kept, for how long, and that a snapshot outlives a trim."""

from __future__ import annotations

from mailgate.core.handover import Handover


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_big_messages_are_kept_and_released_once_claimed() -> None:
    h = Handover(min_size=10, max_bytes=100, max_age=60, clock=Clock())
    small, big = b"x" * 9, bytearray(b"y" * 10)
    h.keep("small", small)
    h.keep("big", big)
    held = h.snapshot()
    assert list(held) == ["big"] and held["big"] is big  # the buffer itself, no copy
    h.release("big")
    h.release("big")  # twice: nothing more happens
    assert h.snapshot() == {} and len(h) == 0


def test_the_oldest_go_past_the_byte_cap_and_the_age_limit_and_a_snapshot_keeps_its_own() -> None:
    clock = Clock()
    h = Handover(min_size=1, max_bytes=25, max_age=60, clock=clock)
    for n in range(3):
        h.keep(f"q{n}", bytes([n]) * 10)
    assert list(h.snapshot()) == ["q1", "q2"]  # 30 bytes > 25: the oldest went
    taken = h.snapshot()
    clock.now += 61
    h.keep("q3", b"z" * 10)
    assert list(h.snapshot()) == ["q3"]  # the others are older than a minute: claimed by another node
    assert taken["q1"] == b"\x01" * 10  # a claim in flight still has what it asked the store not to read
    h.keep("huge", b"h" * 26)  # bigger than the cap: never kept
    assert list(h.snapshot()) == ["q3"]
