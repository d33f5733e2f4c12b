"""Drives the pure automations engine the way the runner will: keeps one automation's rows in memory,
applies each Outcome, and moves a fake ``now`` from wake-up to wake-up."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from typing import Any

from mailgate.automations import engine
from mailgate.automations.engine import EngineConfig, Outcome, QueuedMessage, Snapshot, StepRow
from mailgate.core.context import User


class Driver:
    def __init__(self, cls: type, data: Mapping[str, Any] | None = None, *, now: float,
                 config: EngineConfig | None = None, session_id: str | None = None,
                 answers: dict[str, Any] | None = None, hooks: Mapping[str, Any] | None = None) -> None:
        self.hooks = hooks
        self.cls = cls
        self.id = uuid.uuid4().hex
        self.data: dict[str, Any] = dict(data or {})
        self.state = "running"
        self.rows: dict[str, StepRow] = {}
        self.queue: list[QueuedMessage] = []
        self.now = now
        self.config = config or EngineConfig()
        self.session_id = session_id
        self.answers = answers
        self.fresh = True
        self.sent: list[Any] = []
        self.tasks: list[Any] = []
        self.consumed: list[Any] = []
        self.wake_at: float | None = None
        self.runs = 0
        self._ids = itertools.count(1)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.id, self.data, list(self.rows.values()), list(self.queue), answers=self.answers,
                        session_id=self.session_id, state=self.state, fresh=self.fresh)

    def new_id(self) -> str:
        return f"{self.id[:8]}-{next(self._ids)}"

    def apply(self, out: Outcome) -> Outcome:
        self.data = out.data
        self.state = out.state
        for row in (*out.updated, *out.created):
            self.rows[row.id] = row
        done = {m.id for m in out.messages}
        self.queue = [m for m in self.queue if m.id not in done]
        self.consumed.extend(out.messages)
        self.sent.extend(out.sent)
        self.tasks.extend(out.tasks)
        # Everything due at ``now`` has run, so the next wake-up lies in the future (else a timer loop
        # would spin): the engine's invariant, checked on every run.
        assert out.wake_at is None or out.wake_at > self.now, (out.wake_at, self.now, self.history())
        self.wake_at = out.wake_at
        self.fresh = False
        self.runs += 1
        return out

    def run(self, now: float | None = None) -> Outcome:
        if now is not None:
            self.now = now
        return self.apply(engine.advance(self.cls, self.snapshot(), now=self.now, config=self.config,
                                         new_id=self.new_id, hooks=self.hooks))

    def send(self, message: str, token: str | None = None, data: Any = None) -> str:
        mid = uuid.uuid4().hex
        self.queue.append(QueuedMessage(mid, message, token, data))
        return mid

    def submit(self, step_id: str, user: User, values: Mapping[str, Any], **kw: Any) -> Outcome:
        return self.apply(engine.submit_form(self.cls, self.snapshot(), step_id, user, values, now=self.now,
                                             config=self.config, new_id=self.new_id, hooks=self.hooks, **kw))

    def until(self, t: float) -> None:
        """Run at every wake-up up to ``t`` (as a timer heap would), then set ``now = t``."""
        while self.state == "running" and self.wake_at is not None and self.wake_at <= t:
            self.run(max(self.wake_at, self.now))
        self.now = t

    def history(self) -> list[tuple[str, str, str | None]]:
        return [(s.node, s.state, s.message) for s in self.rows.values()]

    def open_nodes(self) -> list[str]:
        return [s.node for s in self.rows.values() if s.state in engine.OPEN_STATES]

    def step(self, node: str, state: str | None = None) -> StepRow:
        found = [s for s in self.rows.values() if s.node == node and (state is None or s.state == state)]
        assert found, f"no step at {node} ({state}): {self.history()}"
        return found[-1]
