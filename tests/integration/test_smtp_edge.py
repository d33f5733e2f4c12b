"""The SMTP edge against clients that misbehave: caps, RFC 5321 timeouts, junk commands, half-closed
streams and one log line per refusal. Real aiosmtpd server on port 0 in this process, real sockets
in threads (a paced sender's pauses shape its load; nothing waits on a sleep to synchronise)."""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import Config
from mailgate.daemon.lifecycle import Daemon
from mailgate.mail.auth import StaticResolver
from tests.helpers import make_config, wait_until
from tests.helpers import runtime_of as rt

pytestmark = pytest.mark.asyncio
SERVER_LOG = "mailgate.edges.smtp.server"


@pytest.fixture
def smtp_table() -> dict[str, Any]:
    return {}


@pytest.fixture
def config(tmp_path: Path, smtp_table: dict[str, Any]) -> Config:
    return make_config(tmp_path, smtp={"port": 0, "hostname": "mx.test", "max_recipients": 3, "max_line_length": 2000,
                                       "max_message_size": 200_000, **smtp_table},
                       mail={"domains": ("example.test",)})


@pytest.fixture
def daemon_roles() -> tuple[str, ...]:
    return ("worker", "smtp")


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({})


@pytest.fixture
def smtp_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    return caplog


def lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG]
    return [m for m in found if re.search(pattern, m)]


async def new_address(d: Daemon) -> tuple[str, str]:
    session = await rt(d).create_session("email-to-case-simple")
    result = await rt(d).run_action(session.id, "start")
    assert result.text is not None
    return session.id, result.text


def message(to: str, subject: str, body: bytes = b"Body text\r\n") -> bytes:
    return (f"From: sender@elsewhere.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@elsewhere.test>\r\n\r\n").encode() + body


async def stored(d: Daemon, sid: str) -> list[str]:
    """The subjects of the session's stored messages (as their Message-IDs start), once there are any."""
    store = rt(d).store
    await wait_until(lambda: store.list_emails(session_id=sid), what="a stored message")
    return sorted((e.message_id or "").strip("<").split(".")[0] for e in await store.list_emails(session_id=sid))


class Raw:
    """SMTP over a plain socket: exactly the bytes we choose, replies read one by one."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        """The next reply; (0, b"") when the server has closed the connection."""
        text = b""
        while True:
            line = self.file.readline()
            if not line:
                return 0, text
            text += line
            if line[3:4] != b"-":
                return int(line[:3]), text

    def cmd(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def envelope(self, rcpt: str) -> None:
        assert self.reply()[0] == 220
        assert self.cmd(b"EHLO client.test")[0] == 250
        assert self.cmd(b"MAIL FROM:<sender@elsewhere.test>")[0] == 250
        assert self.cmd(f"RCPT TO:<{rcpt}>".encode())[0] == 250

    def close(self) -> None:
        self.file.close()
        self.sock.close()


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


# --- a client that half-closes after writing its whole session (finding 9) --------------------


async def test_a_client_that_half_closes_after_its_whole_session_gets_every_command_answered(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon)
    session = (b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\nRCPT TO:<" + address.encode() + b">\r\n"
               b"DATA\r\n" + message(address, "Netcat") + b".\r\nQUIT\r\n")

    def netcat() -> list[int]:
        with socket.create_connection(("127.0.0.1", daemon.smtp.port), timeout=10) as sock:  # type: ignore[union-attr]
            sock.sendall(session)
            sock.shutdown(socket.SHUT_WR)  # what `nc` does at the end of its input
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return [int(line[:3]) for line in data.split(b"\r\n") if line[3:4] == b" "]

    assert await in_thread(netcat) == [220, 250, 250, 250, 354, 250, 221]
    assert await stored(daemon, sid) == ["Netcat"]


# --- timeouts: per read, a DATA budget by size, never mailgate's own time (finding 2) ----------


def paced_data(port: int, address: str, size: int, chunk: int, pause: float) -> tuple[tuple[int, bytes], float]:
    """One message of about ``size`` bytes written ``chunk`` bytes at a time, ``pause`` seconds apart:
    the DATA reply (or (0, b"") if the server closed without one) and the seconds it took."""
    client = Raw(port)
    try:
        client.envelope(address)
        assert client.cmd(b"DATA")[0] == 354
        body = message(address, "Paced", b"".join(b"%07d " % i + b"y" * 62 + b"\r\n" for i in range(size // 72)))
        started = time.monotonic()
        try:
            for i in range(0, len(body), chunk):
                client.sock.sendall(body[i:i + chunk])
                time.sleep(pause)  # load shaping: this is the slow sender
            client.sock.sendall(b".\r\n")
        except OSError:
            pass  # the server closed the connection; its reply, if any, is read below
        return client.reply(), time.monotonic() - started
    finally:
        client.close()


@pytest.mark.parametrize("smtp_table", [{"timeout": 1, "min_data_rate": 1024}])
async def test_a_sender_above_the_minimum_rate_is_never_cut_off_and_one_below_it_is(
        daemon: Daemon, smtp_log: pytest.LogCaptureFixture) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon)
    # 8 KB at 4 KB/s takes 2 s: twice `timeout`, which a deadline counted from DATA cut off
    reply, took = await in_thread(paced_data, daemon.smtp.port, address, 8_000, 512, 0.125)
    assert reply[0] == 250, reply
    assert took > 1.5
    assert await stored(daemon, sid) == ["Paced"]

    # 400 bytes/s, each read well within `timeout`: below min_data_rate, so cut off when the
    # budget (1 s + bytes / 1024) runs out, about 1.6 s in, with a 421 and a log line
    reply, took = await in_thread(paced_data, daemon.smtp.port, address, 12_000, 200, 0.5)
    assert reply[0] == 421 and reply[1].startswith(b"421 4.4.2"), reply
    assert took < 4
    [line] = lines(smtp_log, "closed while reading DATA")
    assert "DATA slower than 1024 bytes/s" in line and "peer=127.0.0.1" in line and address in line
    assert await stored(daemon, sid) == ["Paced"]


@pytest.mark.parametrize("smtp_table", [{"timeout": 1}])
async def test_the_time_mailgate_takes_to_store_a_message_is_not_the_clients(daemon: Daemon) -> None:
    assert daemon.smtp is not None
    sid, address = await new_address(daemon)
    handler = daemon.smtp.handler
    store_message = handler.handle_DATA

    async def slow_store(*args: Any) -> str:
        await asyncio.sleep(1.5)  # a busy parse worker, a slow disk: longer than `timeout`
        return await store_message(*args)

    handler.handle_DATA = slow_store  # type: ignore[method-assign]

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.smtp.port, timeout=10) as client:  # type: ignore[union-attr]
            client.ehlo("client.test")
            client.mail("sender@elsewhere.test")
            client.rcpt(address)
            return client.data(message(address, "Slow store"))

    code, text = await in_thread(send)
    assert code == 250 and text.startswith(b"2.0.0"), (code, text)
    assert await stored(daemon, sid) == ["Slow"]


# --- junk commands and the session age (finding 9) ------------------------------------------


@pytest.mark.parametrize("smtp_table", [{"max_junk_commands": 3}])
async def test_noop_and_rset_are_capped_between_messages(daemon: Daemon, smtp_log: pytest.LogCaptureFixture) -> None:
    assert daemon.smtp is not None
    _, address = await new_address(daemon)

    def talk() -> list[int]:
        client = Raw(daemon.smtp.port)  # type: ignore[union-attr]
        try:
            client.envelope(address)
            codes = [client.cmd(b"NOOP")[0], client.cmd(b"RSET")[0], client.cmd(b"NOOP")[0]]
            # an accepted message starts the count again
            codes += [client.cmd(b"MAIL FROM:<sender@elsewhere.test>")[0], client.cmd(f"RCPT TO:<{address}>".encode())[0],
                      client.cmd(b"DATA")[0], client.cmd(message(address, "Between junk") + b".")[0]]
            codes += [client.cmd(b"NOOP")[0] for _ in range(4)]
            codes.append(client.reply()[0])  # the server closed the connection
            return codes
        finally:
            client.close()

    assert await in_thread(talk) == [250, 250, 250, 250, 250, 354, 250, 250, 250, 250, 421, 0]
    assert len(lines(smtp_log, r"peer=127\.0\.0\.1 refused: more than 3 NOOP/RSET/VRFY/EXPN/HELP commands")) == 1


@pytest.mark.parametrize("smtp_table", [{"timeout": 1, "max_session_age": 2}])
async def test_a_noop_every_half_second_does_not_keep_a_connection_past_its_age(
        daemon: Daemon, smtp_log: pytest.LogCaptureFixture) -> None:
    assert daemon.smtp is not None

    def keep_alive() -> tuple[tuple[int, bytes], float]:
        client = Raw(daemon.smtp.port)  # type: ignore[union-attr]
        started = time.monotonic()
        try:
            assert client.reply()[0] == 220
            while time.monotonic() - started < 8:
                reply = client.cmd(b"NOOP")
                if reply[0] != 250:
                    return reply, time.monotonic() - started
                time.sleep(0.5)  # load shaping: a NOOP well within every `timeout`
            return (0, b"still open"), time.monotonic() - started
        finally:
            client.close()

    reply, took = await in_thread(keep_alive)
    assert reply[0] == 421 and reply[1].startswith(b"421 4.4.2"), reply
    assert 1.9 < took < 3.5
    assert len(lines(smtp_log, r"closed while waiting for a command: the session is older than 2 s")) == 1


# --- connection cap in all (finding 1) --------------------------------------------------------


@pytest.mark.parametrize("smtp_table", [{"max_connections": 3}])
async def test_past_the_connection_cap_a_client_gets_421_and_is_closed(
        daemon: Daemon, smtp_log: pytest.LogCaptureFixture) -> None:
    assert daemon.smtp is not None and daemon.smtp.limits.total == 3

    def crowd() -> tuple[list[int], tuple[int, bytes], int]:
        clients = [Raw(daemon.smtp.port) for _ in range(3)]  # type: ignore[union-attr]
        try:
            banners = [c.reply()[0] for c in clients]
            extra = Raw(daemon.smtp.port)  # type: ignore[union-attr]
            try:
                return banners, extra.reply(), extra.reply()[0]
            finally:
                extra.close()
        finally:
            for c in clients:
                c.close()

    banners, refused, after = await in_thread(crowd)
    assert banners == [220, 220, 220]
    assert refused[0] == 421 and refused[1].startswith(b"421 4.7.0"), refused
    assert after == 0  # closed
    assert len(lines(smtp_log, r"peer=127\.0\.0\.1 refused: connection limit \(3 open")) == 1

    def banner() -> int:
        client = Raw(daemon.smtp.port)  # type: ignore[union-attr]
        try:
            return client.reply()[0]
        finally:
            client.close()

    async def accepted_again() -> bool:
        return await in_thread(banner) == 220

    await wait_until(accepted_again, what="a banner once the crowd left")


# --- one log line for every refusal, client text escaped (findings 5 and 6) ---------------------


async def test_every_refusal_has_one_log_line_with_reason_peer_and_mailbox(
        daemon: Daemon, smtp_log: pytest.LogCaptureFixture) -> None:
    assert daemon.smtp is not None
    port = daemon.smtp.port
    sid, address = await new_address(daemon)
    local = address.partition("@")[0]

    def refusals() -> dict[str, int]:
        codes: dict[str, int] = {}
        client = Raw(port)
        try:
            client.envelope(address)
            codes["unknown"] = client.cmd(b'RCPT TO:<"\x1b[31mred\rx"@example.test>')[0]
            for _ in range(2):
                client.cmd(f"RCPT TO:<{address}>".encode())
            codes["452"] = client.cmd(f"RCPT TO:<{address}>".encode())[0]  # the fourth; max_recipients = 3
            assert client.cmd(b"DATA")[0] == 354
            codes["552"] = client.cmd(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 210 + b".")[0]
            client.cmd(b"MAIL FROM:<sender@elsewhere.test>")
            client.cmd(f"RCPT TO:<{address}>".encode())
            assert client.cmd(b"DATA")[0] == 354
            codes["500"] = client.cmd(b"Subject: long\r\n\r\n" + b"x" * 3000 + b"\r\n.")[0]
        finally:
            client.close()
        return codes

    assert await in_thread(refusals) == {"452": 452, "unknown": 550, "552": 552, "500": 500}
    assert len(lines(smtp_log, rf"peer=127\.0\.0\.1 rcpt={local}@example\.test rejected: more than 3 recipients")) == 1
    [unknown] = lines(smtp_log, r"rcpt=.*red")
    assert "\x1b" not in unknown and "\r" not in unknown and r'rcpt="\x1b[31mred\x0dx"@example.test' in unknown
    assert len(lines(smtp_log, rf"peer=127\.0\.0\.1 mailboxes={local}@example\.test refused message: more data than the size limit")) == 1
    assert len(lines(smtp_log, rf"peer=127\.0\.0\.1 mailboxes={local}@example\.test refused message: a line longer")) == 1

    # 550 for a mailbox deleted between RCPT and DATA
    loop = asyncio.get_running_loop()

    def deleted_in_between() -> int:
        client = Raw(port)
        try:
            client.envelope(address)
            asyncio.run_coroutine_threadsafe(rt(daemon).delete_session(sid), loop).result(10)
            assert client.cmd(b"DATA")[0] == 354
            return client.cmd(message(address, "Too late") + b".")[0]
        finally:
            client.close()

    assert await in_thread(deleted_in_between) == 550
    assert len(lines(smtp_log, rf"peer=127\.0\.0\.1 mailboxes={local} refused message: the mailboxes' sessions were deleted")) == 1


async def test_a_connection_dropped_while_its_message_is_stored_is_logged(
        daemon: Daemon, smtp_log: pytest.LogCaptureFixture) -> None:
    assert daemon.smtp is not None
    _, address = await new_address(daemon)
    handler = daemon.smtp.handler
    store_message = handler.handle_DATA
    storing = asyncio.Event()

    async def slow_store(*args: Any) -> str:
        storing.set()
        await asyncio.sleep(2)
        return await store_message(*args)

    handler.handle_DATA = slow_store  # type: ignore[method-assign]
    client = await in_thread(Raw, daemon.smtp.port)
    await in_thread(client.envelope, address)
    assert (await in_thread(client.cmd, b"DATA"))[0] == 354
    await in_thread(client.sock.sendall, message(address, "Dropped") + b".\r\n")
    await asyncio.wait_for(storing.wait(), 10)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    client.close()
    await wait_until(lambda: lines(smtp_log, "connection lost while the message was being stored"),
                     what="the dropped-connection line")
    [line] = lines(smtp_log, "connection lost while the message was being stored")
    assert "peer=127.0.0.1" in line and address in line
