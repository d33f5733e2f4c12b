"""The wheel ships the browser client and every demo page (a wheel installs them under
``<prefix>/share/mailgate/web``, where the web edge looks when it runs from an installed package),
the systemd files, the example configuration and the README the unit's ``Documentation=`` names;
the sdist carries the licence, the example configuration, ``systemd/`` and ``web/``."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e
PREFIX = "/opt/mailgate"  # the virtual environment the README's deploy steps and the unit use


def files_under(folder: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_carries_the_web_folder_and_the_migrations(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("mailgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {n.split("/data/", 1)[1] for n in names if ".data/data/" in n}
    shipped = {n.split("share/mailgate/", 1)[1] for n in data if n.startswith("share/mailgate/web/")}
    web = files_under("web")
    assert web and shipped == web, (sorted(web - shipped), sorted(shipped - web))
    migrations = {p.name for p in (ROOT / "mailgate/store/sqlite/migrations").glob("*.sql")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("mailgate/store/sqlite/migrations/")} == migrations
    assert {"share/mailgate/systemd/mailgate.service", "share/mailgate/systemd/mailgate.sysusers",
            "share/mailgate/config.example.toml"} <= data
    unit = (ROOT / "systemd/mailgate.service").read_text()
    (doc,) = [line.split("file://", 1)[1] for line in unit.splitlines() if line.startswith("Documentation=file://")]
    assert doc.startswith(PREFIX + "/") and doc[len(PREFIX) + 1:] in data, doc  # the installed README


def test_the_sdist_carries_licence_example_config_systemd_and_web(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (sdist,) = tmp_path.glob("mailgate-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        licence = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/LICENSE")))
        assert licence is not None and licence.read().startswith(b"MIT License")
    wanted = {"LICENSE", "README.md", "config.example.toml", *files_under("systemd"), *files_under("web")}
    assert wanted <= names, sorted(wanted - names)
