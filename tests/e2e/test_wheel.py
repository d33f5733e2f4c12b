"""The wheel ships the browser client and every demo page (a wheel installs them under
``<prefix>/share/mailgate/web``, where the web edge looks when it runs from an installed package)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_the_wheel_carries_the_web_folder_and_the_migrations(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("mailgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {n.split("/data/share/mailgate/", 1)[1] for n in names if "/data/share/mailgate/" in n}
    web = {str(p.relative_to(ROOT)) for p in (ROOT / "web").rglob("*") if p.is_file()}
    assert web and data == web, (sorted(web - data), sorted(data - web))
    migrations = {p.name for p in (ROOT / "mailgate/store/sqlite/migrations").glob("*.sql")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("mailgate/store/sqlite/migrations/")} == migrations
