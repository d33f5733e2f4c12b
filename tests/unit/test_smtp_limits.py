"""The SMTP edge's limits as arithmetic: the connection cap, the RFC 5321 timing rules, log text,
the accept-failure log, the open-files limit, and the aiosmtpd pin that the edge's subclass needs."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import resource
import subprocess
import sys
import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from mailgate.config import SmtpConfig
from mailgate.daemon.resources import ACCEPT_FAILED, AcceptFailureLog
from mailgate.edges.smtp.limits import ClientLimits, Refusal, Timing, connection_cap, shown
from tests.helpers import ROOT

KB = 1024
MB = 1024 * KB


def default_timing() -> Timing:
    config = SmtpConfig()
    return Timing(config.timeout, config.min_data_rate, config.max_session_age)


def slow_sender_is_cut(timing: Timing, size: int, rate: float, chunk: int = KB) -> float | None:
    """Send ``size`` bytes at ``rate`` bytes/s, ``chunk`` bytes per read: when the server cuts the
    sender off (seconds after DATA), or None if the whole message arrives in time."""
    received, now = 0, 0.0
    while received < size:
        arrival = now + chunk / rate
        deadline, _ = timing.data_deadline(data_started=0.0, last_read=now, received=received)
        if deadline < arrival:
            return deadline
        received, now = received + chunk, arrival
    return None


def test_one_megabyte_at_one_kilobyte_per_second_is_accepted_with_the_default_timeouts() -> None:
    timing = default_timing()
    assert slow_sender_is_cut(timing, 1 * MB, 1 * KB) is None  # 1024 s of DATA, never cut
    # and the budget is the rule's, not a loose bound: at half the minimum rate the sender is cut
    cut = slow_sender_is_cut(timing, 1 * MB, 0.5 * KB)
    assert cut is not None and cut == pytest.approx(2 * timing.timeout, abs=2)
    # a byte every 299 s keeps each read within `timeout`, and is cut after the second
    assert slow_sender_is_cut(timing, 100, 1 / 299, chunk=1) == pytest.approx(300 + 1 / 1024)
    # the largest message allowed at the minimum rate fits too
    assert slow_sender_is_cut(timing, SmtpConfig().max_message_size, 1 * KB, chunk=64 * KB) is None


def test_timing_reasons_and_the_session_age() -> None:
    timing = Timing(timeout=300, min_data_rate=1024, max_session_age=1800)
    assert timing.data_deadline(data_started=0, last_read=100, received=1000)[0] == 300 + 1000 / 1024
    when, why = timing.data_deadline(data_started=0, last_read=0, received=1 * MB)
    assert when == 300 and "no data for 300 s" in why
    when, why = timing.command_deadline(started=0, last_command=10)
    assert when == 310 and "no command for 300 s" in why
    when, why = timing.command_deadline(started=0, last_command=1700)
    assert when == 1800 and "older than 1800 s" in why


def test_the_connection_cap_stays_below_the_open_files_limit() -> None:
    assert connection_cap(1000, 65536) == 1000
    assert connection_cap(1000, 1024) == 768
    assert connection_cap(1000, 512) == 348  # one accept burst (100) and the daemon's own files stay free
    assert connection_cap(1000, 100) == 1
    limits = ClientLimits(per_client=2, total=3)
    assert [limits.enter("a"), limits.enter("a"), limits.enter("a")] == [None, None, Refusal.PER_CLIENT]
    assert [limits.enter("b"), limits.enter("c")] == [None, Refusal.GLOBAL]
    limits.leave("a")
    assert limits.enter("c") is None and limits.open == 3


def test_client_text_is_escaped_for_the_log() -> None:
    assert shown("a\x1b[31mb\rc\nd\\e\u202ef\udcff\x85") == r"a\x1b[31mb\x0dc\x0ad\\e\u202ef\udcff\x85"
    assert shown("ok@example.test") == "ok@example.test"
    assert len(shown("x" * 10_000)) == 259


def test_accept_failures_make_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    failures = AcceptFailureLog(interval=10, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    passed_on: list[str] = []
    loop.set_exception_handler(lambda _loop, context: passed_on.append(context["message"]))
    failures.install(loop)
    try:
        handler = loop.get_exception_handler()
        assert handler is not None
        emfile = OSError(errno.EMFILE, "Too many open files")
        with caplog.at_level(logging.WARNING, logger="mailgate.daemon.resources"):
            for i in range(3000):  # what asyncio reports in a few seconds with no file left
                now[0] = i / 1000
                handler(loop, {"message": ACCEPT_FAILED, "exception": emfile})
            now[0] = 10.5
            handler(loop, {"message": ACCEPT_FAILED, "exception": emfile})
            handler(loop, {"message": "something else"})
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, messages
        assert "Too many open files (1 failed" in messages[0] and "(3000 failed" in messages[1]
        assert passed_on == ["something else"]
    finally:
        failures.uninstall()
        assert loop.get_exception_handler() is not failures
        loop.close()


def test_the_daemon_raises_the_soft_open_files_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 64:
        pytest.skip(f"hard open-files limit {hard}")
    low = min(soft, hard // 2)
    code = "from mailgate.daemon.resources import raise_open_files_limit as r; import resource; " \
           "print(r(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(hard)] * 3


def test_aiosmtpd_is_pinned_below_the_next_minor_version() -> None:
    """server.py subclasses aiosmtpd 1.4's internals: a new minor version must pass the
    differential tests (test_smtp_data.py, test_smtp_getaddr.py) before the pin is raised."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [aiosmtpd] = [Requirement(d) for d in project["dependencies"] if re.match(r"aiosmtpd\b", d)]
    assert not aiosmtpd.specifier.contains("1.5.0") and aiosmtpd.specifier.contains("1.4.6")
    assert not aiosmtpd.specifier.contains("1.4.5")  # the SMTP smuggling fix
    assert aiosmtpd.specifier.contains(version("aiosmtpd"))
