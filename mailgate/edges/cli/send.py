"""``mailgate send-test-email TO``: send one message through the configured relay and print its reply.

For operators checking ``[outbound]``: it uses the relay, TLS, AUTH and DKIM exactly as the daemon
does, and needs neither the store nor a running daemon.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
from typing import Any, Protocol

from mailgate.edges.cli.output import fail, print_json
from mailgate.outbound.message import Message, OutboundError
from mailgate.outbound.transport import Outbound, OutboundConfig, RelayTransport, SendResult


class _HasOutbound(Protocol):
    @property
    def outbound(self) -> OutboundConfig: ...


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``send-test-email`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("send-test-email", parents=[common], help="send a test message through the configured relay")
    p.add_argument("to", metavar="TO", help="recipient address")
    p.add_argument("--sender", "--from", dest="sender", help="From address (default: [outbound] default_sender)")
    p.add_argument("--subject", help="subject (default: 'mailgate test message from HOST')")


async def cmd_send_test_email(args: argparse.Namespace, config: _HasOutbound) -> int:
    """Send one test message; print the relay's reply (exit 0) or why it was not accepted (exit 1)."""
    cfg = config.outbound
    transport = RelayTransport(cfg)
    outbound = Outbound(cfg, transport)
    outbound.check()  # a DKIM key or CA file that cannot be used is a config error (exit 2)
    if cfg.suppress:
        return _fail(args, "[outbound] suppress = true: nothing leaves this host, so the relay was not tried")
    if not cfg.relay_host:
        return _fail(args, "no relay is configured; set [outbound] relay_host")
    sender = args.sender or cfg.default_sender
    if not sender:
        raise OutboundError("no sender: give --sender ADDRESS or set [outbound] default_sender")
    host = socket.gethostname()
    now = dt.datetime.now(dt.UTC)
    message = outbound.prepare(Message(
        to=[args.to], sender=sender, subject=args.subject or f"mailgate test message from {host}",
        body=f"This is a test message sent by `mailgate send-test-email` on {host} at {now:%Y-%m-%d %H:%M:%S} UTC.\n"
             "If you can read it, the relay accepted mail from mailgate.\n",
        date=now,
    ))
    (result,) = await transport.send([message])
    if not result.accepted:
        return _fail(args, result.error or "the relay did not accept the message", result)
    data = _result_dict(transport, result)
    if args.json:
        print_json(data)
    else:
        print(f"accepted by {transport.relay}: {result.code} {result.reply}".rstrip())
        for addr, why in result.refused.items():
            print(f"refused {addr}: {why}")
    return 0


def _result_dict(transport: RelayTransport, result: SendResult) -> dict[str, Any]:
    return {
        "ok": result.accepted,
        "relay": transport.relay,
        "tls": transport.config.tls,
        "dkim": bool(transport.config.dkim_domain),
        "from": result.message.sender,
        "to": result.message.to,
        "message_id": result.message.message_id,
        "code": result.code,
        "reply": result.reply,
        "refused": result.refused,
        "error": result.error,
    }


def _fail(args: argparse.Namespace, error: str, result: SendResult | None = None) -> int:
    details = {} if result is None else {"code": result.code, "message_id": result.message.message_id}
    return fail(args.json, error, **details)
