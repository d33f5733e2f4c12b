"""The Daemon's lifecycle: watched background tasks, stop, restart on the same store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailgate.daemon.lifecycle import Daemon
from tests.helpers import make_config

pytestmark = pytest.mark.asyncio


async def test_a_dying_background_task_stops_the_daemon_with_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Daemon(make_config(tmp_path), roles=("worker",)) as daemon:
        async def broken() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("side task broke")

        daemon.spawn("broken", broken())
        code = await asyncio.wait_for(daemon.run_until_stopped(), 10)
    assert code == 1 and daemon.failed == "broken"
    assert "background task 'broken' stopped unexpectedly" in caplog.text


async def test_requested_stop_is_clean(tmp_path: Path) -> None:
    async with Daemon(make_config(tmp_path), roles=("worker",)) as daemon:
        asyncio.get_running_loop().call_soon(daemon.request_stop)
        assert await asyncio.wait_for(daemon.run_until_stopped(), 10) == 0
    assert daemon.failed is None


async def test_smtp_port_zero_is_reported(tmp_path: Path) -> None:
    async with Daemon(make_config(tmp_path, smtp={"port": 0}), roles=("smtp",)) as daemon:
        assert daemon.smtp is not None and daemon.smtp.port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.smtp.port)
        banner = await asyncio.wait_for(reader.readline(), 10)
        assert banner.startswith(b"220 ") and b"mailgate" in banner
        writer.close()
        await writer.wait_closed()
