"""The interview author's outbound-mail functions: ``send_email`` and docassemble's task counters.

``send_email`` works in every action context. A sync handler blocks its own worker thread while the
daemon's event loop talks to the relay; an ``async def`` handler uses ``await send_email_async()``.
It returns True only when the relay accepted the message, and only then marks ``task`` performed.

The task counters live in the answers (``answers["_internal"]["tasks"][name]``), so they are saved
with them in the locked contexts (foreground, check-in, callback, cron). In a background action the
answers are a throwaway copy: marking a task there is not saved, as in docassemble. To remember
that a background action sent its mail, end it with ``background_response_action()`` and mark the
task in that callback, which runs on the live answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from mailgate.author.templates import Template
from mailgate.core.bridge import refuse_on_loop, run_on_loop
from mailgate.core.context import ActionContext, current
from mailgate.errors import ActionError
from mailgate.outbound.message import (
    AddressesInput,
    AddressInput,
    Message,
    format_address,
    normalize_addresses,
    to_attachment,
)
from mailgate.outbound.transport import MessageRecorder, Outbound

log = logging.getLogger(__name__)


def send_email(
    to: AddressesInput, subject: str | None = None, body: str | None = None, html: str | None = None,
    template: Template | None = None, attachments: Any = None, sender: AddressInput | None = None,
    cc: AddressesInput = None, bcc: AddressesInput = None, reply_to: AddressesInput = None, task: str | None = None,
) -> bool:
    """Send one e-mail through the configured relay; True only if the relay accepted it.

    ``to``, ``cc``, ``bcc`` and ``reply_to`` take ``'a@b'``, ``('Name', 'a@b')``, a User or a list of
    them; ``sender`` defaults to ``[outbound] default_sender``. ``template`` (a :class:`Template`)
    supplies the subject, text and HTML that are not given explicitly, rendered with the session's
    answers. ``attachments`` is one item or a list: a path, ``(filename, content_type, data)``, an
    :class:`~mailgate.outbound.message.Attachment` or a received e-mail's attachment. If the message is
    accepted and ``task`` is given, the task is marked performed (see the module docstring).

    Raises an OutboundError for a message that must not be sent (a line break in a subject or an
    address, no recipient, no sender, an unreadable attachment). A relay that refuses the message or
    cannot be reached is not an exception: the result is False and the log says why. In an
    ``async def`` handler use ``await send_email_async(...)``.
    """
    ctx = current("send_email")
    refuse_on_loop(ctx.loop, "send_email()", "await send_email_async(...)")
    outbound = _outbound(ctx)
    message = outbound.prepare(_message(ctx, to, subject, body, html, template, attachments, sender, cc, bcc, reply_to))
    if ctx.send_hook is not None:  # inside an automation step: journaled by (step, call index)
        return _accepted(ctx, bool(ctx.send_hook(message)), task)
    try:
        # send_one ends by its deadline; this only guards a stopped loop
        result = run_on_loop(ctx.loop, outbound.send_one(message), outbound.deadline + 5)
    except concurrent.futures.TimeoutError:
        log.error("outbound message %s: no answer from the event loop in %g s; not sent", message.message_id,
                  outbound.deadline + 5, extra={"event": "outbound.failed"})
        return False
    return _accepted(ctx, result.accepted, task)


async def send_email_async(
    to: AddressesInput, subject: str | None = None, body: str | None = None, html: str | None = None,
    template: Template | None = None, attachments: Any = None, sender: AddressInput | None = None,
    cc: AddressesInput = None, bcc: AddressesInput = None, reply_to: AddressesInput = None, task: str | None = None,
) -> bool:
    """``send_email()`` for ``async def`` handlers."""
    ctx = current("send_email_async")
    outbound = _outbound(ctx)
    if attachments is not None:  # reading files (or a received e-mail's raw bytes) must not block the loop
        message = await asyncio.to_thread(_message, ctx, to, subject, body, html, template, attachments, sender, cc, bcc, reply_to)
    else:
        message = _message(ctx, to, subject, body, html, template, None, sender, cc, bcc, reply_to)
    if ctx.send_hook_async is not None:  # inside an async automation step: journaled by (step, call index)
        return _accepted(ctx, bool(await ctx.send_hook_async(outbound.prepare(message))), task)
    result = await outbound.send_one(message)
    return _accepted(ctx, result.accepted, task)


def record_messages() -> MessageRecorder:
    """Record instead of send, for tests: ``with record_messages() as outbox:`` (or ``async with``).

    While the block runs, every message that any action of this process sends is appended to
    ``outbox`` (a list of :class:`~mailgate.outbound.message.Message`) and nothing goes to the relay; each
    counts as accepted, so ``send_email`` returns True and marks its task.
    """
    return MessageRecorder()


def _outbound(ctx: ActionContext) -> Outbound:
    outbound: Outbound = ctx.runtime.outbound
    return outbound


def _message(ctx: ActionContext, to: AddressesInput, subject: str | None, body: str | None, html: str | None,
             template: Template | None, attachments: Any, sender: AddressInput | None, cc: AddressesInput,
             bcc: AddressesInput, reply_to: AddressesInput) -> Message:
    if template is not None:
        if not callable(getattr(template, "render", None)):
            raise ActionError(f"template= must be a mailgate Template, not {type(template).__name__}")
        t_subject, t_text, t_html = template.render(ctx.answers)
        subject = t_subject if subject is None else subject
        if body is None and html is None:
            body, html = t_text, t_html
    items = [] if attachments is None else attachments if isinstance(attachments, list) else [attachments]
    return Message(
        to=normalize_addresses(to, "to"), cc=normalize_addresses(cc, "cc"), bcc=normalize_addresses(bcc, "bcc"),
        reply_to=normalize_addresses(reply_to, "reply_to"), sender=format_address(sender, "sender") if sender else None,
        subject=subject or "", body=body, html=html, attachments=[to_attachment(a) for a in items],
    )


def _accepted(ctx: ActionContext, accepted: bool, task: str | None) -> bool:
    if accepted and task is not None:
        _mark(ctx, task)
    return accepted


# -- docassemble's task counters -------------------------------------------------------------------------
def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ActionError(f"a task name must be a non-empty string, not {name!r}")
    return name


def _read(ctx: ActionContext) -> dict[str, Any]:
    internal = ctx.answers.get("_internal")
    tasks = internal.get("tasks") if isinstance(internal, dict) else None
    return tasks if isinstance(tasks, dict) else {}


def _write(ctx: ActionContext) -> dict[str, Any]:
    internal = ctx.answers.setdefault("_internal", {})
    if not isinstance(internal, dict):
        raise ActionError("answers['_internal'] is mailgate's bookkeeping and must stay a dict")
    tasks = internal.setdefault("tasks", {})
    if not isinstance(tasks, dict):
        raise ActionError("answers['_internal']['tasks'] is mailgate's task counters and must stay a dict")
    return tasks


def _mark(ctx: ActionContext, name: str) -> int:
    tasks = _write(ctx)
    tasks[_check_name(name)] = int(tasks.get(name, 0)) + 1
    return int(tasks[name])


def task_performed(name: str) -> bool:
    """True if the task was marked performed at least once in this session."""
    return times_task_performed(name) > 0


def task_not_yet_performed(name: str) -> bool:
    """True if the task was never marked performed in this session."""
    return times_task_performed(name) == 0


def mark_task_as_performed(name: str) -> int:
    """Count the task as performed once more; returns the new count. Not saved in a background action."""
    return _mark(current("mark_task_as_performed"), name)


def times_task_performed(name: str) -> int:
    """How many times the task was marked performed (0 if never)."""
    return int(_read(current("times_task_performed")).get(_check_name(name), 0))


def set_task_counter(name: str, times: int) -> None:
    """Set the task's counter (0 makes it "not yet performed" again)."""
    if isinstance(times, bool) or not isinstance(times, int) or times < 0:
        raise ActionError(f"set_task_counter({name!r}, {times!r}): the counter must be an integer >= 0")
    _write(current("set_task_counter"))[_check_name(name)] = times

