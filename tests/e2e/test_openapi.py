"""The OpenAPI document validates, and schemathesis finds no 5xx against the real daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.conftest import INTERVIEWS, mailgate_cmd, subprocess_env

pytestmark = pytest.mark.e2e
KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("openapi")
    config = tmp / "mailgate.toml"
    config.write_text("\n".join([
        "[store]", f'path = "{tmp / "mailgate.sqlite3"}"',
        "[interviews]", 'modules = ["mailgate.demo.background", "mailgate.demo.email"]',
        f'paths = ["{INTERVIEWS / "testing.py"}"]',
        "[daemon]", 'roles = ["web", "worker"]',
        "[web]", "port = 0", f'api_key = "{KEY}"',
        "[sessions]", "lock_timeout = 1.0",
        "[tasks]", "poll_interval = 0.05", "timeout = 2.0",
    ]) + "\n")
    log = tmp / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(mailgate_cmd("serve"), env=subprocess_env(config), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            found = re.search(r"web listening on 127\.0\.0\.1:(\d+)", log.read_text())
            if found:
                port = int(found.group(1))
            elif time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"daemon did not start:\n{log.read_text()}")
            else:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        assert proc.poll() is None, "the daemon died during the run"
    finally:
        proc.terminate()
        proc.wait(20)
        text = log.read_text()
        # actions raising is the interview's business (logged as warnings); mailgate itself must not fail
        assert "ERROR mailgate" not in text, text[-3000:]


def test_openapi_document_validates(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/api/openapi.json", timeout=10) as r:
        doc = json.load(r)
    validate(doc)
    assert {"/api/sessions", "/api/sessions/{id}/actions/{action}", "/api/tasks/{id}"} <= set(doc["paths"])
    assert "testing" in doc["paths"]["/api/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["interview"]["enum"]


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(base_url: str) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is part of the test extra: pip install -e '.[test]'"
    res = subprocess.run(
        [st, "run", f"{base_url}/api/openapi.json", "-H", f"Authorization: Bearer {KEY}",
         "--checks", "not_a_server_error", "--max-examples", "25", "--phases", "coverage,fuzzing,stateful",
         "--seed", "1", "--workers", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
    assert re.search(r"(\d+) generated, \1 passed", res.stdout), res.stdout[-2000:]
