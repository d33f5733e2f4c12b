"""The progress ``mailgate db copy`` shows on stderr: a bar on a terminal, one line per table elsewhere."""

from __future__ import annotations

import io

from mailgate.edges.cli.dbcopy import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_bar_per_table_redrawn_in_place() -> None:
    out = Terminal()
    show = Progress(out)
    for done in (0, 250, 500):
        show("copy", "tasks", done, 500)
    show("copy", "tasks", 500, 500)  # told again once finished: nothing more
    show("verify", "events", 0, 0)
    lines = out.getvalue().split("\n")
    assert lines[0].split("\r")[1:] == [
        "copying   tasks         [                              ] 0/500",
        "copying   tasks         [###############               ] 250/500",
        "copying   tasks         [##############################] 500/500",
    ]
    assert lines[1:] == ["\rverifying events        [##############################] 0/0", ""]


def test_elsewhere_each_table_is_one_line_when_it_is_done() -> None:
    out = io.StringIO()
    show = Progress(out)
    for done in (0, 500, 1000, 1000):
        show("copy", "emails", done, 1000)
    show("verify", "emails", 1000, 1000)
    assert out.getvalue() == "copying emails: 1000 rows\nverifying emails: 1000 rows\n"
