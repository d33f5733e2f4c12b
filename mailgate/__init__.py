"""mailgate: inbound mail, background actions, check-in/push and scheduled tasks for interviews.

Interview authors import everything they need from here::

    from mailgate import Interview, background_action, background_response, action_argument
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as type checkers see them; at run time each loads on first use
    from mailgate.author.dates import (
        DADateTime,
        DateDifference,
        as_datetime,
        current_datetime,
        date_difference,
        date_interval,
        day_of,
        dow_of,
        format_date,
        format_datetime,
        format_time,
        get_default_timezone,
        last_access_days,
        last_access_delta,
        last_access_hours,
        last_access_minutes,
        last_access_time,
        month_of,
        today,
        year_of,
    )
    from mailgate.author.functions import (
        action_argument,
        action_arguments,
        background_action,
        background_error_action,
        background_response,
        background_response_action,
        command,
        create_session,
        create_session_async,
        get_emails,
        get_emails_async,
        get_session_variables,
        get_session_variables_async,
        interview_email,
        interview_url_action,
        json_response,
        response,
        retrieve_stashed_data,
        retrieve_stashed_data_async,
        session_id,
        set_session_variables,
        set_session_variables_async,
        stash_data,
        stash_data_async,
        user_has_privilege,
        user_info,
        user_logged_in,
    )
    from mailgate.author.sending import (
        mark_task_as_performed,
        record_messages,
        send_email,
        send_email_async,
        set_task_counter,
        task_not_yet_performed,
        task_performed,
        times_task_performed,
    )
    from mailgate.author.templates import Template
    from mailgate.author.text import comma_and_list
    from mailgate.core.context import User
    from mailgate.core.daemail import DAEmail
    from mailgate.core.interviews import Interview
    from mailgate.core.tasks import Task, TaskResult
    from mailgate.errors import MailgateError
    from mailgate.outbound.message import OutboundError

# Loaded on first use (PEP 562), so that ``import mailgate.errors`` (or any one module) does not load
# the whole package with its mail and template libraries.
_LAZY = {
    "action_argument": "mailgate.author.functions",
    "action_arguments": "mailgate.author.functions",
    "background_action": "mailgate.author.functions",
    "background_error_action": "mailgate.author.functions",
    "background_response": "mailgate.author.functions",
    "background_response_action": "mailgate.author.functions",
    "command": "mailgate.author.functions",
    "get_emails": "mailgate.author.functions",
    "get_emails_async": "mailgate.author.functions",
    "interview_email": "mailgate.author.functions",
    "interview_url_action": "mailgate.author.functions",
    "json_response": "mailgate.author.functions",
    "response": "mailgate.author.functions",
    "session_id": "mailgate.author.functions",
    "user_has_privilege": "mailgate.author.functions",
    "user_info": "mailgate.author.functions",
    "user_logged_in": "mailgate.author.functions",
    "mark_task_as_performed": "mailgate.author.sending",
    "record_messages": "mailgate.author.sending",
    "send_email": "mailgate.author.sending",
    "send_email_async": "mailgate.author.sending",
    "set_task_counter": "mailgate.author.sending",
    "task_not_yet_performed": "mailgate.author.sending",
    "task_performed": "mailgate.author.sending",
    "times_task_performed": "mailgate.author.sending",
    "DADateTime": "mailgate.author.dates",
    "DateDifference": "mailgate.author.dates",
    "as_datetime": "mailgate.author.dates",
    "current_datetime": "mailgate.author.dates",
    "date_difference": "mailgate.author.dates",
    "format_date": "mailgate.author.dates",
    "format_datetime": "mailgate.author.dates",
    "format_time": "mailgate.author.dates",
    "get_default_timezone": "mailgate.author.dates",
    "today": "mailgate.author.dates",
    "date_interval": "mailgate.author.dates",
    "day_of": "mailgate.author.dates",
    "dow_of": "mailgate.author.dates",
    "month_of": "mailgate.author.dates",
    "year_of": "mailgate.author.dates",
    "last_access_days": "mailgate.author.dates",
    "last_access_delta": "mailgate.author.dates",
    "last_access_hours": "mailgate.author.dates",
    "last_access_minutes": "mailgate.author.dates",
    "last_access_time": "mailgate.author.dates",
    "Template": "mailgate.author.templates",
    "comma_and_list": "mailgate.author.text",
    "User": "mailgate.core.context",
    "DAEmail": "mailgate.core.daemail",
    "Interview": "mailgate.core.interviews",
    "Task": "mailgate.core.tasks",
    "TaskResult": "mailgate.core.tasks",
    "MailgateError": "mailgate.errors",
    "OutboundError": "mailgate.outbound.message",
}
_LAZY.update(dict.fromkeys((  # the cross-session functions
    "create_session",
    "create_session_async",
    "get_session_variables",
    "get_session_variables_async",
    "set_session_variables",
    "set_session_variables_async",
    "stash_data",
    "stash_data_async",
    "retrieve_stashed_data",
    "retrieve_stashed_data_async",
), "mailgate.author.functions"))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mailgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "DAEmail",
    "Interview",
    "MailgateError",
    "OutboundError",
    "Task",
    "TaskResult",
    "Template",
    "User",
    "action_argument",
    "action_arguments",
    "background_action",
    "background_error_action",
    "background_response",
    "background_response_action",
    "comma_and_list",
    "command",
    "current_datetime",
    "get_emails",
    "get_emails_async",
    "interview_email",
    "interview_url_action",
    "json_response",
    "last_access_days",
    "last_access_delta",
    "last_access_hours",
    "last_access_minutes",
    "last_access_time",
    "mark_task_as_performed",
    "record_messages",
    "send_email",
    "send_email_async",
    "set_task_counter",
    "task_not_yet_performed",
    "task_performed",
    "times_task_performed",
    "response",
    "session_id",
    "user_has_privilege",
    "user_info",
    "user_logged_in",
    # docassemble's date functions
    "DADateTime",
    "DateDifference",
    "as_datetime",
    "date_difference",
    "format_date",
    "format_datetime",
    "format_time",
    "get_default_timezone",
    "today",
    "date_interval",
    "day_of",
    "dow_of",
    "month_of",
    "year_of",
]
__all__ += [  # the cross-session functions
    "retrieve_stashed_data",
    "retrieve_stashed_data_async",
    "stash_data",
    "stash_data_async",
    "create_session",
    "create_session_async",
    "get_session_variables",
    "get_session_variables_async",
    "set_session_variables",
    "set_session_variables_async",
]
