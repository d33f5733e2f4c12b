"""The interview author's API, with docassemble's names and meaning.

Every function reads the action context that the runtime set for the running handler. Functions
that end a handler (``background_response*``, ``response``, ``json_response``, ``command``) raise
a control exception: nothing after them runs.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, NoReturn

from mailgate.core.bridge import refuse_on_loop, run_on_loop
from mailgate.core.commands import checkin_commands
from mailgate.core.context import (
    CURRENT,
    BackgroundResponseActionEnd,
    BackgroundResponseEnd,
    CommandEnd,
    ResponseEnd,
    User,
    current,
)
from mailgate.core.tasks import Task
from mailgate.errors import ActionError


def background_action(action: str, ui_notification: str | None = None, **kwargs: Any) -> Task:
    """Start ``action`` in the background; returns its Task at once.

    ``ui_notification`` is None, 'flash', 'refresh', 'javascript' or 'fields': what the session's
    browsers are sent when the task finishes. Keyword arguments reach the action through
    ``action_argument()``. The task is queued when the calling action ends (with its save).
    """
    ctx = current("background_action")
    return ctx.runtime.new_task(ctx, action, ui_notification, kwargs)


def background_response(*args: Any, **kwargs: Any) -> NoReturn:
    """End the action. In a background action: its value. In a check-in: commands for the browser."""
    ctx = current("background_response")
    if ctx.kind == "checkin":  # render templates now, while the answers are visible to them
        raise BackgroundResponseEnd(args, kwargs, checkin_commands(args, kwargs))
    if ctx.kind == "foreground":  # a command form ("refresh", (msg, "flash"), target=...) is pushed
        try:
            commands = checkin_commands(args, kwargs)
        except ActionError:
            commands = None  # a plain value: the action's result
        raise BackgroundResponseEnd(args, kwargs, commands or None)
    raise BackgroundResponseEnd(args, kwargs)


def background_response_action(action: str, **kwargs: Any) -> NoReturn:
    """End a background action by running ``action`` on the live answers (saved) with ``kwargs``."""
    ctx = current("background_response_action")
    if ctx.kind != "background":
        raise ActionError("background_response_action() can only be called from a background action")
    ctx.interview.callback_action(action, "background_response_action")
    raise BackgroundResponseActionEnd(action, kwargs)


def background_error_action(action: str, **kwargs: Any) -> None:
    """If this background action fails from here on, run ``action`` (saved) with the error added."""
    ctx = current("background_error_action")
    if ctx.kind != "background":
        raise ActionError("background_error_action() can only be called from a background action")
    ctx.interview.callback_action(action, "background_error_action")
    ctx.error_action = (action, kwargs)


def action_argument(name: str | None = None, default: Any = None) -> Any:
    """One argument of the running action (all of them, as a dict, when ``name`` is None)."""
    args = current("action_argument").arguments
    if name is None:
        return dict(args)
    return args.get(name, default)


def action_arguments() -> dict[str, Any]:
    """All arguments of the running action."""
    return dict(current("action_arguments").arguments)


def response(text: str | None = None, null: bool = False, **_: Any) -> NoReturn:
    """End a foreground action with ``text``; ``null=True`` ends it without saving the answers."""
    current("response")
    raise ResponseEnd(text, null)


def json_response(data: Any) -> NoReturn:
    """End a foreground action with ``data`` as its JSON result."""
    current("json_response")
    raise ResponseEnd(None, False, data=data, is_json=True)


def command(name: str) -> NoReturn:
    """End the action with ``'exit'`` (delete the session) or ``'leave'`` (keep it)."""
    current("command")
    if name not in ("exit", "leave"):
        raise ActionError(f"command({name!r}) is not supported; use 'exit' (delete the session) or 'leave'")
    raise CommandEnd(name)


def user_info() -> User:
    """The user the action runs as (``id``, ``email``, ``first_name``, ``last_name``, ``privileges``)."""
    return current("user_info").user


def user_logged_in() -> bool:
    return current("user_logged_in").user.logged_in


def user_has_privilege(privilege: str | list[str] | tuple[str, ...]) -> bool:
    """True if the user has the privilege (or any of a list of them)."""
    wanted = [privilege] if isinstance(privilege, str) else list(privilege)
    return any(p in current("user_has_privilege").user.privileges for p in wanted)


def interview_email(key: str | None = None, index: Any = None) -> str:
    """The session's e-mail address; the same key and index always give the same address.

    Mail to it is stored as DAEmail records and, if the interview defines it, starts the
    ``incoming_email`` background action. The mailbox exists once the calling action commits.
    """
    ctx = current("interview_email")
    return str(ctx.runtime.interview_email(ctx, key, index))


def get_emails(key: str | None = None, index: Any = None) -> list[Any]:
    """The session's mailboxes (``address``, ``key``, ``index``, ``emails``), e-mails oldest first.

    Blocking read: in an ``async def`` handler use ``await get_emails_async()``.
    """
    ctx = current("get_emails")
    refuse_on_loop(ctx.loop, "get_emails()", "await get_emails_async()")
    return list(run_on_loop(ctx.loop, ctx.runtime.get_mailboxes(ctx.session_id, key, index), 30))


async def get_emails_async(key: str | None = None, index: Any = None) -> list[Any]:
    """``get_emails()`` for async handlers."""
    ctx = current("get_emails_async")
    return list(await ctx.runtime.get_mailboxes(ctx.session_id, key, index))


def interview_url_action(action: str, **kwargs: Any) -> str:
    """A signed URL that runs ``action`` with ``kwargs`` on this session and returns its result.

    The URL expires after ``[web] url_action_ttl`` seconds; the action runs as the current user.
    """
    ctx = current("interview_url_action")
    return str(ctx.runtime.url_for_action(ctx, action, kwargs))


def current_datetime() -> dt.datetime:
    """Now, timezone-aware (UTC), from mailgate's clock (which tests can control).

    Authors get docassemble's ``current_datetime(timezone=None)`` (a DADateTime in the server's time
    zone) from ``mailgate``: it is ``mailgate.author.dates``'s, which reads this clock.
    """
    ctx = CURRENT.get()
    now = ctx.runtime.store_clock() if ctx is not None else time.time()
    return dt.datetime.fromtimestamp(now, dt.UTC)


def session_id() -> str:
    """The id of the session the action runs on."""
    return current("session_id").session_id


# -- cross-session functions (docassemble's "Interacting with sessions") ----------------------------
# ``yaml_filename`` is the interview's name (docassemble names an interview by its YAML file). The
# ``secret`` of docassemble is the key of answers encrypted at rest: mailgate does not encrypt them, so
# it is accepted and unused.


def _cross_session_timeout(ctx: Any) -> float:
    return float(ctx.runtime.config.sessions.lock_timeout) + 5  # waits for the other session's lease, bounded


def _not_this_session(ctx: Any, session_id: str, what: str) -> None:
    # The running action holds this session's lease (except a background action, which holds none):
    # taking it again would wait for itself.
    if session_id == ctx.session_id and ctx.kind != "background":
        raise ActionError(f"{what} on the session the action runs on: change `answers` instead")


def create_session(yaml_filename: str, secret: str | None = None, url_args: dict[str, Any] | None = None) -> str:
    """Start a new session of interview ``yaml_filename``; its id. ``url_args`` become its
    ``url_args`` variable. It is owned by the current user and exists on return.

    Blocking: in an ``async def`` handler use ``await create_session_async()``.
    """
    ctx = current("create_session")
    refuse_on_loop(ctx.loop, "create_session()", "await create_session_async()")
    return run_on_loop(ctx.loop, create_session_async(yaml_filename, secret, url_args), _cross_session_timeout(ctx))


async def create_session_async(yaml_filename: str, secret: str | None = None,
                               url_args: dict[str, Any] | None = None) -> str:
    """``create_session()`` for async handlers."""
    ctx = current("create_session_async")
    rec = await ctx.runtime.create_session_with(yaml_filename, None, ctx.user, url_args=url_args)
    return str(rec.id)


def set_session_variables(yaml_filename: str, session_id: str, variables: dict[str, Any], secret: str | None = None,
                          question_name: str | None = None, overwrite: bool = False, process_objects: bool = False,
                          delete: list[str] | None = None) -> None:
    """Set ``variables`` (a dict) in another session of interview ``yaml_filename``, and remove the
    names in ``delete``: saved at once, under that session's lease (waiting for it at most
    ``lock_timeout``), as the current user.

    ``question_name``, ``overwrite`` and ``process_objects`` concern docassemble's question blocks and
    object trees, which mailgate does not have: accepted and ignored. Blocking: in an ``async def``
    handler use ``await set_session_variables_async()``.
    """
    ctx = current("set_session_variables")
    refuse_on_loop(ctx.loop, "set_session_variables()", "await set_session_variables_async()")
    run_on_loop(ctx.loop, set_session_variables_async(yaml_filename, session_id, variables, secret, delete=delete),
                _cross_session_timeout(ctx))


async def set_session_variables_async(yaml_filename: str, session_id: str, variables: dict[str, Any],
                                      secret: str | None = None, *, delete: list[str] | None = None) -> None:
    """``set_session_variables()`` for async handlers."""
    ctx = current("set_session_variables_async")
    _not_this_session(ctx, session_id, "set_session_variables()")
    names = [delete] if isinstance(delete, str) else list(delete or ())
    # a locked action waits for the other session's lease only while its own budget lasts
    await ctx.runtime.set_session_variables(session_id, dict(variables), interview=yaml_filename, delete=names,
                                            user=ctx.user, deadline=ctx.deadline)


def _simplified(value: Any) -> Any:
    # docassemble's simplify: JSON-ready data. Dates and times become ISO 8601 text, sets and tuples
    # lists, a Task or DAEmail held by reference {"_class": ..., "id": ...}.
    if isinstance(value, dict):
        return {str(k): _simplified(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_simplified(v) for v in value]
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return {"_class": type(value).__name__, "id": str(getattr(value, "id", ""))}


def get_session_variables(yaml_filename: str, session_id: str, secret: str | None = None,
                          simplify: bool = True) -> dict[str, Any]:
    """The answers of session ``session_id`` of interview ``yaml_filename``, as last saved (mailgate's
    ``_internal`` left out). ``simplify`` (docassemble's default) makes them JSON-ready: dates as ISO
    8601 text, sets and tuples as lists, tasks and e-mails as ``{"_class", "id"}``; with
    ``simplify=False`` they are the values themselves (a Task can be waited on).

    Blocking: in an ``async def`` handler use ``await get_session_variables_async()``.
    """
    ctx = current("get_session_variables")
    refuse_on_loop(ctx.loop, "get_session_variables()", "await get_session_variables_async()")
    return run_on_loop(ctx.loop, get_session_variables_async(yaml_filename, session_id, secret, simplify),
                       _cross_session_timeout(ctx))


async def get_session_variables_async(yaml_filename: str, session_id: str, secret: str | None = None,
                                      simplify: bool = True) -> dict[str, Any]:
    """``get_session_variables()`` for async handlers."""
    ctx = current("get_session_variables_async")
    variables = dict(await ctx.runtime.get_session_variables(session_id, yaml_filename))
    return dict(_simplified(variables)) if simplify else variables


def stash_data(data: Any, expire: float | None = None) -> dict[str, str]:
    """Stash ``data`` (any value answers can hold) for ``expire`` seconds (default 90 days), sealed
    with a key of its own; ``{"stash_key": ..., "secret": ...}``, both needed to retrieve it.

    Blocking: in an ``async def`` handler use ``await stash_data_async()``.
    """
    ctx = current("stash_data")
    refuse_on_loop(ctx.loop, "stash_data()", "await stash_data_async()")
    return run_on_loop(ctx.loop, stash_data_async(data, expire), 30)


async def stash_data_async(data: Any, expire: float | None = None) -> dict[str, str]:
    """``stash_data()`` for async handlers."""
    ctx = current("stash_data_async")
    return dict(await ctx.runtime.stashes.stash(data, expire))


def retrieve_stashed_data(stash_key: str, secret: str, delete: bool = False, refresh: bool | float = False) -> Any:
    """The data stashed under ``stash_key`` and ``secret``, or None (unknown, wrong secret, expired).

    ``delete=True`` removes it once read; ``refresh=True`` renews its expiry by its original
    ``expire``, a number of seconds sets it that far from now. Blocking: in an ``async def`` handler
    use ``await retrieve_stashed_data_async()``.
    """
    ctx = current("retrieve_stashed_data")
    refuse_on_loop(ctx.loop, "retrieve_stashed_data()", "await retrieve_stashed_data_async()")
    return run_on_loop(ctx.loop, retrieve_stashed_data_async(stash_key, secret, delete, refresh), 30)


async def retrieve_stashed_data_async(stash_key: str, secret: str, delete: bool = False,
                                      refresh: bool | float = False) -> Any:
    """``retrieve_stashed_data()`` for async handlers."""
    ctx = current("retrieve_stashed_data_async")
    return await ctx.runtime.stashes.retrieve(stash_key, secret, delete, refresh)
