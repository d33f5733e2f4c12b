"""The real daemon as a subprocess, driven by the real CLI, on a real SQLite file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    INTERVIEWS,
    kill_process,
    mailgate_cmd,
    start_mailgate,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, **tasks: Any) -> Path:
    tasks_table = {"workers": 8, "lease": 1.0, "poll_interval": 0.05, **tasks}
    lines = [
        "[store]", f'path = "{tmp_path / "mailgate.sqlite3"}"',
        "[interviews]", 'modules = ["mailgate.demo.background"]', f'paths = ["{INTERVIEWS / "testing.py"}"]',
        "[daemon]", 'roles = ["worker"]', "grace_period = 3",
        "[tasks]", *(f"{k} = {json.dumps(v)}" for k, v in tasks_table.items()),
    ]
    path = tmp_path / "mailgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Env:
    def __init__(self, tmp_path: Path, **tasks: Any) -> None:
        self.config = write_config(tmp_path, **tasks)
        self.env = subprocess_env(self.config)
        self.db = tmp_path / "mailgate.sqlite3"
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(mailgate_cmd(*args), capture_output=True, text=True, env=self.env, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"mailgate {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def serve(self) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"daemon-{len(self.procs)}.log"
        proc = start_mailgate("serve", env=self.env, log=log)
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[self.procs.index(proc)].read_text()

    def states(self) -> dict[str, int]:
        with sqlite3.connect(self.db, timeout=10) as conn:
            return dict(conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    for proc in e.procs:
        kill_process(proc)
    for log in e.logs:  # shown by pytest when the test failed
        print(f"--- {log.name} ---\n{log.read_text()}")


def test_cli_session_and_background_action_against_running_daemon(env: Env) -> None:
    daemon = env.serve()
    created = env.cli_json("sessions", "new", "background_action")
    sid = created["id"]
    assert created["interview"] == "background_action"
    run = env.cli_json("sessions", "run", sid, "start", "--arg", "value_to_add=2")
    assert run["saved"] is True and len(run["tasks"]) == 1
    task = env.cli_json("tasks", "show", run["tasks"][0], "--wait", "20")
    assert task["state"] == "succeeded" and task["value"] == 555
    assert env.cli("sessions", "run", sid, "screen").stdout.strip() == "The answer is 555."
    listed = env.cli_json("sessions", "list")
    assert [s["id"] for s in listed] == [sid]
    shown = env.cli_json("sessions", "show", sid)
    assert shown["answers"]["value_to_add"] == 2 and shown["tasks"] == run["tasks"]
    assert [t["id"] for t in env.cli_json("tasks", "list", "--session", sid)] == run["tasks"]
    table = env.cli("tasks", "list").stdout
    assert "SUCCEEDED" not in table and "succeeded" in table and table.startswith("ID")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert "garbage collector: new objects every 50000 allocations" in env.log_of(daemon)  # [daemon] gc_threshold
    env.cli("sessions", "delete", sid)
    assert env.cli_json("sessions", "list") == []


def test_cli_errors_are_one_line(env: Env) -> None:
    res = env.cli("sessions", "new", "nope", check=False)
    assert res.returncode == 1 and res.stderr.startswith("mailgate: error: no interview named 'nope'")
    assert "Traceback" not in res.stderr
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    res = env.cli("sessions", "run", sid, "nope", check=False)
    assert res.returncode == 1 and "interview 'testing' has no action 'nope'" in res.stderr
    res = env.cli("sessions", "run", sid, "unserialisable", check=False)
    assert res.returncode == 1 and "cannot be saved" in res.stderr and "Traceback" not in res.stderr
    res = env.cli("tasks", "show", "nope", check=False)
    assert res.returncode == 1 and "no task 'nope'" in res.stderr
    res = env.cli("sessions", "run", sid, "set", "--arg", "novalue", check=False)
    assert res.returncode == 1 and "must look like name=value" in res.stderr


def test_tasks_retry_from_cli(env: Env) -> None:
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    run = env.cli_json("sessions", "run", sid, "start", "--arg", "task=no_response")
    daemon = env.serve()
    task = env.cli_json("tasks", "show", run["tasks"][0], "--wait", "20")
    assert task["state"] == "failed" and task["error_type"] == "NoBackgroundResponse"
    assert env.cli_json("tasks", "retry", task["id"])["state"] == "queued"
    again = env.cli_json("tasks", "show", task["id"], "--wait", "20")
    assert again["state"] == "failed" and again["attempts"] == 1
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0


@pytest.mark.slow
def test_kill_9_with_200_tasks_then_restart_loses_nothing(env: Env) -> None:
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    env.cli("sessions", "run", sid, "start_many", "--arg", "task=sleep_bg", "--arg", "n=200",
            "--arg", 'kwargs={"seconds": 0.05}')
    assert env.states() == {"queued": 200}
    first = env.serve()
    wait_for(lambda: env.states().get("succeeded", 0) >= 20 and env.states().get("running", 0) > 0, 60,
             "some tasks finished and some running")
    first.kill()  # SIGKILL: no cleanup at all
    first.wait(10)
    before = env.states()
    assert before.get("running", 0) > 0 and before.get("succeeded", 0) < 200
    second = env.serve()
    wait_for(lambda: env.states() == {"succeeded": 200}, 120, "all 200 tasks to succeed after the restart")
    with sqlite3.connect(env.db) as conn:
        rows = conn.execute("SELECT result, attempts FROM tasks").fetchall()
    assert len(rows) == 200
    assert all(json.loads(r) == {"value": "slept"} for r, _ in rows)
    assert max(a for _, a in rows) == 2  # the ones killed mid-run ran once more, no more
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0


def test_sigterm_gives_unfinished_tasks_back(env: Env) -> None:
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    env.cli("sessions", "run", sid, "start_many", "--arg", "task=sleep_bg", "--arg", "n=8",
            "--arg", 'kwargs={"seconds": 30}')
    daemon = env.serve()
    wait_for(lambda: env.states().get("running", 0) == 8, 30, "8 running tasks")
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert time.monotonic() - started < 15  # grace period is 3 s
    assert env.states() == {"queued": 8}
    with sqlite3.connect(env.db) as conn:
        assert {a for (a,) in conn.execute("SELECT attempts FROM tasks")} == {0}
    assert "gave 8 unfinished tasks back to the queue" in env.log_of(daemon)
