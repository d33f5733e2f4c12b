"""What bounds one SMTP client and all of them: connection caps, the timing rules, text fit for the log.

Pure arithmetic and bookkeeping, no I/O: the aiosmtpd subclass in :mod:`mailgate.edges.smtp.server`
applies them, and unit tests check them without a socket.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# asyncio accepts up to `backlog` connections in one loop iteration before any of them is closed
# again, so that many descriptors must be free beyond the cap for a refusal (421) to be possible.
ACCEPT_BACKLOG = 100
# Descriptors kept for everything that is not an SMTP connection: the web server and its clients,
# the store, the parse workers' pipes, the event loop itself.
_OTHER_FILES = 64


def connection_cap(configured: int, open_files: int) -> int:
    """The global cap on SMTP connections that the open-files limit leaves room for.

    A quarter of the limit (at least one accept burst plus the daemon's own files) stays free, so
    that a client past the cap can still be accepted and told ``421``, and ``/healthz`` still
    answers. Without that room asyncio's accept fails with EMFILE and no client gets a banner.
    """
    reserve = max(open_files // 4, ACCEPT_BACKLOG + _OTHER_FILES)
    return max(1, min(configured, open_files - reserve))


class Refusal(enum.Enum):
    PER_CLIENT = "connection limit per client address"
    GLOBAL = "connection limit"


class ClientLimits:
    """Concurrent connections: per client address, and in all."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self.counts: dict[str, int] = {}
        self.open = 0

    def enter(self, ip: str) -> Refusal | None:
        """Count a new connection from ``ip``, or say why it is refused (then it is not counted)."""
        if self.open >= self.total:
            return Refusal.GLOBAL
        if self.counts.get(ip, 0) >= self.per_client:
            return Refusal.PER_CLIENT
        self.counts[ip] = self.counts.get(ip, 0) + 1
        self.open += 1
        return None

    def leave(self, ip: str) -> None:
        self.open -= 1
        left = self.counts.get(ip, 1) - 1
        if left <= 0:
            self.counts.pop(ip, None)
        else:
            self.counts[ip] = left


class Phase(enum.Enum):
    COMMAND = "waiting for a command"
    DATA = "reading DATA"
    PROCESSING = "storing a message"


@dataclass(frozen=True)
class Timing:
    """RFC 5321 section 4.5.3.2 timeouts, as a server applies them.

    ``timeout`` bounds the wait for each command and for each read within DATA (the RFC asks for
    at least 5 minutes). The whole DATA section also has a budget that grows with its size:
    ``timeout + bytes / min_data_rate`` seconds, so a sender that keeps to the minimum rate is
    never cut off, however large its (size-capped) message, and one that trickles a byte every
    few minutes is. The time mailgate takes to store a message is no one's budget: the timer
    stops while the DATA hook runs. ``max_session_age`` ends a connection that has lived that
    long, checked while it waits for a command (a DATA in progress has its own budget).
    """

    timeout: float
    min_data_rate: float
    max_session_age: float

    def command_deadline(self, *, started: float, last_command: float) -> tuple[float, str]:
        """When a connection waiting for a command is closed, and why."""
        idle = last_command + self.timeout
        age = started + self.max_session_age
        if age < idle:
            return age, f"the session is older than {self.max_session_age:g} s ([smtp] max_session_age)"
        return idle, f"no command for {self.timeout:g} s ([smtp] timeout)"

    def data_deadline(self, *, data_started: float, last_read: float, received: int) -> tuple[float, str]:
        """When a DATA section that has brought ``received`` bytes so far is cut off, and why."""
        idle = last_read + self.timeout
        budget = data_started + self.data_budget(received)
        if budget < idle:
            return budget, (f"DATA slower than {self.min_data_rate:g} bytes/s: {received} bytes "
                            f"in {budget - data_started:.0f} s ([smtp] min_data_rate)")
        return idle, f"no data for {self.timeout:g} s within DATA after {received} bytes ([smtp] timeout)"

    def data_budget(self, size: int) -> float:
        """Seconds a DATA section of ``size`` bytes may take in all."""
        return self.timeout + size / self.min_data_rate


_UNSHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff\\]")


def shown(text: str, limit: int = 256) -> str:
    """Text from a client fit for a log line: control, bidi and undecodable characters (and the
    backslash) as escapes, and at most ``limit`` characters of it."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNSHOWN.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
