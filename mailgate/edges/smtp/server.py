"""The SMTP edge: an aiosmtpd server in the daemon's loop. Every reply code lives in this module.

The handler implements only the hooks it needs (RCPT, DATA, exceptions) and turns the core's
verdicts (:mod:`mailgate.core.inbound`) into replies. A small SMTP subclass adds what aiosmtpd has no
hook for: a per-client connection cap, enhanced status codes on aiosmtpd's own size replies, a
line length that real mail needs, and a DATA reader that reads blocks instead of lines
(:mod:`mailgate.edges.smtp.data`, same rules as aiosmtpd 1.4.6's, a fraction of its CPU).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mailgate.config import SmtpConfig
from mailgate.core.inbound import Inbound, Verdict
from mailgate.edges.smtp.data import DataError, read_data
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


class ClientLimits:
    """Concurrent connections per client address."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.counts: dict[str, int] = {}
        self.open = 0

    def enter(self, ip: str) -> bool:
        if self.counts.get(ip, 0) >= self.per_client:
            return False
        self.counts[ip] = self.counts.get(ip, 0) + 1
        self.open += 1
        return True

    def leave(self, ip: str) -> None:
        self.open -= 1
        left = self.counts.get(ip, 1) - 1
        if left <= 0:
            self.counts.pop(ip, None)
        else:
            self.counts[ip] = left


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
            return TOO_MANY_RECIPIENTS
        verdict, mailbox = await self.inbound.check_recipient(address)
        if verdict is Verdict.OK and mailbox is not None:
            envelope.rcpt_tos.append(address)
            accepted = getattr(envelope, "mailgate_mailboxes", [])
            accepted.append(mailbox)
            envelope.mailgate_mailboxes = accepted  # type: ignore[attr-defined]
            return OK_RCPT
        self.inbound.count_rejection(verdict.name.lower())
        log.info("smtp peer=%s rcpt=%s rejected: %s", peer, address, verdict.value, extra={"event": "smtp.rcpt_rejected"})
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
                mail_from=envelope.mail_from or "", mailboxes=mailboxes, raw=bytes(raw), client_ip=peer,
                helo=session.host_name or "", tls=session.ssl is not None,
            )
        except StoreError as exc:  # the store's own failure (full, locked, I/O): the sender retries later
            log.error("smtp peer=%s: could not store a message: %s; answered 451", peer, exc,
                      extra={"event": "smtp.store_unavailable"})
            return TEMPORARY_FAILURE
        except Exception:
            log.exception("smtp peer=%s: could not store a message; answered 451", peer, extra={"event": "smtp.store_failed"})
            return TEMPORARY_FAILURE
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
        boxes = ",".join(m.local_part for m in mailboxes)
        if result.queued is not None:  # durably queued: parsed, authenticated and stored right after this reply
            log.info("smtp peer=%s mailboxes=%s size=%d queued=%s", peer, boxes, len(raw), result.queued,
                     extra={"event": "smtp.accepted"})
            return OK_DATA
        auth = result.auth
        summary = f"dkim={','.join(d.result for d in auth.dkim) or 'none'} spf={auth.spf.result} dmarc={auth.dmarc.result}" if auth else ""
        if result.rejected:
            log.info("smtp peer=%s rejected message: %s %s", peer, result.rejected, summary, extra={"event": "smtp.rejected"})
            return DMARC_REJECT
        if not result.stored and not result.duplicates:
            log.info("smtp peer=%s mailboxes=%s refused message: the mailboxes' sessions were deleted after RCPT", peer,
                     boxes, extra={"event": "smtp.mailbox_gone"})
            return MAILBOX_GONE
        log.info("smtp peer=%s mailboxes=%s size=%d stored=%s duplicates=%d %s", peer, boxes, len(raw),
                 ",".join(result.stored), result.duplicates, summary, extra={"event": "smtp.accepted"})
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
    def __init__(self, handler: Handler, limits: ClientLimits, *, max_line_length: int, **kwargs: Any) -> None:
        self.line_length_limit = max_line_length  # read by SMTP.__init__ for the stream's limit
        self._limits = limits
        super().__init__(handler, **kwargs)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REWRITE.get(status, status)
        await super().push(status)

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
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            original_content, error = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            log.info("smtp: connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # the client closed the connection within DATA
            self._writer.close()
            return
        if error is not None or original_content is None:
            await self.push(LINE_TOO_LONG if error is DataError.TOO_LONG else MESSAGE_TOO_BIG)
            self._set_post_data_state()
            return
        content: str | bytes = original_content
        if self._decode_data:
            if self.enable_SMTPUTF8:
                content = original_content.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    content = original_content.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        self.envelope.content = content
        self.envelope.original_content = original_content
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _handle_client(self) -> None:
        ip = _peer(self.session) if self.session is not None else "?"
        if not self._limits.enter(ip):
            log.info("smtp peer=%s refused: connection limit", ip, extra={"event": "smtp.connection_limit"})
            await self.push(TOO_MANY_CONNECTIONS)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await super()._handle_client()
        finally:
            self._limits.leave(ip)


def _peer(session: Session) -> str:
    peer = session.peer
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
        self.limits = ClientLimits(config.max_connections_per_client)
        self.hostname = server_hostname(config)
        self._tls = tls_context(config)
        self._server: asyncio.Server | None = None
        self.port = 0

    def _protocol(self) -> MailgateSMTP:
        return MailgateSMTP(
            self.handler, self.limits, max_line_length=self.config.max_line_length,
            data_size_limit=self.config.max_message_size, enable_SMTPUTF8=True, decode_data=False,
            hostname=self.hostname, ident="mailgate", tls_context=self._tls, require_starttls=False,
            timeout=self.config.timeout, loop=asyncio.get_running_loop(),
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
        self._server = await loop.create_server(self._protocol, self.config.host, self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smtp listening on %s:%d (STARTTLS %s)", self.config.host, self.port,
                 "offered" if self._tls else "off", extra={"event": "smtp.listening"})

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
