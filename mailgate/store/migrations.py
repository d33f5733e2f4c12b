"""Numbered migrations: each backend keeps its own ``migrations/NNNN_name.sql`` files."""

from __future__ import annotations

from importlib import resources


def numbered(package: str) -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of every ``NNNN_*.sql`` file in ``package``'s ``migrations`` folder, in order."""
    folder = resources.files(package) / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)
