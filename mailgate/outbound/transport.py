"""Outbound mail: the transports that carry messages, and the Outbound object the runtime holds.

Messages and their checks are :mod:`mailgate.outbound.message`. :class:`Outbound` fills in the
default sender, hands the messages to a :class:`Transport` and fires its ``dispatched`` signal for every message the transport accepted. The transports are
:class:`RelayTransport` (SMTP to the configured relay with aiosmtplib, optional DKIM signing with
dkimpy), :class:`SuppressTransport` (nothing leaves the host) and :class:`RecordingTransport`,
which :class:`MessageRecorder` swaps in for every Outbound of the process while it is active
(Flask-Mail's ``record_messages``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Literal, Protocol

import aiosmtplib
import dkim

from mailgate import metrics
from mailgate.errors import ConfigError
from mailgate.outbound.message import (
    Message,
    OutboundError,
    address_of,
    format_address,
    msgid_domain,
)

log = logging.getLogger(__name__)


def _f(default: Any, doc: str, *, secret: bool = False, minimum: float | None = None,
       maximum: float | None = None) -> Any:
    # config._f, repeated: config.py imports OutboundConfig from here for its [outbound] table, so
    # this module must not import config.py (a unit test keeps the two in step).
    return field(default=default, metadata={"doc": doc, "secret": secret, "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class OutboundConfig:
    relay_host: str = _f("", "SMTP relay that carries mailgate's outgoing mail; empty = none (send_email() returns False and logs why)")
    relay_port: int = _f(587, "relay port: 587 for STARTTLS, 465 for implicit TLS, 25 for a relay on this host", minimum=1, maximum=65535)
    tls: Literal["starttls", "implicit", "none"] = _f("starttls", "starttls (the relay must offer it, or nothing is sent), implicit (TLS from the first byte, port 465) or none")
    ca_file: str = _f("", "PEM CA certificates the relay's certificate is checked against; empty = the system's trust store")
    username: str = _f("", "user name for AUTH at the relay; empty = no AUTH")
    password: str = _f("", "password for AUTH (env MAILGATE_OUTBOUND_PASSWORD)", secret=True)
    timeout: float = _f(10.0, "seconds each step with the relay (connect, TLS, each command, the message) may take", minimum=0.1)
    default_sender: str = _f("", "From when send_email() is given no sender, e.g. \"Reminders <noreply@example.org>\"")
    max_messages_per_connection: int = _f(100, "messages sent over one relay connection before it is closed and a new one opened", minimum=1)
    connections: int = _f(4, "relay connections open at the same time; a bulk send is spread over them", minimum=1)
    ascii_attachments: bool = _f(False, "reduce attachment file names to ASCII (for relays that mangle UTF-8 file names)")
    dkim_domain: str = _f("", "DKIM signing domain (d=); signing is on when dkim_domain, dkim_selector and dkim_key_file are all set")
    dkim_selector: str = _f("", "DKIM selector (s=); the public key is published at <selector>._domainkey.<domain>")
    dkim_key_file: str = _f("", "PEM RSA private key file for DKIM signing (PKCS#1 or PKCS#8)")
    suppress: bool = _f(False, "nothing leaves this host: every message is accepted and dropped (development, staging)")


@dataclass(frozen=True)
class ForwardResult:
    """What the relay said to a message forwarded as it is (:meth:`Outbound.forward`)."""

    accepted: bool
    code: int | None = None
    reply: str = ""
    error: str | None = None

    @property
    def permanent(self) -> bool:
        """A 5xx refusal: sending it again would get the same answer."""
        return not self.accepted and self.code is not None and 500 <= self.code < 600


@dataclass(frozen=True)
class SendResult:
    """What became of one message. ``error`` says why it was not accepted, with the relay's reply."""

    message: Message
    accepted: bool
    code: int | None = None
    reply: str = ""
    error: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # recipients the relay refused, when others were accepted


class Signal:
    """In-process signal: ``connect(fn)``; ``fn(message, result)`` is called for every accepted message.

    Receivers run on the event loop and must not block; one that raises is logged and skipped.
    """

    def __init__(self) -> None:
        self._receivers: list[Callable[[Message, SendResult], Any]] = []

    def connect(self, receiver: Callable[[Message, SendResult], Any]) -> Callable[[Message, SendResult], Any]:
        self._receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Callable[[Message, SendResult], Any]) -> None:
        if receiver in self._receivers:
            self._receivers.remove(receiver)

    def send(self, message: Message, result: SendResult) -> None:
        for receiver in list(self._receivers):
            try:
                receiver(message, result)
            except Exception:
                log.exception("a receiver of the dispatched signal raised", extra={"event": "outbound.receiver_failed"})


# -- transports ----------------------------------------------------------------------------------------
class Transport(Protocol):
    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        """One result per message, in order. Failures are results, never exceptions."""
        ...


class SuppressTransport:
    """Accepts every message and sends nothing (``[outbound] suppress = true``)."""

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        for m in messages:
            log.info("outbound message %s suppressed ([outbound] suppress = true)", m.message_id,
                     extra={"event": "outbound.suppressed"})
        return [SendResult(m, True, reply="suppressed") for m in messages]


class RecordingTransport:
    """Keeps every message in ``outbox`` and sends nothing; used by :class:`MessageRecorder`."""

    def __init__(self, outbox: list[Message] | None = None) -> None:
        self.outbox: list[Message] = [] if outbox is None else outbox

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        for m in messages:
            m.as_bytes()  # what a relay would be sent must be renderable
        self.outbox.extend(messages)
        return [SendResult(m, True, reply="recorded") for m in messages]


@dataclass
class _Batch:
    queue: deque[tuple[int, Message]]
    raws: list[bytes]
    results: list[SendResult | None]
    alive: int  # workers that have not stopped
    error: str | None = None  # why the last connection attempt failed
    code: int | None = None


def _smtp_failure(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "refused every recipient: " + "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        stage = {aiosmtplib.SMTPSenderRefused: " to MAIL FROM", aiosmtplib.SMTPDataError: " to the message (DATA)",
                 aiosmtplib.SMTPAuthenticationError: " to AUTH", aiosmtplib.SMTPConnectResponseError: " on connect",
                 aiosmtplib.SMTPHeloError: " to EHLO"}.get(type(exc), "")
        return f"answered {exc.code} {exc.message}{stage}"
    return str(exc) or type(exc).__name__


def _smtp_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return exc.recipients[0].code
    return exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else None


class RelayTransport:
    """SMTP to ``[outbound] relay_host`` with aiosmtplib.

    A send of several messages is spread over up to ``connections`` connections, each reused for up
    to ``max_messages_per_connection`` messages; ``connections`` also caps the connections that all
    sends of this process hold at once. Messages are DKIM-signed when ``dkim_*`` are set.
    """

    def __init__(self, config: OutboundConfig) -> None:
        self.config = config
        self.relay = f"{config.relay_host}:{config.relay_port}"
        self._loaded = False
        self._dkim_key: bytes | None = None
        self._tls: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(config.connections)
        self._helo: str | None = None

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        if not messages:
            return []
        if not self.config.relay_host:
            why = "no relay is configured; set [outbound] relay_host (or suppress = true on a development host)"
            return [SendResult(m, False, error=why) for m in messages]
        if not self._loaded:
            try:
                await asyncio.to_thread(self.load)
            except ConfigError as exc:
                return [SendResult(m, False, error=f"cannot send: {exc}") for m in messages]
        raws = await asyncio.to_thread(lambda: [self.render(m) for m in messages])
        if self._helo is None:
            self._helo = await asyncio.to_thread(socket.getfqdn)
        batch = _Batch(deque(enumerate(messages)), raws, [None] * len(messages), min(self.config.connections, len(messages)))
        await asyncio.gather(*(self._worker(batch) for _ in range(batch.alive)))
        return [r or SendResult(m, False, error="not sent") for r, m in zip(batch.results, messages, strict=True)]

    def load(self) -> None:
        """Read the DKIM key and the CA file (ConfigError if they cannot be used); done once, at the
        first send or by :meth:`Outbound.check`, so that processes that never send need not read them."""
        if not self._loaded:
            self._dkim_key = _load_dkim_key(self.config)
            self._tls = _tls_context(self.config)
            self._loaded = True

    def render(self, message: Message) -> bytes:
        """The bytes sent for ``message``: rendered, and DKIM-signed when configured."""
        raw = message.as_bytes(ascii_filenames=self.config.ascii_attachments)
        if self._dkim_key is None:
            return raw
        signature = dkim.sign(raw, self.config.dkim_selector.encode(), self.config.dkim_domain.encode(), self._dkim_key,
                              canonicalize=(b"relaxed", b"relaxed"))
        return bytes(signature) + raw

    async def _worker(self, batch: _Batch) -> None:
        """Send queued messages over one connection at a time until the queue is empty.

        A worker that cannot connect puts its message back and stops, leaving the queue to the
        others (a relay may allow fewer connections than configured); the last one to stop fails
        what is left with its error, so a relay that is down fails the batch after one attempt.
        """
        smtp: aiosmtplib.SMTP | None = None
        try:
            async with self._slots:
                used = 0
                while batch.queue:
                    i, message = batch.queue.popleft()
                    for _attempt in (1, 2):
                        if smtp is not None and used >= self.config.max_messages_per_connection:
                            await self._quit(smtp)
                            smtp = None
                        if smtp is None:
                            try:
                                smtp, used = await self._connect(), 0
                            except (aiosmtplib.SMTPException, OSError) as exc:
                                batch.error = f"cannot send through the relay {self.relay}: {_smtp_failure(exc)}"
                                batch.code = _smtp_code(exc)
                                batch.queue.appendleft((i, message))
                                return
                        reused = used > 0
                        result, usable = await self._transact(smtp, message, batch.raws[i])
                        used += 1
                        if not usable:
                            smtp.close()
                            smtp = None
                        # A reused connection that the relay dropped or closed with 421 ("too many
                        # messages") is worth one fresh connection; a fresh one that failed is not.
                        if result.accepted or usable or not reused:
                            break
                    batch.results[i] = result
                if smtp is not None:
                    await self._quit(smtp)
                    smtp = None
        finally:
            if smtp is not None:
                smtp.close()  # cancelled (the sender's deadline): do not wait for the relay
            batch.alive -= 1
            if batch.alive == 0:
                while batch.queue:
                    i, message = batch.queue.popleft()
                    batch.results[i] = SendResult(message, False, code=batch.code, error=batch.error or "not sent")

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        smtp = aiosmtplib.SMTP(
            hostname=cfg.relay_host, port=cfg.relay_port, timeout=cfg.timeout, local_hostname=self._helo,
            use_tls=cfg.tls == "implicit", start_tls=cfg.tls == "starttls",
            tls_context=self._tls, username=cfg.username or None, password=cfg.password or None,
        )
        await smtp.connect()
        return smtp

    async def _transact(self, smtp: aiosmtplib.SMTP, message: Message, raw: bytes) -> tuple[SendResult, bool]:
        """Send one message on an open connection; returns the result and whether the connection is still usable."""
        options = ["SMTPUTF8"] if message.needs_smtputf8() else None
        sender = address_of(message.sender or "")
        try:
            refused, reply = await smtp.sendmail(sender, message.recipients(), raw, mail_options=options)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPNotSupported) as exc:
            code = _smtp_code(exc)
            error = f"the relay {self.relay} {_smtp_failure(exc)}"
            return SendResult(message, False, code=code, error=error), code != 421 and smtp.is_connected
        except (aiosmtplib.SMTPException, OSError) as exc:
            return SendResult(message, False, error=f"lost the connection to the relay {self.relay}: {_smtp_failure(exc)}"), False
        return SendResult(message, True, code=250, reply=reply,
                          refused={addr: f"{r.code} {r.message}" for addr, r in refused.items()}), True

    async def forward(self, sender: str, recipients: Sequence[str], raw: bytes) -> ForwardResult:
        """Send ``raw`` as it is (no DKIM signature: the message is not mailgate's) on a connection of its own."""
        if not self.config.relay_host:
            return ForwardResult(False, error="no relay is configured; set [outbound] relay_host")
        try:
            if not self._loaded:
                await asyncio.to_thread(self.load)
        except ConfigError as exc:
            return ForwardResult(False, error=f"cannot send: {exc}")
        if self._helo is None:
            self._helo = await asyncio.to_thread(socket.getfqdn)
        async with self._slots:
            try:
                smtp = await self._connect()
            except (aiosmtplib.SMTPException, OSError) as exc:
                return ForwardResult(False, code=_smtp_code(exc), error=f"cannot send through the relay {self.relay}: {_smtp_failure(exc)}")
            try:
                smtputf8 = not (sender + "".join(recipients)).isascii()
                _, reply = await smtp.sendmail(sender, list(recipients), raw, mail_options=["SMTPUTF8"] if smtputf8 else None)
            except (aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                return ForwardResult(False, code=_smtp_code(exc), error=f"the relay {self.relay} {_smtp_failure(exc)}")
            await self._quit(smtp)
        return ForwardResult(True, code=250, reply=reply)

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _tls_context(config: OutboundConfig) -> ssl.SSLContext | None:
    if config.tls == "none":
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[outbound] ca_file = {config.ca_file!r}: cannot load it: {exc}") from None


def _dkim_enabled(config: OutboundConfig) -> bool:
    parts = {"dkim_domain": config.dkim_domain, "dkim_selector": config.dkim_selector, "dkim_key_file": config.dkim_key_file}
    missing = [k for k, v in parts.items() if not v]
    if missing and len(missing) < len(parts):
        raise ConfigError(f"[outbound] DKIM signing needs dkim_domain, dkim_selector and dkim_key_file; {', '.join(missing)} not set")
    return not missing


def _load_dkim_key(config: OutboundConfig) -> bytes | None:
    if not _dkim_enabled(config):
        return None
    try:
        key = Path(config.dkim_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"[outbound] dkim_key_file = {config.dkim_key_file!r}: cannot read it: {exc.strerror or exc}") from None
    try:
        dkim.sign(b"From: a@example.org\r\n\r\n", config.dkim_selector.encode(), config.dkim_domain.encode(), key)
    except (dkim.DKIMException, ValueError) as exc:
        raise ConfigError(f"[outbound] dkim_key_file = {config.dkim_key_file!r} is not a usable RSA private key: {exc}") from None
    return key


def check_outbound(config: OutboundConfig, source: str = "", *, files: bool = True) -> None:
    """Raise ConfigError (prefixed with ``source``) for an ``[outbound]`` table that cannot work.

    ``files=False`` skips reading the DKIM key and the CA file: config loading uses that, so that
    one-shot CLI commands run by a user who cannot read the key still work.
    """
    try:
        if config.tls not in ("starttls", "implicit", "none"):
            raise ConfigError(f"[outbound] tls = {config.tls!r} is not one of 'starttls', 'implicit', 'none'")
        if config.default_sender:
            try:
                format_address(config.default_sender, "default_sender")
            except OutboundError as exc:
                raise ConfigError(f"[outbound] {exc}") from None
        _dkim_enabled(config)
        if files:
            _load_dkim_key(config)
            _tls_context(config)
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


# -- recorder ----------------------------------------------------------------------------------------
_overrides: list[Transport] = []
_overrides_lock = threading.Lock()


class MessageRecorder:
    """While active, every Outbound of this process hands its messages to a RecordingTransport
    instead of its own transport; ``with MessageRecorder() as outbox:`` (or ``async with``)."""

    def __init__(self) -> None:
        self.outbox: list[Message] = []
        self.transport = RecordingTransport(self.outbox)

    def __enter__(self) -> list[Message]:
        with _overrides_lock:
            _overrides.append(self.transport)
        return self.outbox

    def __exit__(self, *exc: object) -> None:
        with _overrides_lock:
            _overrides.remove(self.transport)

    async def __aenter__(self) -> list[Message]:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def _override() -> Transport | None:
    with _overrides_lock:
        return _overrides[-1] if _overrides else None


# -- the runtime's object ----------------------------------------------------------------------------
class Outbound:
    """Config + transport + ``dispatched`` signal; the runtime holds one as ``runtime.outbound``."""

    def __init__(self, config: OutboundConfig, transport: Transport | None = None) -> None:
        check_outbound(config, files=False)
        self.config = config
        self.dispatched = Signal()
        self.transport: Transport = transport or (SuppressTransport() if config.suppress else RelayTransport(config))

    def check(self) -> None:
        """Read the DKIM key and CA file now (ConfigError if unusable); the daemon calls this at start."""
        check_outbound(self.config)
        if isinstance(self.transport, RelayTransport):
            self.transport.load()

    @property
    def deadline(self) -> float:
        """Longest time one message may take end to end (connect, TLS, AUTH, envelope, data, quit)."""
        return self.config.timeout * 6

    def prepare(self, message: Message) -> Message:
        """A copy with the default sender, Message-ID and Date filled in; validated (raises OutboundError)."""
        sender = message.sender or self.config.default_sender or None
        message = dataclasses.replace(
            message, sender=sender, date=message.date or dt.datetime.now(dt.UTC),
            message_id=message.message_id or make_msgid(domain=msgid_domain(format_address(sender) if sender else None)),
        )
        message.validate()
        return message

    async def send(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send messages (one connection pool for all of them); one result each, in order.

        Every message is validated before any is sent. Accepted messages fire ``dispatched``;
        failures are logged with the relay's reply.
        """
        prepared = [self.prepare(m) for m in messages]
        transport = _override() or self.transport
        results = await transport.send(prepared)
        self.report(results)
        return results

    def report(self, results: Sequence[SendResult]) -> None:
        """Fire ``dispatched`` for the accepted messages and log the failures (with the relay's reply)."""
        for r in results:
            metrics.OUTBOUND.labels("failed" if not r.accepted else "partial" if r.refused else "sent").inc()
            if r.accepted:
                if r.refused:
                    log.warning("outbound message %s: the relay refused some recipients: %s", r.message.message_id,
                                "; ".join(f"{a}: {why}" for a, why in r.refused.items()), extra={"event": "outbound.refused"})
                self.dispatched.send(r.message, r)
            else:
                log.error("outbound message %s to %s not sent: %s", r.message.message_id, ", ".join(r.message.recipients()),
                          r.error, extra={"event": "outbound.failed"})

    async def forward(self, sender: str, recipients: Sequence[str], raw: bytes) -> ForwardResult:
        """Send the bytes ``raw`` unchanged to ``recipients`` through the relay, within :attr:`deadline`
        (the postmaster forward). Failures are results, never exceptions."""
        transport = _override() or self.transport
        if isinstance(transport, RelayTransport):
            try:
                async with asyncio.timeout(self.deadline):
                    result = await transport.forward(sender, recipients, raw)
            except TimeoutError:
                result = ForwardResult(False, error=f"gave up after {self.deadline:g} s ([outbound] timeout x 6)")
        elif isinstance(transport, SuppressTransport):
            log.info("a forward to %s suppressed ([outbound] suppress = true)", ", ".join(recipients),
                     extra={"event": "outbound.suppressed"})
            result = ForwardResult(True, reply="suppressed")
        else:
            result = ForwardResult(False, error=f"{type(transport).__name__} cannot forward a message as it is")
        metrics.OUTBOUND.labels("sent" if result.accepted else "failed").inc()
        return result

    async def send_one(self, message: Message) -> SendResult:
        """Send one message within :attr:`deadline`."""
        prepared = self.prepare(message)
        try:
            async with asyncio.timeout(self.deadline):
                (result,) = await self.send([prepared])
        except TimeoutError:
            result = SendResult(prepared, False, error=f"gave up after {self.deadline:g} s ([outbound] timeout x 6)")
            metrics.OUTBOUND.labels("failed").inc()
            log.error("outbound message %s to %s not sent: %s", prepared.message_id, ", ".join(prepared.recipients()),
                      result.error, extra={"event": "outbound.failed"})
        return result


# -- one connection across sends (Flask-Mail's Connection) ---------------------------------------------
class RelayLink:
    """One relay connection kept open across :meth:`send` calls: opened at the first message, closed
    and opened again after ``max_messages_per_connection`` messages, closed by :meth:`close`.

    It uses the transport's connect, transaction and quit steps (TLS, AUTH, DKIM as configured). It
    holds no ``connections`` slot: its caller opened it explicitly and sends one message at a time.
    """

    def __init__(self, transport: RelayTransport) -> None:
        self.transport = transport
        self._smtp: aiosmtplib.SMTP | None = None
        self._used = 0

    async def send(self, message: Message) -> SendResult:
        """Send one prepared message; failures are results, as with :meth:`RelayTransport.send`."""
        t = self.transport
        if not t.config.relay_host:
            return SendResult(message, False, error="no relay is configured; set [outbound] relay_host")
        if not t._loaded:
            try:
                await asyncio.to_thread(t.load)
            except ConfigError as exc:
                return SendResult(message, False, error=f"cannot send: {exc}")
        raw = await asyncio.to_thread(t.render, message)
        if t._helo is None:
            t._helo = await asyncio.to_thread(socket.getfqdn)
        result = SendResult(message, False, error="not sent")
        for _attempt in (1, 2):
            if self._smtp is not None and self._used >= t.config.max_messages_per_connection:
                await t._quit(self._smtp)
                self._smtp = None
            if self._smtp is None:
                try:
                    self._smtp, self._used = await t._connect(), 0
                except (aiosmtplib.SMTPException, OSError) as exc:
                    return SendResult(message, False, code=_smtp_code(exc),
                                      error=f"cannot send through the relay {t.relay}: {_smtp_failure(exc)}")
            reused = self._used > 0
            result, usable = await t._transact(self._smtp, message, raw)
            self._used += 1
            if not usable:
                self._smtp.close()
                self._smtp = None
            # as in RelayTransport._worker: a reused connection the relay dropped gets one fresh one
            if result.accepted or usable or not reused:
                break
        return result

    def abort(self) -> None:
        """Drop the connection without QUIT (after a deadline passed)."""
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    async def close(self) -> None:
        """QUIT and close the connection, if one is open."""
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            await self.transport._quit(smtp)


class OutboundConnection:
    """Messages sent one at a time, each within :attr:`Outbound.deadline`, over one relay connection
    (a :class:`RelayLink`) when the transport is the relay; with the suppress transport or while a
    :class:`MessageRecorder` is active, through that instead. Reports like :meth:`Outbound.send`."""

    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound
        self._link: RelayLink | None = None

    async def send(self, message: Message) -> SendResult:
        """Prepare (raises OutboundError), send and report one message; the result says what became of it."""
        prepared = self.outbound.prepare(message)
        transport = _override() or self.outbound.transport
        try:
            async with asyncio.timeout(self.outbound.deadline):
                if isinstance(transport, RelayTransport):
                    if self._link is None or self._link.transport is not transport:
                        await self.close()
                        self._link = RelayLink(transport)
                    result = await self._link.send(prepared)
                else:
                    (result,) = await transport.send([prepared])
        except TimeoutError:
            if self._link is not None:
                self._link.abort()
            result = SendResult(prepared, False, error=f"gave up after {self.outbound.deadline:g} s ([outbound] timeout x 6)")
        self.outbound.report([result])
        return result

    async def close(self) -> None:
        """Close the relay connection, if one is open."""
        if self._link is not None:
            link, self._link = self._link, None
            await link.close()
