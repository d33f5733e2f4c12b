"""The built wheel alone: installed in a fresh virtual environment outside the source tree,
``mailgate demo`` started from an empty folder, and a demo page run in Chromium through the client
that the wheel installed (``/static/mailgate.js`` from ``<venv>/share/mailgate/web``).

Nothing of the checkout is on the path: no ``PYTHONPATH``, no editable install, the working
directory empty, no configuration file (the listeners on port 0 through ``MAILGATE_<TABLE>_<KEY>``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# through test_browser, which skips (or, under CI, fails) first when Chromium or Playwright is missing
from tests.e2e.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    add_to_553,
    expect,
    open_demo,
    sync_playwright,
)
from tests.helpers import ROOT, kill_process, stop_process, wait_for_log

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_installed_wheel_serves_a_working_demo_from_an_empty_folder(tmp_path: Path) -> None:
    dist, venv, empty = tmp_path / "dist", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("mailgate-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILGATE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(MAILGATE_WEB_PORT="0", MAILGATE_SMTP_PORT="0")
    where = subprocess.run([str(venv / "bin/python"), "-c", "import mailgate; print(mailgate.__file__)"],
                           cwd=empty, env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout

    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(venv / "bin/mailgate"), "demo"], cwd=empty, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        port = int(wait_for_log(proc, log, r"web listening on [\d.]+:(\d+)", 60, "the web port").group(1))
        # the demo's store (with its WAL files), in the empty folder
        assert {p.name for p in empty.iterdir()} <= {"mailgate.sqlite3", "mailgate.sqlite3-wal", "mailgate.sqlite3-shm"}
        assert (empty / "mailgate.sqlite3").is_file()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            scripts: list[str] = []
            page.on("response", lambda r: scripts.append(f"{r.status} {r.url}") if r.url.endswith(".js") else None)
            page.goto("/demo/")
            expect(page.locator("#demo-background_action_flash a")).to_have_attribute("href", "/demo/background_action_flash")
            open_demo(page, "background_action_flash")
            add_to_553(page, "2")
            expect(page.locator("#mailgate-flash")).to_contain_text("The answer is 555.")
            assert f"200 http://127.0.0.1:{port}/static/mailgate.js" in scripts
            assert errors == []
            browser.close()
        assert stop_process(proc, 20) == 0, log.read_text()
    finally:
        kill_process(proc)
        print(log.read_text())
