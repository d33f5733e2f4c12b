from __future__ import annotations

import json
import logging
import sys

from mailgate.daemon.logs import JsonFormatter, TextFormatter


def test_json_lines_carry_the_event_field_and_no_time_under_journald() -> None:
    record = logging.makeLogRecord({"name": "mailgate.edges.smtp.server", "levelname": "INFO", "levelno": 20,
                                    "msg": "smtp peer=%s accepted", "args": ("1.2.3.4",), "event": "smtp.accepted"})
    data = json.loads(JsonFormatter(with_time=False).format(record))
    assert data == {"level": "info", "logger": "mailgate.edges.smtp.server", "message": "smtp peer=1.2.3.4 accepted",
                    "event": "smtp.accepted"}
    assert "time" in json.loads(JsonFormatter(with_time=True).format(record))


def test_both_formats_escape_control_characters_from_clients_but_keep_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.makeLogRecord({"name": "mail.log", "levelname": "WARNING", "levelno": 30,
                                    "msg": "%r unrecognised: %s", "args": (("1.2.3.4", 25), "\x1b[2J\rFAKE\nINFO x"),
                                    "exc_info": exc_info})
    text = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    first, *traceback = text.split("\n")
    assert first == r"WARNING mail.log: ('1.2.3.4', 25) unrecognised: \x1b[2J\x0dFAKE\x0aINFO x"
    assert traceback[0] == "Traceback (most recent call last):" and traceback[-1] == "ValueError: boom"
    data = json.loads(JsonFormatter(with_time=False).format(record))
    assert data["message"] == r"('1.2.3.4', 25) unrecognised: \x1b[2J\x0dFAKE\x0aINFO x"
    assert "\x1b" not in JsonFormatter(with_time=False).format(record)
