"""Flask-Mail's names, for code ported with one changed import::

    from mailgate.flask_mail import Mail, Message  # was: from flask_mail import Mail, Message

The implementation is :mod:`mailgate.author.flask_mail`.
"""

from __future__ import annotations

from mailgate.author.flask_mail import (
    Attachment,
    BadHeaderError,
    Connection,
    Mail,
    Message,
    SendError,
    email_dispatched,
    signals,
)

__all__ = ["Attachment", "BadHeaderError", "Connection", "Mail", "Message", "SendError", "email_dispatched", "signals"]
