"""Who holds a claim: a process identity a restarted daemon can check against its own host.

A daemon's process id (its claims' holder, :attr:`Runtime.process_id
<mailgate.core.runtime.Runtime.process_id>`) is ``host:pid:start:nonce``. ``start`` is the process's
start token: the kernel's boot id and the process's start time since boot (``/proc``), so a pid that
the kernel gave to another process since (after a crash, or after a reboot) does not pass for the
process that held the claim. ``nonce`` tells apart several runtimes of one process (tests).

:func:`holder_is_dead` answers only for holders of this host: whether another host's process lives
is not known here (their claims wait for their lease).
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache
from pathlib import Path

UNKNOWN_START = "-"  # no /proc: the start of a process cannot be read, only whether its pid exists


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return ""


def start_token(pid: int) -> str | None:
    """``pid``'s start token (boot id and start time), None if no such process; `UNKNOWN_START`
    where ``/proc`` cannot say."""
    boot = _boot_id()
    if not boot:
        return UNKNOWN_START if _pid_exists(pid) else None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN_START if _pid_exists(pid) else None
    # the command name (field 2) is in parentheses and may hold spaces and ")": start after the last one
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) < 20:
        return UNKNOWN_START
    return f"{boot}.{fields[19]}"  # field 22 of proc(5): start time in clock ticks after boot


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def process_identity() -> str:
    """This process's identity as a claim holder: ``host:pid:start:nonce``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{start_token(pid) or UNKNOWN_START}:{secrets.token_hex(3)}"


def holder_is_dead(holder: str, *, host: str | None = None) -> bool:
    """Whether ``holder`` (a process identity, optionally with ``#n`` after it) names a process of
    this host that no longer runs. False for other hosts, for this process and for holders in
    another format: those claims wait for their lease."""
    parts = holder.partition("#")[0].rsplit(":", 3)
    if len(parts) != 4 or parts[0] != (host or socket.gethostname()) or not parts[1].isdigit():
        return False
    pid, start = int(parts[1]), parts[2]
    if pid == os.getpid():
        return False
    now = start_token(pid)
    if now is None:
        return True
    if start == UNKNOWN_START or now == UNKNOWN_START:
        return False  # the pid runs and its start cannot be compared: perhaps the holder itself
    return now != start
