"""Logging set-up: one line per event; no timestamp of our own under journald (it adds one).

``json`` format writes one object per line with ``time``, ``level``, ``logger``, ``message``, the
stable ``event`` name every mailgate line carries (a test holds every log call to it; a library's
line gets its logger's name) and the line's structured fields (``peer``, ``mailbox``, ``session``,
``task``, ...). Nothing here logs message bodies or secrets.

When stderr is the journal's stream (``$JOURNAL_STREAM`` names its device and inode, as
sd-daemon(3) describes), every line begins with its syslog priority (``<3>`` for an error), so that
``journalctl -p err`` finds errors; each line of a traceback gets the prefix of its record.

Messages often carry what a client sent (an address, a command, a HELO name); the edges escape it,
and both formats escape again whatever control characters reach a message (from a library's own
log line, say), so that no client can write an ESC sequence to the operator's terminal or forge a
log line with a CR or LF. Tracebacks keep their lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def escape_controls(text: str) -> str:
    """``text`` with control, bidi-override and undecodable characters as escapes (a tab stays)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


# sd-daemon(3)'s SD_* prefixes, by logging level.
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (7, debug, below INFO)."""
    return next((p for level, p in _PRIORITY if levelno >= level), 7)


class JournalFormatter(logging.Formatter):
    """Another formatter's lines, each prefixed with the record's syslog priority (``<6>``)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def stderr_is_journal() -> bool:
    """Whether stderr is the stream ``$JOURNAL_STREAM`` names (``device:inode``)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return bool(device) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):  # not a number, or stderr without a descriptor
        return False


class JsonFormatter(logging.Formatter):
    def __init__(self, with_time: bool) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {}
        if self.with_time:
            data["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        data.update(level=record.levelname.lower(), logger=record.name, message=escape_controls(record.getMessage()))
        data["event"] = record.name  # a library's line; mailgate's own set theirs (overwritten next)
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for the CLI and the daemon."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(with_time=not under_journald)
    else:
        text = "%(levelname)s %(name)s: %(message)s"
        formatter = TextFormatter(text if under_journald else "%(asctime)s " + text)
    handler.setFormatter(JournalFormatter(formatter) if stderr_is_journal() else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement at debug level; keep our debug output readable.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    # aiosmtpd logs every connection at info level; mailgate logs one line per message instead.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
