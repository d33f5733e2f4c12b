"""Broadcasts (``Class.broadcast_message``): delivered to the instances running at send time, in id
order, one after the other, stopping after the first receiver that returns ``"received"``.

A queued broadcast is *expanded* once: one commit marks it consumed and queues its message to the
first instance, fenced by that instance's version (two runners expanding the same broadcast: one
commit is refused). The message carries the rest of the list in its sender (``{"broadcast": id,
"next": [...], "results": [...]}``); the runner that delivers it queues the next hop in the same
commit as the delivery, unless the receiver returned ``"received"``. Each hop is an ordinary message:
delivered exactly once, under the instance's claim, advancing it at once.

The results list (the seed's return value of ``broadcast_message``) is kept with the hops: hop ``k``
has the id ``<broadcast id>.<k>`` and carries the results of the hops before it (each as the codec's
text), so :func:`results` finds the list from the broadcast's id once the last hop was consumed; the
broadcast's ``MessageHandle`` returns it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mailgate.automations.engine import MessageOutcome
from mailgate.core.automation_rows import text_value, value_text
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


async def expand(store: Store, commit: Callable[[Changes], Awaitable[CommitResult]], limit: int = 20) -> int:
    """Expand the queued broadcasts (oldest first) into their first hop; how many were expanded.
    A broadcast with no instance running at send time is stored ``dropped``: consumed by no one."""
    done = 0
    for b in await store.queued_broadcasts(limit):
        if b.broadcast_class is None:
            continue
        targets = await _running_at(store, b.broadcast_class, b.created_at)
        now = store.now()
        if not targets:
            await commit(Changes(broadcasts_unreached=[b.id]))  # by another runner already: nothing changes
            log.info("broadcast %s (%s to %s) reached no running instance; dropped", b.id, b.message,
                     b.broadcast_class, extra={"event": "automation.message_dropped", "message": b.id})
            continue
        first = targets[0]  # in id order: never passed over for the next one
        if first.claim_until is not None and first.claim_until >= now:
            continue  # the first is being run: expand at the next tick
        rest = [t.id for t in targets[targets.index(first) + 1:]]
        hop = NewMessage(hop_id(b.id, 1), b.message, automation_id=first.id, token=b.token, data=b.data,
                         sender=json.dumps({"broadcast": b.id, "hop": 1, "next": rest, "results": [],
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
        if out.state == "delivered" and out.result == "received":
            continue
        results = [*sender.get("results", []), *([value_text(out.result)] if out.state == "delivered" else [])]
        hop = int(sender.get("hop", 1)) + 1
        rest = list(sender["next"])
        while rest:  # the next instance still running (one that ended since the send is skipped)
            target = await store.get_automation(rest.pop(0))
            if target is not None and target.state == "running":
                hops.append(NewMessage(hop_id(str(sender["broadcast"]), hop), m.message, automation_id=target.id,
                                       token=m.token, data=m.data,
                                       sender=json.dumps({**sender, "hop": hop, "next": rest, "results": results},
                                                         separators=(",", ":"))))
                break
    return hops


def hop_id(broadcast_id: str, k: int) -> str:
    """The id of a broadcast's ``k``-th hop (1-based)."""
    return f"{broadcast_id}.{k}"


async def results(store: Store, broadcast_id: str, after: int = 0) -> tuple[str, list[Any] | None, int]:
    """A broadcast's outcome: ``("queued", None, k)`` while it is under way (``k`` hops consumed: pass
    it back as ``after`` to read on from there), ``("delivered", results, k)`` once it ended, the
    results of the receivers it reached in order; ``("dropped", [], 0)`` if it reached no running
    instance, ``("dropped", None, 0)`` if the row is gone (history deleted)."""
    b = await store.get_automation_message(broadcast_id)
    if b is None:
        return "dropped", None, 0
    if b.state == "queued":
        return "queued", None, 0
    if b.state == "dropped":
        return "dropped", [], 0
    k, last = after, None
    while True:
        hop = await store.get_automation_message(hop_id(broadcast_id, k + 1))
        if hop is None:
            break
        if hop.state == "queued":
            return "queued", None, k
        k, last = k + 1, hop
    if last is None and k > 0:  # read on from an earlier call: the last consumed hop again
        last = await store.get_automation_message(hop_id(broadcast_id, k))
    if last is None:
        return "delivered", [], k
    sender = json.loads(last.sender or "{}")
    found = [text_value(t) for t in sender.get("results", [])]
    if last.state == "delivered":
        found.append(text_value(last.result))
    return "delivered", found, k
