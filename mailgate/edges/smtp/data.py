"""Reading the DATA section of an SMTP transaction in blocks instead of line by line.

aiosmtpd 1.4.6 reads DATA with one ``readuntil(b"\\r\\n")`` per line plus per-line checks, which
costs more CPU than everything else a small message needs. `read_data` gives the same result from
a few large reads, with the same rules:

* only CRLF "." CRLF ends the data (RFC 5321 section 4.1.1.4); a bare LF or CR next to the dot
  (``\\n.\\n``, ``\\n.\\r\\n``, ``\\r.\\n``, ``\\r\\n.\\r``) is ordinary content, which is what
  aiosmtpd 1.4.6 does against SMTP smuggling. Since every CRLF in the stream ends a line, the
  first ``\\r\\n.\\r\\n`` after the DATA command's own CRLF is the end, and nothing else is;
* one leading dot is removed from every line (transparency, RFC 5321 section 4.5.2);
* a line longer than ``line_limit`` bytes with its CRLF, or more than ``size_limit`` bytes of data
  (counted before the dots are removed, as aiosmtpd counts them), makes the result an error, which
  is answered only once the end of the data has been read (RFC 5321 section 4.2.5); the data read
  after the error is dropped as it arrives, so a hostile sender cannot fill the memory;
* nothing after the end of the data is read: pipelined commands stay in the stream.
"""

from __future__ import annotations

import asyncio
import enum

_END = b"\r\n.\r\n"
# Blocks are read up to the end's last four bytes: whatever ends with them stops a read, so no
# read goes past the end; one that is not the end (a bare LF before the dot) only ends a block.
_SEARCH = _END[1:]
# What was read may end with these while an end that `_SEARCH` would not find whole has begun;
# a lone CR is safe, since the rest of that end is `_SEARCH` itself.
_UNSAFE_ENDS = (b"\r\n.\r", b"\r\n.", b"\r\n")


class DataError(enum.Enum):
    TOO_MUCH = "more data than the size limit"
    TOO_LONG = "a line longer than the line length limit"


class DataReader:
    """Checks the data as it grows; `error` is the first limit it broke, if any."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit or None
        self.line_limit = line_limit
        # The CRLF that ended the DATA command line starts the buffer, so that the end of data
        # is always found as CRLF "." CRLF, even for an empty message.
        self.buf = bytearray(b"\r\n")
        self.line_start = 2  # where the first line whose length is not yet known starts
        self.error: DataError | None = None

    def add(self, chunk: bytes) -> None:
        """Append what was read; while no limit is broken, check the lines it completes."""
        if self.error is not None:
            # Keep only what may be (the start of) the end of data; the rest is dropped.
            self.buf = bytearray((bytes(self.buf[-4:]) + chunk[-5:])[-5:])
            return
        self.buf += chunk
        self._check(len(self.buf))

    def ended(self) -> bool:
        return self.buf.endswith(_END)

    def _check(self, end: int) -> None:
        buf, limit = self.buf, self.line_limit
        # A line is too long if no CRLF ends it within `limit` bytes of its start. Jumping from
        # the last CRLF of each window to the next makes this a few C-level searches per block.
        start = self.line_start
        too_long_at = -1
        while end - start > limit:
            crlf = buf.rfind(b"\r\n", start, start + limit)
            if crlf < 0:
                too_long_at = start
                break
            start = crlf + 2
        self.line_start = start
        # Bytes of data so far: what may be the "." CRLF of the end is not data.
        if self.ended():
            size = end - 5
        else:
            size = end - 2 - (2 if buf.endswith(b"\r\n.\r") else 1 if buf.endswith(b"\r\n.") else 0)
        over_at = -1
        if self.size_limit is not None and size > self.size_limit:
            over_at = buf.rfind(b"\r\n", 0, self.size_limit + 2) + 2  # start of the line crossing the limit
        error = self._first_error(too_long_at, over_at, end)
        if error is not None:
            self.error = error
            self.buf = bytearray(buf[-5:])

    def _first_error(self, too_long_at: int, over_at: int, end: int) -> DataError | None:
        """The error aiosmtpd would report, or None while it cannot be told yet.

        aiosmtpd counts a line's size when it has read all of it and checks the size before the
        length, except for a line with more than ``line_limit`` bytes before its CRLF, which its
        stream cuts before counting: the error of the earlier line wins, and on one line both
        errors are told apart by that rule.
        """
        if over_at < 0:
            if too_long_at < 0:
                return None
            # unless unfinished and not yet cut: the size may still be crossed within this line
            return DataError.TOO_LONG if self._cut(too_long_at, end) is not None else None
        if 0 <= too_long_at < over_at:
            return DataError.TOO_LONG
        cut = self._cut(over_at, end)
        if cut is None:
            return None  # the line crossing the size limit is unfinished: wait for its end
        if too_long_at == over_at and cut:
            return DataError.TOO_LONG
        return DataError.TOO_MUCH

    def _cut(self, start: int, end: int) -> bool | None:
        """Whether aiosmtpd's stream would cut the line at `start` (more than ``line_limit`` bytes
        before its CRLF); None while unfinished and not longer than that yet."""
        crlf = self.buf.find(b"\r\n", start)
        if crlf >= 0:
            return crlf - start > self.line_limit
        known = end - start - (1 if self.buf.endswith(b"\r") else 0)  # bytes surely before its CRLF
        return True if known > self.line_limit else None

    def content(self) -> bytearray:
        """The message, dots removed; call once, after the end was read without error.

        Done in the buffer itself, so that a big message is never held twice: the ends are cut off
        (at the front, CPython only moves the start) and each line's dot is removed by moving what
        follows it down (`memmove`)."""
        data, self.buf = self.buf, bytearray()
        del data[len(data) - 3:]  # ". CRLF"
        # the command's CRLF, and the first line's dot (a message cannot start with the end: see above)
        del data[:3 if data.startswith(b"\r\n.") else 2]
        found = data.find(b"\r\n.")
        if found < 0:
            return data
        # Inside the data CRLF "." is always followed by something other than CRLF (that would have
        # been the end), so the occurrences never overlap; each is found in bytes not yet moved.
        view = memoryview(data)
        write, read = found + 2, found + 3
        while True:
            found = data.find(b"\r\n.", read)
            end = len(data) if found < 0 else found + 2
            view[write:write + end - read] = view[read:end]
            write += end - read
            if found < 0:
                break
            read = found + 3
        view.release()
        del data[write:]
        return data


async def read_data(reader: asyncio.StreamReader, size_limit: int | None,
                    line_limit: int) -> tuple[bytearray | None, DataError | None]:
    """Read DATA up to and including CRLF "." CRLF: (content, None), or (None, the broken limit).

    ``reader``'s own limit bounds each read; ``line_limit`` must not be smaller than it. Raises
    `asyncio.IncompleteReadError` when the stream ends before the end of data.
    """
    data = DataReader(size_limit, line_limit)
    while not data.ended():
        if data.buf.endswith(_UNSAFE_ENDS):
            # An end may have begun in what was read: `readuntil` would not see it whole.
            data.add(await reader.readexactly(1))
            continue
        try:
            chunk = await reader.readuntil(_SEARCH)
        except asyncio.LimitOverrunError as exc:
            # `consumed` leaves in the stream every byte that may start the separator.
            chunk = await reader.readexactly(exc.consumed)
        data.add(chunk)
    if data.error is not None:
        return None, data.error
    return data.content(), None
