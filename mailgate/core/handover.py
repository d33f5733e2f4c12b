"""Big queued messages handed from the SMTP edge to this process's processor in memory.

A message is queued (committed) before its 250; the processor then claims it and needs its bytes.
Read back from the store, a big message would be in memory twice for a moment: the edge's buffer,
which the reply has not yet let go, and the copy read. So the bytes of a message this process just
queued stay here, by queue entry, and the processor's claim asks the store not to read them
(``Store.claim_inbound(held=...)``): one buffer from the first byte of DATA to the stored e-mail.

Bounded: only messages of at least ``min_size``, at most ``max_bytes`` in all and each for at most
``max_age`` seconds (an entry another node's processor claimed is never asked for here); what is not
here is read from the store, as after a restart.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MIN_SIZE = 256 * 1024
MAX_BYTES = 64 * 1024 * 1024
MAX_AGE = 60.0

Raw = bytes | bytearray


class Handover:
    def __init__(self, min_size: int = MIN_SIZE, max_bytes: int = MAX_BYTES, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_size = min_size
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._held: OrderedDict[str, tuple[float, Raw]] = OrderedDict()
        self._bytes = 0

    def keep(self, entry_id: str, raw: Raw) -> None:
        """Keep ``raw``, the bytes of queue entry ``entry_id`` (committed), if it is big enough."""
        if len(raw) < self.min_size or len(raw) > self.max_bytes:
            return
        self._held[entry_id] = (self._clock(), raw)
        self._bytes += len(raw)
        self._trim()

    def snapshot(self) -> dict[str, Raw]:
        """The bytes held now, by entry id: a claim asks the store not to read these, and takes them
        from this copy (which keeps them alive whatever is dropped meanwhile)."""
        self._trim()
        return {entry_id: raw for entry_id, (_, raw) in self._held.items()}

    def release(self, entry_id: str) -> None:
        """Forget ``entry_id`` (its processor has its bytes now)."""
        found = self._held.pop(entry_id, None)
        if found is not None:
            self._bytes -= len(found[1])

    def __len__(self) -> int:
        return len(self._held)

    def _trim(self) -> None:
        oldest = self._clock() - self.max_age
        while self._held:
            entry_id, (kept_at, raw) = next(iter(self._held.items()))
            if self._bytes <= self.max_bytes and kept_at >= oldest:
                return
            self.release(entry_id)
