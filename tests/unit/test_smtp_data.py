"""Unit tests for mailgate.smtp_data: the block reader of SMTP DATA, against aiosmtpd's rules."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailgate.edges.smtp.data import DataError, DataReader, read_data

REST = b"QUIT\r\n"  # a pipelined command after the data: must stay in the stream


def aiosmtpd_rules(stream: bytes, size_limit: int, line_limit: int) -> tuple[bytes | None, DataError | None, bytes]:
    """aiosmtpd 1.4.6's smtp_DATA restated line by line (its stream limit is ``line_limit``):
    (content, error, what is left of the stream after the end of data)."""
    pos, size, state = 0, 0, None
    lines: list[bytes] = []
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        if len(line) - 2 > line_limit:  # the stream stops such a line before it is counted
            state = state or DataError.TOO_LONG
        size += len(line)
        if state is None and size > size_limit:
            state = DataError.TOO_MUCH
        if state is None and len(line) > line_limit:
            state = DataError.TOO_LONG
        lines.append(line[1:] if line.startswith(b".") else line)
    if state is not None:
        return None, state, stream[pos:]
    return b"".join(lines), None, stream[pos:]


async def read_in_pieces(pieces: list[bytes], size_limit: int, line_limit: int) -> tuple[bytes | None, DataError | None, bytes]:
    """Feed ``pieces`` one by one to a StreamReader while `read_data` reads it; also return the rest."""
    reader = asyncio.StreamReader(limit=line_limit)
    task = asyncio.create_task(read_data(reader, size_limit, line_limit))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)  # a yield, so that the reader sees the pieces apart (not a timing wait)
    reader.feed_eof()
    content, error = await task
    return content, error, await reader.read()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@pytest.mark.asyncio
async def test_plain_message_and_pipelined_rest() -> None:
    body = b"Subject: hi\r\n\r\nHello.\r\nBye.\r\n"
    assert await read_in_pieces([body + b".\r\n" + REST], 1000, 100) == (body, None, REST)


@pytest.mark.asyncio
async def test_end_of_data_split_across_reads_at_every_position() -> None:
    body = b"Subject: split\r\n\r\nline one\r\nline two\r\n"
    wire = body + b".\r\n" + REST
    for cut in range(1, len(wire)):
        assert await read_in_pieces(split(wire, [cut]), 1000, 100) == (body, None, REST), cut
    for cuts in ([len(body) - 1, len(body) + 1], [len(body) - 2, len(body), len(body) + 2]):
        assert await read_in_pieces(split(wire, cuts), 1000, 100) == (body, None, REST), cuts
    assert await read_in_pieces([bytes([b]) for b in wire], 1000, 100) == (body, None, REST)


@pytest.mark.asyncio
async def test_empty_message_and_empty_lines() -> None:
    assert await read_in_pieces([b".\r\n" + REST], 1000, 100) == (b"", None, REST)
    assert await read_in_pieces([b".", b"\r", b"\n" + REST], 1000, 100) == (b"", None, REST)
    assert await read_in_pieces([b"\r\n.\r\n" + REST], 1000, 100) == (b"\r\n", None, REST)
    assert await read_in_pieces([b"\r\n\r\n\r\n", b".\r\n" + REST], 1000, 100) == (b"\r\n\r\n\r\n", None, REST)


@pytest.mark.asyncio
async def test_leading_dots_are_unstuffed_once() -> None:
    wire = b"..\r\n...x\r\n.y\r\nz.\r\n.\r\n" + REST
    assert await read_in_pieces([wire], 1000, 100) == (b".\r\n..x\r\ny\r\nz.\r\n", None, REST)
    assert await read_in_pieces([b"..\r\n.\r\n" + REST], 1000, 100) == (b".\r\n", None, REST)


@pytest.mark.asyncio
@pytest.mark.parametrize("name, seq", [("lf-dot-lf", b"\n.\n"), ("cr-dot-lf", b"\r.\n"), ("lf-dot-crlf", b"\n.\r\n"),
                                       ("crlf-dot-cr", b"\r\n.\r"), ("dot-lf", b"\r\n.\n")])
async def test_smuggling_sequences_do_not_end_the_data(name: str, seq: bytes) -> None:
    body = b"Subject: s\r\n\r\nbefore" + seq + b"MAIL FROM:<x@evil.test>\r\nafter\r\n"
    wire = body + b".\r\n" + REST
    content, error, rest = await read_in_pieces([wire], 1000, 100)
    assert (content, error, rest) == aiosmtpd_rules(wire, 1000, 100), name
    assert content is not None and b"MAIL FROM:<x@evil.test>\r\nafter\r\n" in content and rest == REST, name


@pytest.mark.asyncio
async def test_lines_of_exactly_the_limit_pass_and_one_more_byte_fails() -> None:
    limit = 64
    exact = b"a" * (limit - 2) + b"\r\n"  # the limit counts the CRLF, as aiosmtpd's check does
    assert await read_in_pieces([exact * 3 + b".\r\n" + REST], 10_000, limit) == (exact * 3, None, REST)
    for extra in (1, 2, 3, 500):
        long = b"b" * (limit - 2 + extra) + b"\r\n"
        got = await read_in_pieces([exact, long, exact + b".\r\n" + REST], 10_000, limit)
        assert got == (None, DataError.TOO_LONG, REST), extra


@pytest.mark.asyncio
async def test_oversize_is_reported_after_the_end_and_not_kept() -> None:
    line = b"x" * 60 + b"\r\n"
    wire = line * 100 + b".\r\n" + REST
    assert await read_in_pieces(split(wire, list(range(50, len(wire), 97))), 6000, 100) == (None, DataError.TOO_MUCH, REST)
    assert await read_in_pieces([line * 100 + b".\r\n" + REST], 6200, 100) == (line * 100, None, REST)
    assert await read_in_pieces([line * 100 + b".\r\n" + REST], 6199, 100) == (None, DataError.TOO_MUCH, REST)


def test_after_an_error_the_reader_keeps_only_the_tail() -> None:
    data = DataReader(size_limit=1000, line_limit=100)
    data.add(b"x" * 5000)
    assert data.error is DataError.TOO_LONG
    for _ in range(100):
        data.add(b"y" * 10_000 + b"\r\n")
        assert len(data.buf) <= 5 and not data.ended()
    data.add(b".\r\n")
    assert data.ended()


@pytest.mark.asyncio
async def test_eof_within_data_raises_incomplete_read() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read_in_pieces([b"Subject: cut\r\n\r\nno end\r\n"], 1000, 100)


@pytest.mark.asyncio
async def test_random_streams_read_as_aiosmtpd_reads_them() -> None:
    rng = random.Random(20261123)
    tokens = [b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"xy z", b"\r\n.", b".\r\n", b"\r\n.\r", b"\n.\r\n", b"a" * 17]
    for case in range(1500):
        line_limit = rng.choice([8, 12, 20, 33])
        size_limit = rng.choice([10, 40, 120, 10_000])
        stream = b"".join(rng.choice(tokens) for _ in range(rng.randrange(0, 40))) + b"\r\n.\r\n" + REST
        want = aiosmtpd_rules(stream, size_limit, line_limit)
        cuts = [rng.randrange(1, len(stream)) for _ in range(rng.randrange(0, 6))]
        got = await read_in_pieces(split(stream, cuts), size_limit, line_limit)
        assert got == want, (case, stream, cuts, line_limit, size_limit)


class CountingReader(asyncio.StreamReader):
    reads = 0

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self.reads += 1
        return await super().readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        self.reads += 1
        return await super().readexactly(n)


@pytest.mark.asyncio
@pytest.mark.parametrize("filler", [b"\r", b"\r\n", b"\n", b".", b"\r\n.", b"x\r\n"])
async def test_no_input_makes_it_read_in_small_pieces(filler: bytes) -> None:
    """A long run of what could start the end of data is read in blocks, not byte by byte."""
    body = filler * (2 * 2**20 // len(filler))
    wire = body + b"\r\n.\r\n" + REST
    reader = CountingReader(limit=2**16)
    reader.feed_data(wire)
    reader.feed_eof()
    content, error = await read_data(reader, 2**30, 2**16)
    want = aiosmtpd_rules(wire, 2**30, 2**16)
    assert (content, error, await reader.read()) == want
    assert reader.reads <= 2 * len(wire) // 2**16 + 10, reader.reads


def test_a_big_message_is_unstuffed_in_its_own_buffer_never_copied() -> None:
    """The edge's memory for a big message stays about its size (issue 14: at most 2x): the content
    is the read buffer itself, cut and unstuffed in place, with no second copy at any moment."""
    import tracemalloc

    lines = [b"." * (i % 3) + b"x" * (i % 97 + 1) + b"\r\n" for i in range(200_000)]  # dots to remove on 2 of 3 lines
    wire = b"".join(lines) + b".\r\n"
    expected, _, _ = aiosmtpd_rules(wire + REST, len(wire), 1000)
    reader = DataReader(None, 1000)
    for start in range(0, len(wire), 65536):
        reader.add(wire[start:start + 65536])
    assert reader.ended() and reader.error is None
    buffer = reader.buf
    tracemalloc.start()
    try:
        content = reader.content()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert content is buffer and content == expected
    assert peak < len(wire) / 20, f"content() allocated {peak} bytes for a {len(wire)}-byte message"
