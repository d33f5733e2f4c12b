"""``mailgate automations ...`` in process on a real SQLite file and on the real PostgreSQL server: every command, its ``--json``
shape, its errors; the runner's work done by ``automations step`` between commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.edges.cli.main import main
from tests.helpers import kill_process, start_mailgate, stop_process, subprocess_env, wait_for
from tests.pg import create_database, drop_database

INTERVIEWS = Path(__file__).parent.parent / "interviews"


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "mailgate.toml"
    store = f'path = "{tmp_path / "m.sqlite3"}"'
    dsn = create_database() if request.param == "postgres" else None
    if dsn is not None:
        store = f'backend = "postgres"\ndsn = "{dsn}"'
    path.write_text(f'[store]\n{store}\n[interviews]\npaths = ["{INTERVIEWS / "automated.py"}"]\n')
    try:
        assert main(["db", "migrate", "--config", str(path)]) == 0
        yield str(path)
    finally:
        if dsn is not None:
            drop_database(dsn)


def run(capsys: pytest.CaptureFixture[str], config: str, *argv: str, status: int = 0) -> Any:
    code = main(["automations", *argv, "--json", "--config", config])
    out = capsys.readouterr().out
    assert code == status, out
    return json.loads(out) if out else None


def text_of(capsys: pytest.CaptureFixture[str], config: str, *argv: str, status: int = 0) -> tuple[str, str]:
    assert main(["automations", *argv, "--config", config]) == status
    got = capsys.readouterr()
    return got.out, got.err


def step(config: str, capsys: pytest.CaptureFixture[str]) -> int:
    """``mailgate automations step``: the runner's one pass; how many runs it committed."""
    return int(run(capsys, config, "step")["runs"])


def test_classes_start_unique_list_show(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    classes = {c["name"]: c for c in run(capsys, config, "classes")}
    review = next(n for n in classes if n.endswith(".Review"))
    assert classes[review]["receivers"] == ["ping"] and classes["broken"]["receivers"] == []  # published only
    assert main(["sessions", "new", "automated", "--json", "--config", config]) == 0
    sid = json.loads(capsys.readouterr().out)["id"]

    first = run(capsys, config, "start", "Review", "--session", sid, "--data", '{"email": "a@example.org"}')
    assert first["created"] is True and first["class"] == review and first["session"] == sid and first["state"] == "running"
    again = run(capsys, config, "start", review, "--session", sid, "--data", '{"email": "a@example.org"}')
    assert (again["id"], again["created"]) == (first["id"], False)
    other = run(capsys, config, "start", "Review", "--data", '{"email": "b@example.org"}')
    assert other["id"] != first["id"] and other["session"] is None

    assert "no automation class named 'Nope'" in run(capsys, config, "start", "Nope", status=1)["error"]
    assert "JSON object" in run(capsys, config, "start", "Review", "--data", "[1]", status=1)["error"]
    assert "lacks 'email'" in run(capsys, config, "start", "Review", status=1)["error"]
    assert "no session" in run(capsys, config, "start", "Review", "--session", "nope", "--data", "{}", status=1)["error"]

    assert [a["id"] for a in run(capsys, config, "list", "--class", "Review")] == [first["id"], other["id"]]
    assert [a["id"] for a in run(capsys, config, "list", "--session", sid)] == [first["id"]]
    assert run(capsys, config, "list", "--state", "finished") == []
    shown = run(capsys, config, "show", first["id"])
    assert {k: shown[k] for k in ("id", "class", "state", "data", "steps")} == {
        "id": first["id"], "class": review, "state": "running", "data": {"email": "a@example.org"}, "steps": []}
    session = json.loads((main(["sessions", "show", sid, "--json", "--config", config]), capsys.readouterr().out)[1])
    assert session["automations"] == [{"id": first["id"], "class": review, "state": "running"}]


def test_form_task_submit_and_history(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    auto = run(capsys, config, "start", "Review", "--data", '{"email": "a@example.org"}')["id"]
    assert step(config, capsys) == 1
    assert run(capsys, config, "tasks", "--user", "bob") == []
    tasks = run(capsys, config, "tasks", "--user", "carol", "--privilege", "caseworker")
    assert [(t["automation"], t["node"], t["description"]) for t in tasks] == [(auto, "approve", "Approve the case")]
    assert tasks[0]["fields"][0]["name"] == "approved"
    sid = tasks[0]["step"]

    refused = run(capsys, config, "submit", sid, "--user", "bob", "--values", '{"approved": true}', status=1)
    assert "not assigned" in refused["error"]
    invalid = run(capsys, config, "submit", sid, "--user", "carol", "--privilege", "caseworker",
                  "--values", '{"approved": "yes"}', status=1)
    assert invalid["errors"] == {"approved": "true or false expected"}
    out, err = text_of(capsys, config, "submit", sid, "--user", "carol", "--privilege", "caseworker",
                    "--values", '{"note": 1}', status=1)
    assert err == "mailgate: error: approved: true or false expected\n"
    done = run(capsys, config, "submit", sid, "--user", "carol", "--privilege", "caseworker",
               "--values", '{"approved": true, "note": "fine"}')
    assert done["values"] == {"approved": True, "note": "fine"} and done["automation"]["state"] == "running"
    assert done["automation"]["data"]["approve"] == {"approved": True, "note": "fine"}
    assert done["automation"]["data"]["_approve_validated"]["user_id"] == "carol"
    again = run(capsys, config, "submit", sid, "--user", "carol", "--privilege", "caseworker",
                "--values", '{"approved": false}', status=1)
    assert "already submitted" in again["error"]

    assert step(config, capsys) == 1
    shown = run(capsys, config, "show", auto)
    assert shown["state"] == "finished" and shown["data"]["outcome"] == "approved"
    assert [(s["node"], s["state"], s["message"]) for s in shown["steps"]] == [
        ("approve", "done", "OK"), ("record", "done", "OK"), ("end", "done", "OK")]
    assert shown["steps"][0]["submitted_by"]["id"] == "carol"
    out, _ = text_of(capsys, config, "show", auto)
    assert [line.split() for line in out.splitlines()[:3]] == [["id", auto], ["class", shown["class"]], ["state", "finished"]]
    history = out[out.index("history:"):].splitlines()
    assert [line.split()[0:3] for line in history[1:4]] == [
        ["approve", "[done]", "OK"], ["record", "[done]", "OK"], ["end", "[done]", "OK"]]


def test_errors_traceback_retry_send_goto_kill_delete_history(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    broken = run(capsys, config, "start", "broken")["id"]
    review = run(capsys, config, "start", "Review", "--data", '{"email": "c@example.org"}')["id"]
    assert step(config, capsys) == 2
    errors = run(capsys, config, "errors")
    assert [(e["id"], [(s["node"], s["error_type"], s["error_message"]) for s in e["steps"]]) for e in errors] == [
        (broken, [("fail", "RuntimeError", "the parts are missing")])]
    failed_step = errors[0]["steps"][0]["id"]
    trace = run(capsys, config, "traceback", broken, failed_step)["traceback"]
    assert "RuntimeError: the parts are missing" in trace and "explode" in trace
    out, _ = text_of(capsys, config, "traceback", broken, failed_step)
    assert out.rstrip().endswith("RuntimeError: the parts are missing")
    assert "no step" in run(capsys, config, "traceback", broken, "nope", status=1)["error"]

    assert "has no receiver receive_ping" in run(capsys, config, "send", broken, "ping", status=1)["error"]
    assert run(capsys, config, "retry", review, status=1)["error"].endswith("only failed automations can be retried")
    assert run(capsys, config, "retry", broken)["state"] == "running"
    sent = run(capsys, config, "send", broken, "fix", "--data", "{}")
    assert sent["state"] == "queued"
    assert step(config, capsys) == 1
    shown = run(capsys, config, "show", broken)
    assert shown["state"] == "finished" and [m["state"] for m in shown["messages"]] == ["delivered"]
    assert [(s["node"], s["state"]) for s in shown["steps"]] == [("fail", "done"), ("done", "done")]

    waited = run(capsys, config, "send", review, "ping", "--token", "t1", "--wait", "0.2", status=1)
    assert waited["state"] == "queued"  # nobody ran it within 0.2 s: exit 1, the message stays queued
    assert step(config, capsys) == 1
    pings = [m for m in run(capsys, config, "show", review)["messages"] if m["message"] == "ping"]
    assert [(m["state"], m["result"]) for m in pings] == [("delivered", {"pings": 1, "token": "t1"})]
    assert "no node 'nowhere'" in run(capsys, config, "goto", review, "nowhere", status=1)["error"]
    assert run(capsys, config, "goto", review, "end")["state"] == "running"
    assert step(config, capsys) == 1
    steps = run(capsys, config, "show", review)["steps"]
    assert [(s["node"], s["state"], s["message"]) for s in steps] == [
        ("approve", "skipped", "goto end"), ("end", "done", "OK")]

    keep = run(capsys, config, "start", "Review", "--data", '{"email": "d@example.org"}')["id"]
    assert [a["orphaned"] for a in run(capsys, config, "list", "--state", "running")] == [None]
    path = Path(config)
    text = path.read_text()
    path.write_text(text.replace("automated.py", "testing.py"))  # the classes are gone from this process
    [row] = run(capsys, config, "list", "--state", "running")
    assert row["orphaned"] == f"class {row['class']} is not loaded"
    out, _ = text_of(capsys, config, "show", keep)
    assert f"is not loaded: restore it, or move it on with: mailgate automations goto {keep} NODE" in out
    out, _ = text_of(capsys, config, "list")
    assert f"{keep}  {row['class']}  orphaned" in out
    path.write_text(text)
    victim = run(capsys, config, "start", "Review", "--data", '{"email": "e@example.org"}')["id"]
    assert run(capsys, config, "kill", victim) == {"killed": victim}
    assert "no automation" in run(capsys, config, "show", victim, status=1)["error"]
    assert "no automation" in run(capsys, config, "kill", victim, status=1)["error"]

    assert run(capsys, config, "delete-history", "1") == {"total": 0, "automations": 0, "steps": 0}
    out, _ = text_of(capsys, config, "delete-history", "0")
    assert out == "6 total objects deleted, including 2 automations and 4 steps\n"
    assert [a["id"] for a in run(capsys, config, "list")] == [keep]
    assert "DAYS must be 0 or more" in run(capsys, config, "delete-history", "-1", status=1)["error"]


def test_step_loop_runs_what_another_process_starts_and_stops_on_sigterm(config: str, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "loop.log"
    proc = start_mailgate("automations", "step", "--loop", "--json", env=subprocess_env(Path(config)), log=log)
    try:
        auto = run(capsys, config, "start", "Review", "--data", '{"email": "loop@example.org"}')["id"]
        wait_for(lambda: run(capsys, config, "show", auto)["open"] == ["approve"], 30, "the loop's run of it")
        assert proc.poll() is None
        assert stop_process(proc, 20) == 0, log.read_text()
        assert json.loads(log.read_text())["runs"] >= 1
    finally:
        kill_process(proc)


def test_an_assignee_resolver_replaces_the_rule_and_a_broken_one_is_named(config: str, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(config)
    text = path.read_text()
    path.write_text(text + '[automations]\nassignee_resolver = "tests.automations.resolvers:dana_only"\n')
    auto = run(capsys, config, "start", "Review", "--data", '{"email": "r@example.org"}')["id"]
    assert step(config, capsys) == 1
    assert run(capsys, config, "tasks", "--user", "carol", "--privilege", "caseworker") == []
    [task] = run(capsys, config, "tasks", "--user", "dana")
    assert task["automation"] == auto
    assert "not assigned" in run(capsys, config, "submit", task["step"], "--user", "carol", "--privilege", "caseworker",
                                 "--values", '{"approved": true}', status=1)["error"]
    assert run(capsys, config, "submit", task["step"], "--user", "dana", "--values", '{"approved": true}')["node"] == "approve"
    path.write_text(text + '[automations]\nassignee_resolver = "tests.automations.nowhere:f"\n')
    error = run(capsys, config, "tasks", "--user", "dana", status=1)["error"]
    assert "assignee_resolver 'tests.automations.nowhere:f' cannot be loaded: ModuleNotFoundError" in error
