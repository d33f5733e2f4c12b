"""Broadcasts (``Class.broadcast_message``): delivered to the instances running at send time, in id
order, one after the other, stopping after the first receiver that returns ``"received"``.

A queued broadcast is *expanded* once: one commit marks it consumed and queues its message to the
first instance, fenced by that instance's version (two runners expanding the same broadcast: one
commit is refused). The message carries the rest of the list in its sender (``{"broadcast": id,
"next": [...], "results": [...]}``); the runner that delivers it queues the next hop in the same
commit as the delivery, unless the receiver returned ``"received"``. Each hop is an ordinary message:
delivered exactly once, under the instance's claim, advancing it at once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from mailgate.automations.engine import MessageOutcome
from mailgate.errors import AutomationFenced, NotFound
from mailgate.store.base import (
    AutomationUpdate,
    Changes,
    CommitResult,
    MessageDone,
    MessageRecord,
    NewMessage,
    Store,
)

log = logging.getLogger(__name__)


async def expand(store: Store, commit: Callable[[Changes], Awaitable[CommitResult]], skip: set[str],
                 limit: int = 20) -> int:
    """Expand the queued broadcasts (oldest first) into their first hop; how many were expanded.
    Broadcasts with no running instance at send time are consumed by no one: their ids go to
    ``skip`` (the store keeps them queued until ``delete-history``)."""
    done = 0
    for b in await store.queued_broadcasts(limit):
        if b.id in skip or b.broadcast_class is None:
            continue
        targets = await _running_at(store, b.broadcast_class, b.created_at)
        now = store.now()
        first = next((t for t in targets if t.claim_until is None or t.claim_until < now), None)
        if first is None:
            if not targets:
                skip.add(b.id)
                log.info("broadcast %s (%s to %s) reached no running instance", b.id, b.message, b.broadcast_class,
                         extra={"event": "automation.message_dropped", "message": b.id})
            continue  # the first is being run: expand at the next tick
        rest = [t.id for t in targets[targets.index(first) + 1:]]
        hop = NewMessage(uuid.uuid4().hex, b.message, automation_id=first.id, token=b.token, data=b.data,
                         sender=json.dumps({"broadcast": b.id, "next": rest, "results": [],
                                            "from": json.loads(b.sender or "{}")}, separators=(",", ":")))
        update = AutomationUpdate(first.id, first.version, None, data=None, wake_at=now, keep_claim=True,
                                  messages_done=[MessageDone(b.id, "delivered", None)])
        try:
            await commit(Changes(automations=[update], messages=[hop]))
        except (AutomationFenced, NotFound):
            continue  # expanded by another runner, or the first instance moved on: the next tick decides
        done += 1
    return done


async def _running_at(store: Store, cls: str, sent_at: float) -> list[Any]:
    found: list[Any] = []
    after = 0
    while True:
        page = await store.list_automations(cls=cls, state="running", after_seq=after, limit=1000)
        if not page:
            return found
        found += [a for a in page if a.created_at <= sent_at]
        after = page[-1].seq


async def next_hops(store: Store, messages: list[MessageRecord], outcomes: list[MessageOutcome]) -> list[NewMessage]:
    """The next hop of each broadcast hop consumed in this run (none after a ``"received"``)."""
    by_id = {m.id: m for m in messages}
    hops = []
    for out in outcomes:
        m = by_id.get(out.id)
        if m is None or '"broadcast"' not in (m.sender or ""):
            continue
        sender = json.loads(m.sender)
        if not isinstance(sender, dict) or "next" not in sender:
            continue
        results = [*sender.get("results", []), out.result if out.state == "delivered" else None]
        if out.state == "delivered" and out.result == "received":
            continue
        rest = list(sender["next"])
        while rest:  # the next instance still running (one that ended since the send is skipped)
            target = await store.get_automation(rest.pop(0))
            if target is not None and target.state == "running":
                hops.append(NewMessage(uuid.uuid4().hex, m.message, automation_id=target.id, token=m.token, data=m.data,
                                       sender=json.dumps({**sender, "next": rest, "results": _json(results)},
                                                         separators=(",", ":"))))
                break
    return hops


def _json(values: list[Any]) -> list[Any]:
    """Results as plain JSON where they are (the codec's tagged values are kept as their text)."""
    out = []
    for v in values:
        try:
            json.dumps(v)
            out.append(v)
        except (TypeError, ValueError):
            out.append(repr(v))
    return out
