"""The process's open-files limit, and what the event loop does when it runs out anyway.

Every client connection is a file. The soft limit is often 1024 while the hard limit is far higher;
the daemon raises the soft one to the hard one when it starts (under systemd the unit's
``LimitNOFILE=`` sets both, and the unit's system-call filter would refuse the raise anyway). The
SMTP edge caps its connections below the limit (``[smtp] max_connections``), so accepting should
not fail; when it does (another process, the web side), asyncio logs every failed ``accept()``,
up to a hundred per listening socket and loop iteration, each with a traceback: gigabytes of log in
minutes. :class:`AcceptFailureLog` turns that into one line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message, Python 3.8 to 3.13


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one where allowed; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:  # a system-call filter or a container may refuse
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc,
                        extra={"event": "daemon.open_files"})
            return soft
        log.info("open-files limit raised from %d to %d", soft, hard, extra={"event": "daemon.open_files"})
        return hard
    return soft


class AcceptFailureLog:
    """An event-loop exception handler: failed ``accept()`` calls make one warning per ``interval``
    with their count; every other context goes to the handler that was there before.

    asyncio itself stops accepting on the socket for a second after each failure and then tries
    again, so the failures are a back-off already; only their log was a flood.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.failures = 0  # since the last line
        self._next_line = float("-inf")
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)
            self._loop = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failures += 1
        now = self.clock()
        if now < self._next_line:
            return
        exc = context.get("exception")
        reason = getattr(exc, "strerror", None) or repr(exc)
        log.warning("cannot accept connections: %s (%d failed accept() calls since the last such line); "
                    "retrying each second", reason, self.failures, extra={"event": "daemon.accept_failed"})
        self.failures = 0
        self._next_line = now + self.interval
