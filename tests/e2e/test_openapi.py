"""The OpenAPI document validates, and schemathesis with all its checks finds nothing against the real daemon."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.helpers import INTERVIEWS, start_mailgate, stop_process, subprocess_env, wait_for_log

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
    proc = start_mailgate("serve", env=subprocess_env(config), log=log)
    try:
        port = int(wait_for_log(proc, log, r"web listening on 127\.0\.0\.1:(\d+)", 30, "the web port").group(1))
        yield f"http://127.0.0.1:{port}"
        assert proc.poll() is None, "the daemon died during the run"
    finally:
        assert stop_process(proc, 20) != -signal.SIGKILL, "the daemon did not stop within 20 s of SIGTERM"
        text = log.read_text()
        # actions raising is the interview's business (logged as warnings); mailgate itself must not fail,
        # and no request, however malformed, is an error in the log (aiohttp's own included)
        errors = [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]
        assert not errors, "\n".join(errors[:20])


def document_request(base_url: str) -> urllib.request.Request:
    """The OpenAPI document is an operator path: it wants the API key."""
    return urllib.request.Request(f"{base_url}/api/openapi.json", headers={"Authorization": f"Bearer {KEY}"})


def test_openapi_document_validates(base_url: str) -> None:
    with urllib.request.urlopen(document_request(base_url), timeout=10) as r:
        doc = json.load(r)
    validate(doc)
    assert {"/api/sessions", "/api/sessions/{id}/actions/{action}", "/api/tasks/{id}"} <= set(doc["paths"])
    assert "testing" in doc["paths"]["/api/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["interview"]["enum"]


def test_the_document_lists_each_interviews_actions(base_url: str) -> None:
    with urllib.request.urlopen(document_request(base_url), timeout=10) as r:
        doc = json.load(r)
    interviews = doc["x-mailgate-interviews"]
    assert "noop" in interviews["testing"]["actions"] and "noop" not in interviews["email-to-case"]["actions"]
    assert set(interviews) == set(doc["paths"]["/api/sessions"]["post"]["requestBody"]["content"]["application/json"]
                                  ["schema"]["properties"]["interview"]["enum"])


@pytest.mark.slow
def test_schemathesis_with_all_checks_finds_nothing(base_url: str) -> None:
    """Every check (schema conformance both ways, status codes, headers, Allow, stateful links...):
    about 1,300 cases in 15-25 s; tests/e2e/schemathesis.toml says why two operations may answer 422."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is part of the test extra: pip install -e '.[test]'"
    res = subprocess.run(
        [st, "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
         f"{base_url}/api/openapi.json", "-H", f"Authorization: Bearer {KEY}", "--checks", "all",
         "--max-examples", "50", "--phases", "examples,coverage,fuzzing,stateful", "--seed", "1", "--workers", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-2000:]
    found = re.search(r"(\d+) generated, \1 passed", res.stdout)
    assert found and int(found.group(1)) > 500, res.stdout[-2000:]
