"""Running on a mail host: the systemd unit, the notify protocol, SIGHUP TLS reload, healthcheck."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.config import SmtpConfig
from mailgate.edges.smtp.limits import connection_cap
from tests.helpers import ROOT, mailgate_cmd, start_mailgate, subprocess_env, wait_for, wait_for_log

pytestmark = pytest.mark.e2e
UNIT = ROOT / "systemd" / "mailgate.service"


def unit_value(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing; scripts/test installs it")
        pytest.skip(f"{tool} is not installed")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, smtp_port: int = 0, web_port: int = 0, tls: tuple[Path, Path] | None = None) -> Path:
    smtp = [f"port = {smtp_port}", 'hostname = "mx.test"', "parse_processes = 0"]
    if tls:
        smtp += [f'tls_cert = "{tls[0]}"', f'tls_key = "{tls[1]}"']
    lines = ["[store]", f'path = "{tmp / "mailgate.sqlite3"}"', "[daemon]", 'roles = ["smtp", "web", "worker"]',
             "grace_period = 2", "[smtp]", *smtp, "[web]", f"port = {web_port}"]
    path = tmp / "mailgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    exe = Path(sys.executable).parent / "mailgate"
    assert exe.exists(), "install the project (pip install -e .) so that the mailgate command exists"
    unit = tmp_path / "mailgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/mailgate/bin/mailgate", str(exe)))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "mailgate.service" not in res.stderr, res.stderr
    for key, value in [("Type", "notify"), ("Restart", "on-failure"), ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                       ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("StateDirectory", "mailgate"),
                       ("ConfigurationDirectory", "mailgate"), ("User", "mailgate")]:
        assert value in unit_value(key), key
    # the unit's open-files limit leaves room for the default SMTP connection cap (the daemon may not
    # raise the limit itself under the unit's system-call filter)
    (limit,) = unit_value("LimitNOFILE")
    default_cap = SmtpConfig().max_connections
    assert connection_cap(default_cap, int(limit)) == default_cap, limit
    res = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for mailgate.service: ([\d.]+)", res.stdout)
    assert score and float(score.group(1)) <= 2.0, res.stdout[-500:]


def test_sysusers_file_creates_the_units_user_and_group(tmp_path: Path) -> None:
    sysusers = need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    res = subprocess.run([sysusers, f"--root={tmp_path}", str(ROOT / "systemd" / "mailgate.sysusers")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    (user,) = unit_value("User")
    (group,) = unit_value("Group")
    (working,) = unit_value("WorkingDirectory")
    assert user in users and group in groups
    assert users[user][5] == working and users[user][6] == "/usr/sbin/nologin"  # home = the store's folder
    readme = (ROOT / "README.md").read_text()
    assert "useradd" not in readme and "systemd-sysusers" in readme


def exec_start_args() -> list[str]:
    (command,) = unit_value("ExecStart")
    binary, *args = command.split()
    assert binary.endswith("/mailgate")
    return args


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def test_notify_ready_only_after_both_ports_accept_and_stopping_on_sigterm(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    env = subprocess_env(write_config(tmp_path))
    env["NOTIFY_SOCKET"] = path
    env["WATCHDOG_USEC"] = "2000000"
    env["WATCHDOG_PID"] = ""
    log = tmp_path / "daemon.log"
    proc = start_mailgate(*exec_start_args(), env=env, log=log)
    try:
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        # at READY=1 both ports already accept connections
        text = log.read_text()
        smtp = int(re.search(r"smtp listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        web = int(re.search(r"web listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        for port in (smtp, web):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert "STATUS=serving" in messages[-1]
        assert sock.recv(4096).decode() == "WATCHDOG=1"  # pinged every half WatchdogSec
        proc.send_signal(signal.SIGTERM)
        rest = []
        while "STOPPING=1" not in rest:
            rest.append(sock.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    openssl = need("openssl")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def presented_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return hashlib.sha256(der).hexdigest()


def test_sighup_reloads_the_certificate_for_the_next_handshake(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    first, second = make_cert(tmp_path, "first"), make_cert(tmp_path, "second")
    paths = (live / "tls.crt", live / "tls.key")
    for src, dst in zip(first, paths, strict=True):
        shutil.copy(src, dst)
    env = subprocess_env(write_config(tmp_path, tls=paths))
    log = tmp_path / "daemon.log"
    proc = start_mailgate("serve", env=env, log=log)
    try:
        port = int(wait_for_log(proc, log, r"smtp listening on 127\.0\.0\.1:(\d+)", 30, "the SMTP server").group(1))
        fp = {name: hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair[0].read_text())).hexdigest()
              for name, pair in (("first", first), ("second", second))}
        assert presented_fingerprint(port) == fp["first"]
        for src, dst in zip(second, paths, strict=True):
            shutil.copy(src, dst)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded the TLS certificate" in log.read_text(), 30, "the reload")
        assert presented_fingerprint(port) == fp["second"]
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_sighup_applies_the_log_level_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = subprocess_env(config)
    log = tmp_path / "daemon.log"
    proc = start_mailgate("serve", env=env, log=log)
    try:
        wait_for_log(proc, log, r"mailgate started", 30, "the daemon")
        text = config.read_text().replace("[daemon]", "[daemon]\nlog_level = 'warning'")
        config.write_text(text.replace('port = 0\nhostname = "mx.test"', 'port = 2601\nhostname = "mx.test"')
                          + "[tasks]\nworkers = 3\n")
        proc.send_signal(signal.SIGHUP)
        line = wait_for_log(proc, log, r".*reloaded .*", 30, "the reload line").group(0)
        assert " WARNING " in line  # a change that did not apply
        assert f"reloaded {config}: changed live: daemon.log_level; changed but needs a restart: tasks.workers, smtp.port" in line
        config.write_text(config.read_text().replace("workers = 3", "workers = 'many'"))
        proc.send_signal(signal.SIGHUP)
        wait_for_log(proc, log, r"reload: .*\[tasks\] workers must be an integer.*; kept the running configuration", 30,
                     "the failed reload")
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    after = log.read_text().split("kept the running configuration", 1)[1]
    assert "stopping (grace period" not in after and "mailgate stopped" not in after  # info lines: below warning


def test_healthcheck(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=free_port(), web_port=free_port())
    env = subprocess_env(config)
    log = tmp_path / "daemon.log"
    proc = start_mailgate("serve", env=env, log=log)
    try:
        wait_for(lambda: "mailgate started" in log.read_text() or proc.poll() is not None, 30, "the daemon")
        res = subprocess.run(mailgate_cmd("healthcheck"), env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert [line.split(":")[0] for line in res.stdout.splitlines()] == ["config", "store", "smtp", "web"]
        assert all(": ok (" in line for line in res.stdout.splitlines())
    finally:
        proc.terminate()
        proc.wait(30)
    res = subprocess.run(mailgate_cmd("healthcheck", "--json"), env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert '"check": "smtp",\n      "ok": false' in res.stdout


def test_healthcheck_without_a_store_says_so_and_creates_none(tmp_path: Path) -> None:
    res = subprocess.run(mailgate_cmd("healthcheck", "--json"), cwd=tmp_path, env=dict(os.environ, MAILGATE_CONFIG=""),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    store = json.loads(res.stdout)["checks"][1]
    assert store["check"] == "store" and not store["ok"] and store["detail"].startswith("no SQLite store at ")
    assert list(tmp_path.iterdir()) == []
