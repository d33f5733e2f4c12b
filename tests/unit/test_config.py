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
        ("[web]\nmetrics_listen = '9125'\n", r"\[web\] metrics_listen = '9125' is not host:port"),
        ("[web]\nmetrics_listen = '127.0.0.1:99999'\n", r"is not host:port"),
        ("[mail]\npostmaster = 'the operator'\n", r"\[mail\] postmaster = 'the operator' must be \"mailbox\" or one e-mail address"),
        ("[mail]\npostmaster = 'ops@example.org'\n", r"\[mail\] postmaster forwards to ops@example.org but no \[outbound\] relay_host"),
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


def test_any_key_from_the_environment_typed_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "[smtp]\nport = 2526\n[tasks]\nworkers = 2\n")
    env = {"MAILGATE_SMTP_PORT": "25", "MAILGATE_WEB_DEMO_PAGES": "yes", "MAILGATE_MAIL_DOMAINS": "a.test, b.test",
           "MAILGATE_SMTP_DNS_SERVERS": '["192.0.2.1"]', "MAILGATE_TASKS_TIMEOUT": "7", "MAILGATE_DAEMON_LOG_LEVEL": "debug",
           "MAILGATE_WEB_API_KEY": "", "MAILGATE_WEB_DIR": "/elsewhere", "MAILGATE_CONFIG": str(path)}
    config = load_config(path, env=env)
    assert config.smtp.port == 25 and config.web.demo_pages is True and config.tasks.workers == 2
    assert config.mail.domains == ("a.test", "b.test") and config.smtp.dns_servers == ("192.0.2.1",)
    assert config.tasks.timeout == 7.0 and config.daemon.log_level == "debug"
    assert config.origins["smtp.port"] == "env MAILGATE_SMTP_PORT"
    assert config.origins["tasks.workers"] == f"file {path}"
    assert config.origins["web.api_key"] == "default"  # an empty variable is no value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAILGATE_SMTP_PORT": "twenty-five"}, r"MAILGATE_SMTP_PORT = 'twenty-five' is not a valid int"),
        ({"MAILGATE_SMTP_PORT": "99999"}, r"MAILGATE_SMTP_PORT = 99999 is above the maximum 65535"),
        ({"MAILGATE_TASKS_WORKERS": "0"}, r"MAILGATE_TASKS_WORKERS = 0 is below the minimum 1"),
        ({"MAILGATE_DAEMON_LOG_LEVEL": "loud"}, r"MAILGATE_DAEMON_LOG_LEVEL = 'loud' is not one of"),
        ({"MAILGATE_SMTP_PORTT": "25"}, r"MAILGATE_SMTP_PORTT names no key of \[smtp\]"),
    ],
)
def test_bad_environment_variable_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, env=env)


def test_every_error_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[smtp]\nport = 99999\ntls_cert = '/x.pem'\n[web]\nport = -1\n[tasks]\nworkerz = 1\n[nope]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    errors = info.value.errors
    assert len(errors) == 4, errors
    assert any("[smtp] port = 99999 is above the maximum 65535" in e for e in errors)
    assert any("[web] port = -1 is below the minimum 0" in e for e in errors)
    assert any("[tasks] unknown key 'workerz'" in e for e in errors)
    assert any("unknown table [nope]" in e for e in errors)
    assert all(e.startswith(str(path)) for e in errors)


def test_a_relative_store_path_in_a_file_is_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "mailgate.toml"
    path.write_text("[store]\npath = 'data/mailgate.sqlite3'\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("etc/mailgate.toml", env={}).store.path == str(tmp_path / "etc" / "data" / "mailgate.sqlite3")
    assert load_config(None, env={}).store.path == "mailgate.sqlite3"  # the default: the working directory
    env = {"MAILGATE_STORE_PATH": "env.sqlite3"}
    assert load_config(path, env=env).store.path == "env.sqlite3"
