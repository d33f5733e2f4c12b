"""The author API and the engine load no store, edge or daemon module, even indirectly."""

from __future__ import annotations

import json
import subprocess
import sys


def test_importing_automations_loads_no_store_edge_or_daemon() -> None:
    code = ("import json, sys; import mailgate.automations.engine, mailgate.automations.registry, "
            "mailgate.automations.unique; print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert "mailgate.automations.engine" in loaded
    banned = [m for m in loaded if m.startswith(("mailgate.store", "mailgate.edges", "mailgate.daemon"))
              or m.split(".")[0] in ("aiohttp", "aiosmtpd", "apscheduler", "aiosqlite", "psycopg")]
    assert banned == []
