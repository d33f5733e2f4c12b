"""The systemd notify protocol (sd_notify): one datagram to ``$NOTIFY_SOCKET``, no extra daemon.

``READY=1`` once the ports are bound and the store is migrated, ``STOPPING=1`` when shutting down,
``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` when the unit sets ``WatchdogSec``. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1") to the service manager; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc,
                    extra={"event": "systemd.notify_failed"})
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 1_000_000 / 2)
    except ValueError:
        return None


async def watchdog(interval: float) -> None:
    """Ping the watchdog for as long as the event loop is healthy enough to run this."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
