"""Automations as the CLI's ``--json``, the HTTP API and pages show them: plain JSON dicts of the
store's rows (data decoded from the tagged codec, datetimes as ISO text), the history as a tree, and
the ``automation`` event's payload."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from mailgate.core import answers as codec
from mailgate.store.base import AutomationRecord, MessageRecord, StepRecord

OPEN = ("waiting", "interaction", "running")


def plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date, dt.time)) else str(value)


def decoded(text: str | None) -> Any:
    """A stored JSON column as plain JSON for people and clients (datetimes as ISO text)."""
    if text is None:
        return None
    try:
        return json.loads(json.dumps(codec.decode_value(text), default=plain))
    except Exception:  # noqa: BLE001 - a row written by other code: show it as stored rather than fail
        return text


def iso_time(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def automation_dict(rec: AutomationRecord) -> dict[str, Any]:
    """An automation as the CLI's ``--json`` and the HTTP API show it."""
    return {"id": rec.id, "class": rec.cls, "state": rec.state, "session": rec.session_id,
            "data": decoded(rec.data), "version": rec.version, "key": rec.key, "owner": json.loads(rec.owner or "{}"),
            "wake_at": iso_time(rec.wake_at), "created": iso_time(rec.created_at), "updated": iso_time(rec.updated_at),
            "finished": iso_time(rec.finished_at)}


def step_dict(step: StepRecord) -> dict[str, Any]:
    return {"id": step.id, "node": step.node, "state": step.state, "message": step.message,
            "previous": step.previous_id, "split": step.split_id, "result": decoded(step.result),
            "error_type": step.error_type, "error_message": step.error_message, "attempts": step.attempts,
            "wake_at": iso_time(step.wake_at), "created": iso_time(step.created_at), "started": iso_time(step.started_at),
            "finished": iso_time(step.finished_at), "assignee_user": step.assignee_user,
            "assignee_privileges": json.loads(step.assignee_privileges) if step.assignee_privileges else None,
            "submitted_by": json.loads(step.submitted_by) if step.submitted_by else None}


def message_dict(msg: MessageRecord) -> dict[str, Any]:
    return {"id": msg.id, "message": msg.message, "token": msg.token, "automation": msg.automation_id,
            "broadcast_class": msg.broadcast_class, "data": decoded(msg.data), "state": msg.state,
            "result": decoded(msg.result), "created": iso_time(msg.created_at), "delivered": iso_time(msg.delivered_at)}


def history_tree(steps: Sequence[StepRecord], wake_at: float | None = None) -> list[str]:
    """The history as indented lines: each step after the one it followed, a Split's paths one level
    deeper than the Split (each path whole, up to its Join), what follows the Join back at the Split's
    level. Loops stay flat (only Splits nest), so a long-running Repeat is a long list, not a deep one.
    ``wake_at`` is the running automation's: a false AsSoonAs recheck moves only that one, so a waiting
    step's own (older) time is shown no earlier than it."""
    by_id = {s.id: s for s in steps}
    children: dict[str | None, list[StepRecord]] = {}
    for s in steps:
        children.setdefault(s.previous_id if s.previous_id in by_id else None, []).append(s)
    depths: dict[str, int] = {}

    def depth(s: StepRecord) -> int:
        chain = []
        cur: StepRecord | None = s
        while cur is not None and cur.id not in depths:
            chain.append(cur)
            cur = by_id.get(cur.split_id) if cur.split_id else None
        base = depths[cur.id] if cur is not None else -1
        for link in reversed(chain):
            base += 1
            depths[link.id] = base
        return depths[s.id]

    lines: list[str] = []

    def line(s: StepRecord) -> None:
        extra = []
        if s.attempts > 1:
            extra.append(f"attempts {s.attempts}")
        if s.state in OPEN and s.wake_at is not None:
            late = wake_at is not None and s.state == "waiting" and wake_at > s.wake_at
            extra.append(f"wakes {iso_time(wake_at if late else s.wake_at)}")
        if s.error_type:
            extra.append(f"{s.error_type}: {s.error_message}")
        text = f"{'  ' * depth(s)}{s.node} [{s.state}]" + (f" {s.message}" if s.message else "")
        lines.append(text + (f" ({'; '.join(extra)})" if extra else "") + f"  {s.id}")

    def walk(first: StepRecord) -> list[StepRecord]:
        """Print ``first`` and its path; the steps that continue at a shallower level (after a Join)."""
        escapes: list[StepRecord] = []
        cur: StepRecord | None = first
        while cur is not None:
            line(cur)
            level, nxt = depth(cur), None
            queue = list(children.get(cur.id, []))
            while queue:
                kid = queue.pop(0)
                if depth(kid) < level:
                    escapes.append(kid)
                elif depth(kid) == level and nxt is None:
                    nxt = kid
                else:  # a Split's path (deeper), or a second step after one (goto): print it whole first
                    queue.extend(walk(kid))
            cur = nxt
        return escapes

    pending = list(children.get(None, []))
    while pending:
        pending.extend(walk(pending.pop(0)))
    return lines


def automation_event(automation_id: str, cls: str, state: str, open_nodes: Sequence[str],
                     interactions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The payload of the ``automation`` event a session's pages receive, as the runner sends it:
    ``open`` is the sorted names of the open nodes (none once it ended)."""
    return {"id": automation_id, "class": cls, "state": state,
            "open": sorted(set(open_nodes)) if state == "running" else [],
            "interactions": [dict(i) for i in interactions]}
