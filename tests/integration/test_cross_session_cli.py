"""``mailgate sessions new --url-arg`` / ``get`` / ``set``: the cross-session functions from the CLI, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailgate.edges.cli.main import main

INTERVIEWS = Path(__file__).parent.parent / "interviews"


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "mailgate.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "m.sqlite3"}"\n[interviews]\npaths = ["{INTERVIEWS / "testing.py"}"]\n'
                    "[sessions]\nlock_timeout = 0.5\n")
    assert main(["db", "migrate", "--config", str(path)]) == 0
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> dict[str, object]:
    assert main([*argv, "--json"]) == status
    out = capsys.readouterr().out
    return dict(json.loads(out)) if out else {}


def test_new_get_set_from_the_cli(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    sid = str(run(capsys, "sessions", "new", "testing", "--answers", '{"a": 1, "gone": true}',
                  "--url-arg", "ref=x7", "--url-arg", "n=3", "--config", config)["id"])
    got = run(capsys, "sessions", "get", sid, "--config", config)
    assert got["variables"] == {"a": 1, "gone": True, "url_args": {"ref": "x7", "n": 3}}
    saved = run(capsys, "sessions", "set", sid, "--var", "b=[1, 2]", "--var", "c=text", "--delete", "gone",
                "--interview", "testing", "--config", config)
    assert saved == {"id": sid, "version": 2}
    got = run(capsys, "sessions", "get", sid, "--interview", "testing", "--config", config)
    assert got["variables"] == {"a": 1, "b": [1, 2], "c": "text", "url_args": {"ref": "x7", "n": 3}}
    run(capsys, "sessions", "set", sid, "--var", "_internal={}", "--config", config, status=1)
    run(capsys, "sessions", "set", sid, "--var", "x=1", "--interview", "other", "--config", config, status=1)
    run(capsys, "sessions", "get", sid, "--interview", "other", "--config", config, status=1)
    run(capsys, "sessions", "set", sid, "--config", config, status=1)
    assert run(capsys, "sessions", "get", sid, "--config", config)["version"] == 2


def test_stash_put_and_get_from_the_cli(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = run(capsys, "stash", "put", '{"name": "Ann", "n": [1, 2]}', "--expire", "3600", "--config", config)
    assert set(tokens) == {"stash_key", "secret"}
    key, secret = str(tokens["stash_key"]), str(tokens["secret"])
    run(capsys, "stash", "get", key, key, "--delete", "--config", config, status=1)  # a wrong secret deletes nothing
    assert run(capsys, "stash", "get", key, secret, "--refresh", "--config", config) == {"name": "Ann", "n": [1, 2]}
    assert run(capsys, "stash", "get", key, secret, "--delete", "--config", config)["name"] == "Ann"
    run(capsys, "stash", "get", key, secret, "--config", config, status=1)
    run(capsys, "stash", "put", "1", "--expire", "-1", "--config", config, status=1)
