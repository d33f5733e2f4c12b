from __future__ import annotations

import json
import logging

from mailgate.daemon.logs import JsonFormatter


def test_json_lines_carry_the_event_field_and_no_time_under_journald() -> None:
    record = logging.makeLogRecord({"name": "mailgate.edges.smtp.server", "levelname": "INFO", "levelno": 20,
                                    "msg": "smtp peer=%s accepted", "args": ("1.2.3.4",), "event": "smtp.accepted"})
    data = json.loads(JsonFormatter(with_time=False).format(record))
    assert data == {"level": "info", "logger": "mailgate.edges.smtp.server", "message": "smtp peer=1.2.3.4 accepted",
                    "event": "smtp.accepted"}
    assert "time" in json.loads(JsonFormatter(with_time=True).format(record))
