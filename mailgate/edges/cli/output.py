"""What the CLI prints: JSON for scripts (``--json``), tables and records for people.

Text that came from mail (subjects, addresses, headers) is shown with its control characters
escaped, so a hostile message cannot drive the operator's terminal.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def safe(text: str, *, newlines: bool = False) -> str:
    """Text from mail made safe for a terminal: control characters shown as escapes, never sent."""
    if not newlines:
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[safe(str(r.get(c, "") if r.get(c) is not None else "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_record(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, indent=2, ensure_ascii=False, default=str).replace("\n", "\n" + " " * (width + 2))
        text = "" if value is None else safe(str(value), newlines=True)
        print(f"{key.ljust(width)}  {text}")


def emit(as_json: bool, data: Any, *, columns: Sequence[str] | None = None, text: str | None = None) -> None:
    """``data`` as JSON, or for people: a table of ``columns``, the line ``text``, or a record."""
    if as_json:
        print_json(data)
    elif columns is not None:
        print_table(data, columns)
    elif text is not None:
        print(text)
    else:
        print_record(data)


def fail(as_json: bool, error: str, **details: Any) -> int:
    """Report a failed command: ``{"ok": false, "error": ...}`` under ``--json``, else one line on
    stderr. Returns the exit status (1)."""
    if as_json:
        print_json({"ok": False, "error": error, **details})
    else:
        print(f"mailgate: error: {error}", file=sys.stderr)
    return 1
