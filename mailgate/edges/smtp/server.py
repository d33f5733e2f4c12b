"""The SMTP edge: an aiosmtpd server in the daemon's loop. Every reply code lives in this module.

The handler implements only the hooks it needs (RCPT, DATA, exceptions) and turns the core's
verdicts (:mod:`mailgate.core.inbound`) into replies. A small SMTP subclass adds what aiosmtpd has no
hook for: connection caps per client and in all, RFC 5321 timeouts that never count mailgate's own
work, a cap on commands that do not move a transaction, no STARTTLS within TLS, answers to a client
that half-closes after its last command, one log line per refusal, enhanced status codes on
aiosmtpd's own size replies, a line length that real mail needs, and a DATA reader that reads
blocks instead of lines (:mod:`mailgate.edges.smtp.data`, same rules as aiosmtpd 1.4.6's, a
fraction of its CPU). The subclass uses aiosmtpd internals of 1.4.x, which is why pyproject.toml
pins ``aiosmtpd<1.5``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException, syntax

from mailgate import metrics
from mailgate.config import SmtpConfig
from mailgate.core.inbound import Inbound, Verdict
from mailgate.edges.smtp.data import DataError, read_data
from mailgate.edges.smtp.limits import (
    ACCEPT_BACKLOG,
    ClientLimits,
    Phase,
    Refusal,
    Timing,
    connection_cap,
    shown,
)
from mailgate.errors import StoreError

log = logging.getLogger(__name__)

# Replies: RFC 5321 codes with RFC 3463 enhanced status codes. Texts name the reason, never internals.
OK_RCPT = "250 2.1.5 Recipient ok"
OK_DATA = "250 2.0.0 Message accepted"
OK_DUPLICATE = "250 2.0.0 Message already received"
UNKNOWN_MAILBOX = "550 5.1.1 No such mailbox here"
RELAY_DENIED = "550 5.7.1 Relaying denied: this server accepts mail for its own domains only"
BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients; send the rest in another message"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address; try again later"
SERVER_BUSY = "421 4.7.0 Too many connections; try again later"
TIMED_OUT = "421 4.4.2 Timeout; closing connection"
TOO_MANY_JUNK_COMMANDS = "421 4.7.0 Too many commands that send no mail; closing connection"
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS already active"
TOO_MANY_UNKNOWN = "421 4.7.0 Too many unknown recipients; closing connection"
MESSAGE_TOO_BIG = "552 5.3.4 Message too big for this server"
LINE_TOO_LONG = "500 5.5.2 Line too long for this server"
DMARC_REJECT = "550 5.7.1 Rejected by the DMARC policy of the sender's domain"
MAILBOX_GONE = "550 5.1.1 Mailbox no longer exists"
TEMPORARY_FAILURE = "451 4.3.0 Temporary server error; please try again later"

# aiosmtpd's own replies that we restate with enhanced codes.
_REWRITE = {
    "552 Error: Too much mail data": MESSAGE_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
}
# aiosmtpd's own refusals that it does not log (or logs without the peer): the reason we log.
_AIOSMTPD_REFUSALS = {
    "552 Error: message size exceeds fixed maximum message size": "MAIL FROM declares a SIZE above max_message_size",
    "500 Command line too long": "command line too long",
    "502 5.5.1 Too many unrecognized commands, goodbye.": "too many unrecognized commands; closing",
}
# Commands that send no mail (Postfix's "junk commands"): a client may send only so many of them
# between two accepted messages, or a NOOP every minute would keep a connection forever.
_JUNK_COMMANDS = ("NOOP", "RSET", "VRFY", "EXPN", "HELP")


class Handler:
    def __init__(self, inbound: Inbound, config: SmtpConfig) -> None:
        self.inbound = inbound
        self.config = config
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        peer = _peer(session)
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            self.inbound.count_rejection("too_many_recipients")
            log.info("smtp peer=%s rcpt=%s rejected: more than %d recipients", peer, shown(address),
                     self.config.max_recipients, extra={"event": "smtp.rcpt_rejected", "peer": peer})
            return TOO_MANY_RECIPIENTS
        verdict, mailbox = await self.inbound.check_recipient(address)
        if verdict is Verdict.OK and mailbox is not None:
            envelope.rcpt_tos.append(address)
            accepted = getattr(envelope, "mailgate_mailboxes", [])
            accepted.append(mailbox)
            envelope.mailgate_mailboxes = accepted  # type: ignore[attr-defined]
            return OK_RCPT
        self.inbound.count_rejection(verdict.name.lower())
        log.info("smtp peer=%s rcpt=%s rejected: %s", peer, shown(address), verdict.value, extra={"event": "smtp.rcpt_rejected", "peer": peer})
        if verdict is Verdict.FOREIGN_DOMAIN:
            return RELAY_DENIED
        if verdict is Verdict.BAD_ADDRESS:
            return BAD_ADDRESS
        unknown = getattr(session, "mailgate_unknown", 0) + 1
        session.mailgate_unknown = unknown  # type: ignore[attr-defined]
        if unknown > self.config.max_unknown_recipients:
            transport = server.transport
            if transport is not None:
                asyncio.get_running_loop().call_soon(transport.close)  # after the reply is written
            return TOO_MANY_UNKNOWN
        return UNKNOWN_MAILBOX

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = _peer(session)
        raw = envelope.original_content or b""
        mailboxes = list(getattr(envelope, "mailgate_mailboxes", []))
        self.in_flight += 1
        self.idle.clear()
        try:
            result = await self.inbound.receive(
                mail_from=envelope.mail_from or "", mailboxes=mailboxes, raw=raw, client_ip=peer,
                helo=session.host_name or "", tls=session.ssl is not None,
            )
        except StoreError as exc:  # the store's own failure (full, locked, I/O): the sender retries later
            log.error("smtp peer=%s: could not store a message: %s; answered 451", peer, exc,
                      extra={"event": "smtp.store_unavailable", "peer": peer})
            return TEMPORARY_FAILURE
        except Exception:
            log.exception("smtp peer=%s: could not store a message; answered 451", peer, extra={"event": "smtp.store_failed", "peer": peer})
            return TEMPORARY_FAILURE
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
        boxes = ",".join(m.local_part for m in mailboxes)
        if result.queued is not None:  # durably queued: parsed, authenticated and stored right after this reply
            sender, message_id = shown(envelope.mail_from or ""), shown(_message_id(raw) or "")
            log.info("smtp peer=%s from=<%s> mailboxes=%s message-id=%s size=%d queued=%s", peer, sender, boxes,
                     message_id, len(raw), result.queued,
                     extra={"event": "smtp.accepted", "peer": peer, "mailbox": boxes, "mail_from": sender,
                            "message_id": message_id, "size": len(raw), "queued": result.queued})
            return OK_DATA
        auth = result.auth
        summary = f"dkim={','.join(d.result for d in auth.dkim) or 'none'} spf={auth.spf.result} dmarc={auth.dmarc.result}" if auth else ""
        if result.rejected:
            log.info("smtp peer=%s rejected message: %s %s", peer, result.rejected, summary, extra={"event": "smtp.rejected", "peer": peer})
            return DMARC_REJECT
        if not result.stored and not result.duplicates:
            log.info("smtp peer=%s mailboxes=%s refused message: the mailboxes' sessions were deleted after RCPT", peer,
                     shown(boxes), extra={"event": "smtp.mailbox_gone", "peer": peer, "mailbox": boxes})
            return MAILBOX_GONE
        sender, message_id = shown(envelope.mail_from or ""), shown(result.message_id or "")
        log.info("smtp peer=%s from=<%s> mailboxes=%s message-id=%s size=%d stored=%s duplicates=%d %s", peer, sender,
                 boxes, message_id, len(raw), ",".join(result.stored), result.duplicates, summary,
                 extra={"event": "smtp.accepted", "peer": peer, "mailbox": boxes, "mail_from": sender,
                        "message_id": message_id, "size": len(raw), "emails": list(result.stored)})
        return OK_DATA if result.stored else OK_DUPLICATE

    async def handle_exception(self, error: Exception) -> str:
        # A StoreError at RCPT (the mailbox lookup) lands here too: 451, never 5xx, so the sender retries.
        log.error("smtp session error: %r; answered 451", error, extra={"event": "smtp.error"})
        return TEMPORARY_FAILURE


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# <local@domain> with a dot-atom local part and a host-name domain, nothing else: what nearly every
# MAIL FROM and RCPT TO carries.
_PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*")


class MailgateSMTP(SMTP):
    def __init__(self, handler: Handler, limits: ClientLimits, *, max_line_length: int, timing: Timing,
                 max_junk_commands: int, **kwargs: Any) -> None:
        self.line_length_limit = max_line_length  # read by SMTP.__init__ for the stream's limit
        self._limits = limits
        self._timing = timing
        self._max_junk = max_junk_commands
        self._junk = 0
        self._phase = Phase.COMMAND
        self._started = self._last_command = self._data_started = self._last_read = 0.0
        self._received = 0
        self._timed_out = False
        self._refused = False
        self._counted: str | None = None  # the client address counted in `limits` while connected
        super().__init__(handler, timeout=timing.timeout, **kwargs)
        self._started = self.loop.time()
        for name in _JUNK_COMMANDS:
            method = self._smtp_methods.get(name)
            if method is not None:
                self._smtp_methods[name] = functools.partial(self._junk_command, name, method)

    # -- connection caps: decided before aiosmtpd starts a session, so that a refusal costs little ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.transport is None:  # a new connection, not TLS after STARTTLS
            ip = _ip(transport.get_extra_info("peername"))
            refusal = self._limits.enter(ip)
            if refusal is not None:
                self._refused = True
                log.info("smtp peer=%s refused: %s (%d open, %d from this address)", ip, refusal.value,
                         self._limits.open, self._limits.counts.get(ip, 0), extra={"event": "smtp.connection_limit", "peer": ip})
                reply = TOO_MANY_CONNECTIONS if refusal is Refusal.PER_CLIENT else SERVER_BUSY
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(reply.encode() + b"\r\n")  # a socket takes this much at once
                transport.close()  # the file is closed in the next loop iteration
                return
            self._counted = ip
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # no session was started
        if self._counted is not None:
            self._limits.leave(self._counted)
            self._counted = None
        super().connection_lost(error)

    @property
    def _peer_ip(self) -> str:
        return _peer(self.session) if self.session is not None else "?"

    def _mailboxes(self) -> str:
        return shown(",".join(dict.fromkeys(self.envelope.rcpt_tos))) if self.envelope is not None else ""

    def _close(self) -> None:
        """Close the connection after what was written; aiosmtpd's command loop ends at once."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()

    async def push(self, status: Any) -> None:
        if self.transport is None:
            return  # closed by mailgate (a refusal, a timeout, the client's end of stream)
        if isinstance(status, str):
            reason = _AIOSMTPD_REFUSALS.get(status)
            if reason is not None:
                log.info("smtp peer=%s refused: %s", self._peer_ip, reason, extra={"event": "smtp.refused", "peer": self._peer_ip})
            status = _REWRITE.get(status, status)
            metrics.SMTP_REPLIES.labels(status[:3]).inc()
        await super().push(status)

    # -- timeouts (RFC 5321 section 4.5.3.2): one timer, re-armed lazily ---------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd calls this when a connection starts and after each valid command."""
        self._phase = Phase.COMMAND
        self._last_command = self.loop.time()
        self._arm()

    def _deadline(self) -> tuple[float, str]:
        if self._phase is Phase.DATA:
            return self._timing.data_deadline(data_started=self._data_started, last_read=self._last_read,
                                              received=self._received)
        return self._timing.command_deadline(started=self._started, last_command=self._last_command)

    def _arm(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_at(self._deadline()[0], self._timeout_cb)

    def _timeout_cb(self) -> None:
        if self.transport is None or self._phase is Phase.PROCESSING:
            return
        when, reason = self._deadline()
        if when > self.loop.time() + 0.01:  # reads since the timer was armed moved the deadline
            self._timeout_handle = self.loop.call_at(when, self._timeout_cb)
            return
        log.info("smtp peer=%s mailboxes=%s closed while %s: %s", self._peer_ip, self._mailboxes(),
                 self._phase.value, reason, extra={"event": "smtp.timeout", "peer": self._peer_ip, "mailbox": self._mailboxes()})
        self._timed_out = True
        self._writer.write(TIMED_OUT.encode() + b"\r\n")
        self._close()

    def data_received(self, data: bytes) -> None:
        if self._phase is Phase.DATA:  # each read within DATA restarts its wait
            self._received += len(data)
            self._last_read = self.loop.time()
        super().data_received(data)

    # -- the end of the client's stream, TLS -------------------------------------------------

    def eof_received(self) -> bool | None:
        if self.session is not None and self.session.ssl is not None:
            return super().eof_received()  # TLS has no half-close
        # aiosmtpd 1.4.6 stops the session here, dropping the commands still in the buffer. A
        # client that writes its whole session and then closes its side (`nc`) gets every command
        # answered instead: the command loop ends when it reads the end (handle_exception).
        return asyncio.StreamReaderProtocol.eof_received(self)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.IncompleteReadError):
            self._close()  # the client's end of stream, every command before it answered
            return ""
        if isinstance(error, TLSSetupException):
            # aiosmtpd closes the connection after this and sends nothing
            cause = error.__cause__ or error
            log.info("smtp peer=%s: TLS handshake failed: %s; connection closed", self._peer_ip,
                     shown(str(cause) or type(cause).__name__), extra={"event": "smtp.tls_failed", "peer": self._peer_ip})
            return ""
        status: str = await super().handle_exception(error)
        return status

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            # RFC 3207 section 4.2: no second STARTTLS; aiosmtpd 1.4.6 answered 220 and then broke down
            log.info("smtp peer=%s refused: STARTTLS within TLS", self._peer_ip, extra={"event": "smtp.refused", "peer": self._peer_ip})
            await self.push(TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    async def _junk_command(self, name: str, method: Callable[[str], Awaitable[None]], arg: str) -> None:
        self._junk += 1
        if self._junk > self._max_junk:
            log.info("smtp peer=%s refused: more than %d %s commands without a message; closing", self._peer_ip,
                     self._max_junk, "/".join(_JUNK_COMMANDS), extra={"event": "smtp.refused", "peer": self._peer_ip})
            await self.push(TOO_MANY_JUNK_COMMANDS)
            self._close()
            return
        await method(arg)

    # -- addresses and DATA -----------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a shortcut for a plain ``<local@domain>``.

        aiosmtpd 1.4.6 makes a class and runs the ``email`` header tokenizer for every MAIL FROM and
        RCPT TO; a plain path reads the same without them (a test compares both on many paths). The
        rest of the line (the ESMTP parameters) comes back as aiosmtpd returns it: after the path and
        the blanks that follow it. Anything else (quoted local parts, domain literals, comments,
        blanks before the path) goes to aiosmtpd's parser. Where that parser breaks down (on an
        unclosed domain literal or a bare ``a@`` the ``email`` tokenizer raises AttributeError,
        IndexError or UnboundLocalError), the path is malformed: aiosmtpd then answers
        ``553 5.1.3``, not the ``451`` of an internal failure.
        """
        match = _PLAIN_PATH.match(arg)
        if match is None or arg[match.end():match.end() + 1] == "(":
            try:
                return super()._getaddr(arg)
            except Exception:  # noqa: BLE001 -- the tokenizer's own bugs: unreadable, so malformed
                return None, None
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[match.end():]

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's ``smtp_DATA`` with the data read by `read_data` instead of line by line.

        Everything around the reading is aiosmtpd's: the state checks and their replies, 354,
        ``envelope.content`` / ``original_content`` (decoded when ``decode_data``), the DATA hook
        and the reset of the envelope. Only the deprecated ``process_message`` handler API is left
        out: mailgate's handler has ``handle_DATA``.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        now = self.loop.time()
        self._phase, self._data_started, self._last_read, self._received = Phase.DATA, now, now, 0
        self._arm()
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            original_content, error = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            if not self._timed_out:  # a timeout has logged its own line
                log.info("smtp peer=%s mailboxes=%s: connection lost during DATA after %d bytes", self._peer_ip,
                         self._mailboxes(), self._received, extra={"event": "smtp.dropped", "peer": self._peer_ip, "mailbox": self._mailboxes()})
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            log.info("smtp peer=%s mailboxes=%s: the client closed the connection during DATA after %d bytes",
                     self._peer_ip, self._mailboxes(), self._received, extra={"event": "smtp.dropped", "peer": self._peer_ip, "mailbox": self._mailboxes()})
            self._close()
            return
        if error is not None or original_content is None:
            log.info("smtp peer=%s mailboxes=%s refused message: %s", self._peer_ip, self._mailboxes(),
                     (error or DataError.TOO_MUCH).value, extra={"event": "smtp.refused", "peer": self._peer_ip, "mailbox": self._mailboxes()})
            self._set_post_data_state()
            self._reset_timeout()
            await self.push(LINE_TOO_LONG if error is DataError.TOO_LONG else MESSAGE_TOO_BIG)
            return
        content: str | bytearray = original_content
        if self._decode_data:
            if self.enable_SMTPUTF8:
                content = original_content.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    content = original_content.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        # aiosmtpd types these bytes: a bytearray reads the same, and a big message is not copied
        self.envelope.content = content  # type: ignore[assignment]
        self.envelope.original_content = original_content  # type: ignore[assignment]
        # Storing the message is mailgate's time, not the client's: no timer runs meanwhile.
        self._phase = Phase.PROCESSING
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            with metrics.SMTP_ACCEPT.time():
                status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        except asyncio.CancelledError:
            log.info("smtp peer=%s mailboxes=%s: connection lost while the message was being stored; no reply sent",
                     self._peer_ip, self._mailboxes(), extra={"event": "smtp.dropped", "peer": self._peer_ip, "mailbox": self._mailboxes()})
            raise
        # The message is queued (or refused): its buffer goes now, before the reply is written, not
        # when this coroutine ends, since the processor may be reading the queued copy already.
        del content, original_content
        self._set_post_data_state()
        reply = "250 OK" if status is MISSING else status
        if isinstance(reply, str) and reply.startswith("250"):
            self._junk = 0
        self._reset_timeout()
        await self.push(reply)

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*([^\r\n]{1,998})", re.IGNORECASE | re.MULTILINE)


def _message_id(raw: bytes | bytearray) -> str | None:
    """The Message-ID field of the header block, for the log line (the processor parses it properly)."""
    head = bytes(raw[: raw.find(b"\r\n\r\n") if b"\r\n\r\n" in raw[:65536] else 65536])
    match = _MESSAGE_ID.search(head)
    return match.group(1).decode("utf-8", "replace").strip() if match else None


def _peer(session: Session) -> str:
    return _ip(session.peer)


def _ip(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def server_hostname(config: SmtpConfig) -> str:
    return config.hostname or socket.getfqdn()


class SmtpServer:
    """The listening server; ``port`` is the bound port (useful with ``port = 0``)."""

    def __init__(self, inbound: Inbound, config: SmtpConfig) -> None:
        self.config = config
        self.handler = Handler(inbound, config)
        self.limits = ClientLimits(config.max_connections_per_client, config.max_connections)
        self.timing = Timing(config.timeout, config.min_data_rate, config.max_session_age)
        self.hostname = server_hostname(config)
        self._tls = tls_context(config)
        self._server: asyncio.Server | None = None
        self.port = 0

    def _protocol(self) -> MailgateSMTP:
        return MailgateSMTP(
            self.handler, self.limits, max_line_length=self.config.max_line_length, timing=self.timing,
            max_junk_commands=self.config.max_junk_commands, data_size_limit=self.config.max_message_size, enable_SMTPUTF8=True, decode_data=False,
            hostname=self.hostname, ident="mailgate", tls_context=self._tls, require_starttls=False,
            loop=asyncio.get_running_loop(),
        )

    def reload_tls(self) -> None:
        """Read the certificate and key again; the next STARTTLS handshake presents them."""
        context = tls_context(self.config)
        if context is None:
            return
        self._tls = context
        log.info("smtp: reloaded the TLS certificate %s", self.config.tls_cert, extra={"event": "smtp.tls_reloaded"})

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files == resource.RLIM_INFINITY:
            open_files = 1 << 20
        self.limits.total = connection_cap(self.config.max_connections, open_files)
        if self.limits.total < self.config.max_connections:
            log.warning("smtp: at most %d connections, not [smtp] max_connections = %d: the open-files limit is %d "
                        "(raise LimitNOFILE= in the systemd unit)", self.limits.total, self.config.max_connections,
                        open_files, extra={"event": "smtp.connection_cap"})
        self._server = await loop.create_server(self._protocol, self.config.host, self.config.port,
                                                backlog=ACCEPT_BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smtp listening on %s:%d (STARTTLS %s), at most %d connections, %d per client address",
                 self.config.host, self.port, "offered" if self._tls else "off", self.limits.total,
                 self.limits.per_client, extra={"event": "smtp.listening"})

    async def stop(self, grace: float) -> None:
        """Stop accepting; let messages being stored finish (no 250 is sent for unstored mail)."""
        if self._server is None:
            return
        self._server.close()
        try:
            await asyncio.wait_for(self.handler.idle.wait(), grace)
        except TimeoutError:
            log.warning("stopped with %d messages still being stored (not acknowledged)", self.handler.in_flight,
                        extra={"event": "smtp.stopped_in_flight"})
        self._server = None
