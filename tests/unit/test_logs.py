from __future__ import annotations

import ast
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from mailgate.daemon.logs import JsonFormatter, TextFormatter, setup_logging

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("debug", "info", "warning", "error", "exception", "critical")


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


def test_a_librarys_json_line_gets_its_loggers_name_as_event() -> None:
    record = logging.makeLogRecord({"name": "aiohttp.server", "levelname": "INFO", "levelno": 20, "msg": "x"})
    assert json.loads(JsonFormatter(with_time=False).format(record))["event"] == "aiohttp.server"


def test_every_log_call_of_mailgate_names_its_event() -> None:
    """``journalctl ... | grep EVENT`` and the JSON format's ``event`` field work for every line."""
    missing = []
    for path in sorted((ROOT / "mailgate").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger")):
                continue
            extra = next((k.value for k in node.keywords if k.arg == "extra"), None)
            if not (isinstance(extra, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "event" for k in extra.keys)):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_lines_carry_journald_priorities_when_stderr_is_the_journal(fmt: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = (tmp_path / "stderr").open("w+")
    try:
        st = os.fstat(out.fileno())
        monkeypatch.setattr(sys, "stderr", out)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("debug", fmt)
        log = logging.getLogger("mailgate.test")
        log.debug("d", extra={"event": "t.d"})
        log.info("i", extra={"event": "t.i"})
        log.warning("w", extra={"event": "t.w"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("e", extra={"event": "t.e"})
        log.critical("c", extra={"event": "t.c"})
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # another stream: no prefixes
        setup_logging("info", fmt)
        log.info("plain", extra={"event": "t.p"})
        out.flush()
        lines = (tmp_path / "stderr").read_text().splitlines()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        out.close()
    assert [line[:3] for line in lines[:3]] == ["<7>", "<6>", "<4>"]
    error_lines = lines[3:-2]
    assert all(line.startswith("<3>") for line in error_lines)  # a text traceback's lines too
    assert len(error_lines) > 1 if fmt == "text" else len(error_lines) == 1  # JSON keeps it in one line
    assert lines[-2].startswith("<2>") and not lines[-1].startswith("<")
    if fmt == "json":
        assert json.loads(lines[1][3:])["event"] == "t.i"
