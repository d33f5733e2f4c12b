"""The real daemon as a subprocess, driven by the real CLI, on a real SQLite file."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.store.migrations import numbered
from tests.helpers import (
    INTERVIEWS,
    kill_process,
    mailgate_cmd,
    start_mailgate,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.e2e
SQLITE_SCHEMA = max(n for n, _, _ in numbered("mailgate.store.sqlite"))  # the latest migration (numbers may have gaps)
SQLITE_MIGRATIONS = len(numbered("mailgate.store.sqlite"))  # how many a fresh store applies


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
        self.cli("db", "migrate")  # the commands open an existing store only

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


# -- what an operator meets around the daemon (issue 16) ---------------------------------------

def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = env if env is not None else subprocess_env(Path(os.devnull))
    if env.get("MAILGATE_CONFIG") == os.devnull:
        env["MAILGATE_CONFIG"] = ""  # no config: the defaults, in the working directory
    return subprocess.run(mailgate_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("command", [("tasks", "list"), ("sessions", "list"), ("mailboxes", "list"), ("cron", "status")])
def test_a_command_on_a_missing_store_fails_and_creates_nothing(tmp_path: Path, command: tuple[str, ...]) -> None:
    res = run_cli(*command, cwd=tmp_path)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith(f"mailgate: error: no SQLite store at {tmp_path / 'mailgate.sqlite3'} ")
    assert "mailgate db migrate" in res.stderr and len(res.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_db_migrate_creates_the_store_next_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "work").mkdir()
    config = tmp_path / "etc" / "mailgate.toml"
    config.write_text('[store]\npath = "mailgate.sqlite3"\n')
    env = subprocess_env(config)
    assert run_cli("db", "migrate", cwd=tmp_path / "work", env=env).returncode == 0
    assert (tmp_path / "etc" / "mailgate.sqlite3").exists() and list((tmp_path / "work").iterdir()) == []
    res = run_cli("tasks", "list", cwd=tmp_path / "work", env=env)
    assert res.returncode == 0 and res.stdout == "(none)\n"


def test_version_and_json_before_or_after_the_command(env: Env) -> None:
    res = env.cli("--version")
    assert res.stdout.startswith("mailgate ") and res.stdout.split()[1][0].isdigit()
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    for args in (("--json", "sessions", "list"), ("sessions", "--json", "list"), ("sessions", "list", "--json")):
        assert [s["id"] for s in json.loads(env.cli(*args).stdout)] == [sid], args


def test_errors_under_json_are_json(env: Env) -> None:
    res = env.cli("--json", "tasks", "show", "nope", check=False)
    assert res.returncode == 1 and res.stderr == ""
    out = json.loads(res.stdout)
    assert out["ok"] is False and "no task 'nope'" in out["error"]
    res = env.cli("tasks", "lst", "--json", check=False)  # a usage error
    assert res.returncode == 2 and json.loads(res.stdout)["ok"] is False and "invalid choice" in res.stdout
    bad = env.tmp_path / "bad.toml"
    bad.write_text("[smtp]\nport = 99999\n[web]\nport = -1\n")
    res = env.cli("--json", "--config", str(bad), "tasks", "list", check=False)
    assert res.returncode == 2 and len(json.loads(res.stdout)["errors"]) == 2


def test_a_reader_that_goes_away_ends_the_command_quietly(env: Env) -> None:
    for _ in range(3):
        env.cli("sessions", "new", "testing")
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    try:
        res = subprocess.run(mailgate_cmd("sessions", "list"), stdout=write, stderr=subprocess.PIPE, text=True,
                             env=env.env, timeout=60)
    finally:
        os.close(write)
    assert res.stderr == "" and res.returncode == 128 + signal.SIGPIPE


def test_start_up_failures_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {
            "port in use": (f"[smtp]\nport = {port}\n", f"[smtp] cannot listen on 127.0.0.1:{port}: the port is in use"),
            "address not here": ('[smtp]\nport = 0\nhost = "192.0.2.55"\n', "192.0.2.55 is not an address of this host"),
            "web address not here": ('[web]\nport = 0\nhost = "192.0.2.55"\n', "[web] cannot listen on 192.0.2.55:0"),
            "missing TLS key": (f'[smtp]\nport = 0\ntls_cert = "{tmp_path / "c.pem"}"\ntls_key = "{tmp_path / "k.pem"}"\n',
                                f"[smtp] tls_cert = '{tmp_path / 'c.pem'}': cannot read it: No such file or directory"),
        }
        for name, (table, message) in cases.items():
            config = tmp_path / f"{name.replace(' ', '-')}.toml"
            config.write_text(f'[store]\npath = "{tmp_path / "mailgate.sqlite3"}"\n[daemon]\nroles = ["smtp", "web"]\n'
                              '[web]\nport = 0\n' * ("[web]" not in table) + table)
            res = run_cli("serve", cwd=tmp_path, env=subprocess_env(config))
            errors = [line for line in res.stderr.splitlines() if line.startswith("mailgate: ")]
            assert res.returncode in (1, 2) and "Traceback" not in res.stderr, (name, res.stderr)
            assert len(errors) == 1 and message in errors[0], (name, res.stderr)


def test_check_config_reports_every_error_at_once(tmp_path: Path) -> None:
    key = tmp_path / "dkim.key"
    key.write_text("not a key")
    key.chmod(0o644)
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[store]\npath = "absent/mailgate.sqlite3"\n'
                      f'[smtp]\nport = 99999\ntls_cert = "{tmp_path / "c.pem"}"\ntls_key = "{tmp_path / "k.pem"}"\n'
                      '[web]\nhost = "192.0.2.55"\n'
                      f'[outbound]\ndkim_domain = "example.org"\ndkim_selector = "s1"\ndkim_key_file = "{key}"\n')
    res = run_cli("check-config", str(config), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for message in ["[smtp] port = 99999 is above the maximum 65535", f"tls_cert = '{tmp_path / 'c.pem'}': cannot read it",
                    "[web] cannot listen on 192.0.2.55", f"the folder {tmp_path / 'absent'} does not exist",
                    "dkim_key_file", "readable by every user (mode 0644)", "6 error(s)"]:
        assert message in res.stderr, (message, res.stderr)
    out = json.loads(run_cli("check-config", "--json", str(config), cwd=tmp_path).stdout)
    assert out["ok"] is False and len(out["errors"]) == 6


def test_config_show_masks_secrets_and_says_where_each_value_came_from(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('[tasks]\nworkers = 3\n[web]\napi_key = "from-the-file"\n')
    env = dict(subprocess_env(config), MAILGATE_SMTP_PORT="2600", MAILGATE_OUTBOUND_PASSWORD="from-the-env")
    res = run_cli("config", "show", cwd=tmp_path, env=env)
    assert res.returncode == 0 and "from-the-" not in res.stdout
    lines = {line.split("#")[0].strip(): line.split("#")[1].strip() for line in res.stdout.splitlines() if " = " in line}
    assert lines["workers = 3"] == f"file {config}"
    assert lines["port = 2600"] == "env MAILGATE_SMTP_PORT"
    assert lines['api_key = "********"'] == f"file {config}"
    assert lines['password = "********"'] == "env MAILGATE_OUTBOUND_PASSWORD"
    assert lines['secret_key = ""'] == "default"
    shown = json.loads(run_cli("config", "show", "--json", cwd=tmp_path, env=env).stdout)
    assert shown["tables"]["smtp"]["port"] == {"value": 2600, "from": "env MAILGATE_SMTP_PORT"}
    res = run_cli("config", "show", cwd=tmp_path, env=dict(env, MAILGATE_SMTP_PORT="many"))
    assert res.returncode == 2 and "MAILGATE_SMTP_PORT = 'many' is not a valid int" in res.stderr


# -- operations: cancel, purge, retry --all-failed, backup, restore, db status, status -------------------
def _task_of(env: Env, sid: str, task: str, **kwargs: Any) -> str:
    run = env.cli_json("sessions", "run", sid, "start", "--arg", f"task={task}", "--arg", f"kwargs={json.dumps(kwargs)}")
    return str(run["tasks"][0])


def test_tasks_cancel_purge_and_retry_all_failed(env: Env) -> None:
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    queued = _task_of(env, sid, "noop")
    cancelled = env.cli_json("tasks", "cancel", queued)
    assert (cancelled["state"], cancelled["error_type"]) == ("failed", "Cancelled")
    res = env.cli("tasks", "cancel", queued, check=False)
    assert res.returncode == 1 and res.stderr == f"mailgate: error: task {queued} is failed; only queued and running tasks can be cancelled\n"
    sleeper = _task_of(env, sid, "sleep_bg", seconds=6)
    daemon = env.serve()
    wait_for(lambda: env.cli_json("tasks", "show", sleeper)["state"] == "running", 20, "the worker to claim the sleeper")
    assert env.cli("tasks", "cancel", sleeper).stdout == f"task {sleeper} cancelled\n"
    # the worker finishes its sleep; its finish is refused, so the task stays cancelled with no value
    wait_for(lambda: f"task {sleeper} was cancelled while it ran (mailgate tasks cancel); its result was discarded" in env.log_of(daemon),
             20, "the worker's refused finish")
    shown = env.cli_json("tasks", "show", sleeper)
    assert (shown["state"], shown["error_type"], shown.get("value")) == ("failed", "Cancelled", None)

    failing = _task_of(env, sid, "fails")
    assert env.cli_json("tasks", "show", failing, "--wait", "20")["state"] == "failed"
    retried = env.cli_json("tasks", "retry", "--all-failed")  # not the cancelled ones: an operator stopped those
    assert retried["queued"] == [failing]
    assert env.cli_json("tasks", "show", failing, "--wait", "20")["attempts"] == 1
    assert env.cli_json("tasks", "show", queued)["error_type"] == "Cancelled"
    for task_id in (queued, sleeper):  # one by one, a cancelled task runs again
        assert env.cli_json("tasks", "retry", task_id)["state"] == "queued"
        assert env.cli_json("tasks", "show", task_id, "--wait", "20")["state"] == "succeeded"
    assert env.cli("tasks", "retry", "--all-failed").stdout == "queued 1 failed task(s) again\n"  # failing, failed again
    assert env.cli_json("tasks", "show", failing, "--wait", "20")["state"] == "failed"
    res = env.cli("tasks", "retry", check=False)
    assert res.returncode == 1 and "mailgate tasks retry --all-failed" in res.stderr

    assert env.cli_json("tasks", "purge", "--state", "succeeded", "--older-than", "1h")["deleted"] == 0
    assert env.cli("tasks", "purge", "--state", "succeeded").stdout == "deleted 2 succeeded task(s)\n"
    assert [t["id"] for t in env.cli_json("tasks", "list")] == [failing]
    res = env.cli("tasks", "purge", "--state", "running", check=False)
    assert res.returncode == 2 and "invalid choice: 'running'" in res.stderr
    res = env.cli("tasks", "purge", "--state", "failed", "--older-than", "soon", check=False)
    assert res.returncode == 2 and "'soon' is not a duration like 90s" in res.stderr
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0


def _stderr_on_a_terminal(env: Env, *args: str) -> bytes:
    """What the command writes to stderr when stderr is a terminal (a pseudo-terminal here)."""
    master, slave = pty.openpty()
    try:
        res = subprocess.run(mailgate_cmd(*args), stdout=subprocess.PIPE, stderr=slave, env=env.env, timeout=60)
        os.close(slave)
        assert res.returncode == 0, res
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(master)


def test_db_backup_while_the_daemon_writes_then_restore(env: Env) -> None:
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    daemon = env.serve()
    env.cli_json("sessions", "run", sid, "start_many", "--arg", "task=noop", "--arg", "n=200")  # the worker writes meanwhile
    backup = env.tmp_path / "backup.sqlite3"
    made = env.cli_json("db", "backup", str(backup))
    assert made["path"] == str(backup) and made["bytes"] == backup.stat().st_size > 0
    with sqlite3.connect(backup) as conn:  # a consistent, self-contained copy
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone() == (200,)
        assert conn.execute("SELECT id FROM sessions").fetchall() == [(sid,)]
    assert not (env.tmp_path / "backup.sqlite3-wal").exists()
    res = env.cli("db", "backup", str(backup), check=False)
    assert res.returncode == 1 and "exists; give a new file name" in res.stderr
    assert "backing up" not in env.cli("db", "backup", str(backup) + ".2").stderr  # piped: no bar
    assert b"backing up pages         [##############################] " in _stderr_on_a_terminal(env, "db", "backup", str(backup) + ".3")
    res = env.cli("db", "backup", str(env.tmp_path / "nope" / "b.sqlite3"), check=False)
    assert res.returncode == 1 and res.stderr.startswith(f"mailgate: error: cannot write the backup into {env.tmp_path / 'nope'}: ")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0

    env.cli("sessions", "delete", sid)
    res = env.cli("db", "restore", str(backup), check=False)
    assert res.returncode == 1 and "run again with --yes" in res.stderr
    assert env.cli_json("sessions", "list") == []
    restored = env.cli_json("db", "restore", str(backup), "--yes")
    assert restored["schema_version"] == SQLITE_SCHEMA
    assert [s["id"] for s in env.cli_json("sessions", "list")] == [sid]
    res = env.cli("db", "restore", str(env.config), "--yes", check=False)
    assert res.returncode == 1 and "is not a mailgate SQLite backup" in res.stderr
    assert [s["id"] for s in env.cli_json("sessions", "list")] == [sid]


def test_db_status_and_status_show_the_store_tasks_mail_and_cron(env: Env) -> None:
    sid = env.cli("sessions", "new", "testing").stdout.strip()
    _task_of(env, sid, "noop")
    _task_of(env, sid, "noop")
    db = env.cli_json("db", "status")
    assert db == {"backend": "sqlite", "location": str(env.db), "schema_version": SQLITE_SCHEMA, "latest_migration": SQLITE_SCHEMA,
                  "size_bytes": db["size_bytes"], "sessions": 1, "tasks": 2, "mailboxes": 0, "emails": 0}
    assert db["size_bytes"] >= env.db.stat().st_size > 0
    text = env.cli("db", "status").stdout
    assert f"schema_version  {SQLITE_SCHEMA} of {SQLITE_SCHEMA}\n" in text and "tasks           2\n" in text

    status = env.cli_json("status")
    assert status["tasks"]["queued"]["count"] == 2 and status["tasks"]["queued"]["oldest_age_seconds"] >= 0
    assert status["tasks"]["failed"] == {"count": 0, "oldest_age_seconds": None}
    assert status["sessions"] == 1 and status["mailboxes"]["count"] == 0 and status["mail"]["today"] == 0
    assert [c["type"] for c in status["cron"]] == ["cron_hourly", "cron_daily", "cron_weekly", "cron_monthly"]
    assert all(c["last_run"] is None and c["next_run"] for c in status["cron"])
    assert status["connections"]["gauges"] == {} and "no [web] listener" in status["connections"]["detail"]
    lines = env.cli("status").stdout.splitlines()
    assert lines[0].startswith(f"store        sqlite {env.db}, ") and lines[0].endswith(f"schema {SQLITE_SCHEMA} of {SQLITE_SCHEMA}")
    assert lines[1].startswith("tasks        queued 2 (oldest ") and lines[1].endswith("running 0   succeeded 0   failed 0")
    assert "mail         0 today (UTC), 0 stored" in lines
    assert len(lines) < 25  # one screen


def test_cron_run_counts_its_sessions_on_a_terminal(env: Env) -> None:
    for _ in range(3):
        sid = env.cli_json("sessions", "new", "testing")["id"]
        env.cli("sessions", "run", sid, "enable_cron")
    shown = _stderr_on_a_terminal(env, "cron", "run", "cron_hourly")
    assert b"running cron_hourly: 3 sessions, done" in shown, shown
    piped = env.cli("cron", "run", "cron_hourly")
    assert "running cron_hourly" not in piped.stderr and "cron_hourly: 3 sessions" in piped.stdout


def test_db_migrate_draws_its_progress_on_a_terminal(env: Env) -> None:
    env.env["MAILGATE_STORE_PATH"] = str(env.tmp_path / "fresh.sqlite3")  # a store with no schema yet
    shown = _stderr_on_a_terminal(env, "db", "migrate")
    assert f"] {SQLITE_MIGRATIONS}/{SQLITE_MIGRATIONS}".encode() in shown and b"migrating schema" in shown, shown
    assert "migrating" not in env.cli("db", "migrate").stderr  # piped: no bar (and nothing left to apply)
