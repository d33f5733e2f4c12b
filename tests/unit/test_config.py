from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from mailgate.config import load_config, render_example, tables
from mailgate.errors import ConfigError
from tests.helpers import ROOT, mailgate_cmd, subprocess_env


def test_example_file_is_in_step_with_the_code() -> None:
    text = (ROOT / "config.example.toml").read_text()
    assert text == render_example(), "regenerate: python -c 'from mailgate.config import render_example as r; print(r(), end=\"\")' > config.example.toml"
    config = load_config(ROOT / "config.example.toml")
    defaults = load_config(None)
    for name in tables():
        assert getattr(config, name) == getattr(defaults, name)
        for f in dataclasses.fields(getattr(config, name)):
            assert f.metadata["doc"], f"[{name}] {f.name} has no explanation"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    return path


def test_values_are_typed_and_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[tasks]\nworkers = 3\ntimeout = 7\n[daemon]\nroles = ['worker']\n"))
    assert config.tasks.workers == 3 and config.tasks.timeout == 7.0 and isinstance(config.tasks.timeout, float)
    assert config.daemon.roles == ("worker",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tasks.workers = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nope]\na = 1\n", r"\[nope\].*known tables"),
        ("[tasks]\nworkerz = 3\n", r"\[tasks\] unknown key 'workerz'"),
        ("[tasks]\nworkers = 'many'\n", r"\[tasks\] workers must be an integer"),
        ("[tasks]\nworkers = true\n", r"\[tasks\] workers must be an integer"),
        ("[tasks]\nworkers = 0\n", r"\[tasks\] workers = 0 is below the minimum 1"),
        ("[store]\nbackend = 'mysql'\n", r"\[store\] backend = 'mysql' is not one of"),
        ("[daemon]\nroles = 'worker'\n", r"\[daemon\] roles must be a list"),
        ("[daemon]\nroles = ['worker', 'mta']\n", r"unknown role 'mta'"),
        ("tasks = 3\n", r"\[tasks\] must be a table"),
        ("[tasks\nworkers = 3\n", r"not valid TOML"),
        ("[store]\nbackend = 'postgres'\n", r"dsn is empty"),
        ("[web]\ntrusted_proxies = ['10.0.0.0/33']\n", r"\[web\] trusted_proxies: '10.0.0.0/33' is not an IP"),
        ("[web]\npublic_url = 'help.example.org'\n", r"\[web\] public_url 'help.example.org' must be an http"),
        ("[web]\nallowed_origins = ['https://app.example.org/page']\n", r"is not an origin"),
    ],
)
def test_bad_config_names_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml")


def test_secret_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nbackend = 'postgres'\ndsn = 'postgresql://file'\n")
    assert load_config(path, env={}).store.dsn == "postgresql://file"
    assert load_config(path, env={"MAILGATE_STORE_DSN": "postgresql://env"}).store.dsn == "postgresql://env"


def test_check_config_cli(tmp_path: Path) -> None:
    good = write(tmp_path, "[tasks]\nworkers = 2\n")
    ok = subprocess.run(mailgate_cmd("check-config", str(good)), capture_output=True, text=True, env=subprocess_env(good))
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[tasks]\nworkers = 'x'\n")
    res = subprocess.run(mailgate_cmd("check-config", str(bad)), capture_output=True, text=True, env=subprocess_env(good))
    assert res.returncode == 2
    assert "[tasks] workers must be an integer" in res.stderr and "Traceback" not in res.stderr
