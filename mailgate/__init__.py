"""mailgate: inbound mail, background actions, check-in/push and scheduled tasks for interviews.

Interview authors import everything they need from here::

    from mailgate import Interview, background_action, background_response, action_argument
"""

from __future__ import annotations

from mailgate.author.functions import (
    action_argument,
    action_arguments,
    background_action,
    background_error_action,
    background_response,
    background_response_action,
    command,
    current_datetime,
    get_emails,
    get_emails_async,
    interview_email,
    interview_url_action,
    json_response,
    last_access_days,
    last_access_time,
    response,
    session_id,
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
from mailgate.core.context import User
from mailgate.core.daemail import DAEmail
from mailgate.core.interviews import Interview
from mailgate.core.tasks import Task, TaskResult
from mailgate.errors import MailgateError
from mailgate.outbound.message import OutboundError

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
    "command",
    "current_datetime",
    "get_emails",
    "get_emails_async",
    "interview_email",
    "interview_url_action",
    "json_response",
    "last_access_days",
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
]
