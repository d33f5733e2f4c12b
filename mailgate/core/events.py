"""In-process publish/subscribe of committed session events.

The core publishes :class:`~mailgate.store.base.EventRecord` rows after they are durable; the web
side subscribes per session (or to all). Subscribers are plain callables run on the event loop;
they must not block (put the event on a bounded queue and return).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from mailgate.store.base import EventRecord

log = logging.getLogger(__name__)
Subscriber = Callable[[EventRecord], None]


class EventBus:
    def __init__(self) -> None:
        self._by_session: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        self.published = 0

    def subscribe(self, callback: Subscriber, session_id: str | None = None) -> Callable[[], None]:
        """Call ``callback`` for each event (of one session, or all); returns the unsubscribe function."""
        if session_id is None:
            self._all.add(callback)
            return lambda: self._all.discard(callback)
        subs = self._by_session.setdefault(session_id, set())
        subs.add(callback)

        def unsubscribe() -> None:
            subs.discard(callback)
            if not subs and self._by_session.get(session_id) is subs:
                del self._by_session[session_id]

        return unsubscribe

    def publish(self, events: Iterable[EventRecord]) -> None:
        for event in events:
            self.published += 1
            for callback in (*self._all, *self._by_session.get(event.session_id, ())):
                try:
                    callback(event)
                except Exception:  # one broken subscriber must not stop the others
                    log.exception("event subscriber failed", extra={"event": "events.subscriber_failed"})
