"""The package's shape, checked from source: the import graph has no cycles and runs one way.

The checker parses every module with :mod:`ast` (nothing is imported) and counts every import
statement: at module level, inside functions (lazy), under ``if TYPE_CHECKING:``, absolute and
relative. ``from pkg import name`` where ``pkg.name`` is a module counts as importing that module.
Importing ``mailgate.x.y`` also executes ``mailgate/x/__init__.py``, so it is an edge to that
package too, except to the importer's own enclosing packages: those have begun executing before the
importer runs, so ``from mailgate.x.z import a`` inside ``mailgate.x.y`` is no cycle through
``mailgate.x`` -- whereas ``from mailgate.x import a`` (a name, not a submodule) reads the package and
is one when ``mailgate/x/__init__.py`` imports ``mailgate.x.y``. Only import statements are edges: a
PEP 562 ``__getattr__`` that calls ``importlib.import_module`` is no edge.

Rules (each violation names the module, file, line and the import statement):

- no import cycle among mailgate modules;
- ``aiohttp`` only under ``mailgate/edges/web/``, ``aiosmtpd`` only under ``mailgate/edges/smtp/``,
  ``apscheduler`` only under ``mailgate/edges/scheduler/``, ``prometheus_client`` only in
  ``mailgate/metrics.py`` (the daemon gets no exception);
- an edge never imports another edge; the CLI edge may import ``mailgate.daemon`` (it runs the
  daemon lifecycle), no other edge may; ``mailgate.daemon`` may import every edge (it wires them);
- an edge never imports the store. The one exception, decided here: record types, i.e.
  ``from mailgate.store.base import SomethingRecord`` (every name ending in ``Record``), because
  records are plain data the core hands to the edges; ``TYPE_CHECKING`` gives no further exemption.
  Nor may an edge reach the store through an attribute: any ``<expr>.store`` under
  ``mailgate/edges/`` (``runtime.store.get_session``, ``rt.store``) is a violation;
- the core (core, author, store, mail, outbound, errors, config, automations) never imports ``mailgate.edges`` or
  ``mailgate.daemon``; neither do ``mailgate/__init__.py`` and the demo interviews, which are
  author code;
- ``mailgate.mail`` (a pure message library) never imports core, store or author;
  ``mailgate.store`` never imports core, author, mail or outbound; ``mailgate.automations`` (author
  API and pure engine, a core layer) never imports the store;
- ``import mailgate.errors`` loads nothing but ``mailgate`` and ``mailgate.errors`` (checked in a
  subprocess).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mailgate"

# Third-party packages confined to one edge: top-level import name -> the only subtree allowed.
CONFINED = {
    "aiohttp": "edges.web",
    "aiosmtpd": "edges.smtp",
    "apscheduler": "edges.scheduler",
    "prometheus_client": "metrics",
}
CORE = ("core", "author", "store", "mail", "outbound", "errors", "config", "automations")
AUTHOR_CODE = ("", "demo")  # "" is the top-level package's __init__
FORBIDDEN = {
    "mail": ("core", "store", "author"),
    "store": ("core", "author", "mail", "outbound"),
    "automations": ("store",),  # the author API and the pure engine; the runner wires them to the store
}


@dataclass(frozen=True)
class Import:
    """One import statement of one module."""

    module: str
    path: Path
    line: int
    text: str
    lazy: bool  # inside a function
    type_checking: bool  # under ``if TYPE_CHECKING:``
    names: tuple[str, ...]  # the names of ``from x import ...``; empty for ``import x``
    targets: tuple[str, ...]  # modules the statement names (submodules resolved)
    implicit: tuple[str, ...]  # enclosing packages it executes, other than the importer's own

    def where(self) -> str:
        tags = [t for t, on in (("lazy", self.lazy), ("TYPE_CHECKING", self.type_checking)) if on]
        tag = f" [{', '.join(tags)}]" if tags else ""
        return f"{self.path}:{self.line} `{self.text}`{tag}"


@dataclass(frozen=True)
class Violation:
    kind: str
    message: str


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool, bool]] = []
        self._functions = 0
        self._type_checking = 0

    def _function(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self._type_checking += 1
        for child in node.body:
            self.visit(child)
        self._type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.append((node, self._functions > 0, self._type_checking > 0))

    visit_Import = visit_ImportFrom = _import


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


class Tree:
    """The modules of one package folder and their import statements."""

    def __init__(self, package_dir: Path) -> None:
        self.top = package_dir.name
        self.files: dict[str, Path] = {}
        self.packages: set[str] = set()
        for path in sorted(package_dir.rglob("*.py")):
            rel = path.relative_to(package_dir.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
                self.packages.add(".".join(parts))
            self.files[".".join(parts)] = path
        self.base = package_dir.parent
        self.imports: list[Import] = []
        self.trees: dict[str, ast.Module] = {}
        for module, path in self.files.items():
            self._collect(module, path)

    def _collect(self, module: str, path: Path) -> None:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        self.trees[module] = tree
        collector = _ImportCollector()
        collector.visit(tree)
        shown = path.relative_to(self.base)
        for node, lazy, type_checking in collector.found:
            text = " ".join((ast.get_source_segment(source, node) or "").split())
            targets, names = self._targets(module, node)
            implicit = sorted(
                {a for t in targets for a in _ancestors(t) if a in self.files}
                - set(_ancestors(module)) - set(targets) - {module}
            )
            self.imports.append(Import(
                module, shown, node.lineno, text, lazy, type_checking, names, tuple(targets),
                tuple(implicit),
            ))

    def _targets(self, module: str, node: ast.Import | ast.ImportFrom) -> tuple[list[str], tuple[str, ...]]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names], ()
        names = tuple(alias.name for alias in node.names)
        if node.level:
            parts = module.split(".") if module in self.packages else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        submodules = [f"{base}.{name}" for name in names if f"{base}.{name}" in self.files]
        reads_package = len(submodules) < len(names)  # some name is an attribute, or ``*``
        return ([base] if reads_package else []) + submodules, names

    def own(self, module: str) -> bool:
        return _within(module, self.top)

    def part(self, module: str) -> str:
        """``mailgate.edges.web.app`` -> ``edges.web.app``; the top package itself -> ``""``."""
        return module[len(self.top) + 1:] if module != self.top else ""


def _edges_of(tree: Tree) -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in tree.imports:
        for target in (*imp.targets, *imp.implicit):
            if target in tree.files and target != imp.module:
                graph[imp.module].setdefault(target, imp)
    return graph


def _strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, {})):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [c for c in result if len(c) > 1]


def _shortest_cycle(graph: dict[str, dict[str, Import]], start: str, allowed: set[str]) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph.get(node, {})):
            if succ not in allowed:
                continue
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if succ not in parent:
                parent[succ] = node
                queue.append(succ)
    return []


def _cycles(tree: Tree) -> list[Violation]:
    graph = _edges_of(tree)
    violations = []
    for component in _strongly_connected(graph):
        members = set(component)
        seen: set[tuple[str, ...]] = set()
        for start in component:
            cycle = _shortest_cycle(graph, start, members)
            key = tuple(sorted(zip(cycle, cycle[1:], strict=False)))
            if not cycle or key in seen:
                continue
            seen.add(key)
            hops = "\n".join(
                f"    {a} -> {b}   {graph[a][b].where()}" for a, b in zip(cycle, cycle[1:], strict=False)
            )
            violations.append(Violation(
                "cycle", f"import cycle {' -> '.join(cycle)} (strongly connected: {', '.join(component)}):\n{hops}"
            ))
    return violations


def _rule_violations(tree: Tree) -> list[Violation]:
    violations = []

    def add(kind: str, imp: Import, why: str) -> None:
        violations.append(Violation(kind, f"{imp.module}: {why}: {imp.where()}"))

    for imp in tree.imports:
        me = tree.part(imp.module)
        my_edge = me.split(".")[1] if _within(me, "edges") and me.count(".") >= 1 else None
        for target in imp.targets:
            if not tree.own(target):
                top = target.split(".")[0]
                if top in CONFINED and not _within(me, CONFINED[top]):
                    add("third-party", imp, f"{top} is imported outside {tree.top}.{CONFINED[top]}")
                continue
            it = tree.part(target)
            if my_edge is not None:
                if _within(it, "edges") and it.count(".") >= 1 and it.split(".")[1] != my_edge:
                    add("edge-to-edge", imp, f"edge {my_edge!r} imports edge {it.split('.')[1]!r}")
                if _within(it, "daemon") and my_edge != "cli":
                    add("edge-to-edge", imp, f"edge {my_edge!r} imports the daemon (only the CLI may)")
                if _within(it, "store"):
                    records = it == "store.base" and imp.names and all(n.endswith("Record") for n in imp.names)
                    if not records:
                        add("edge-to-store", imp, "an edge imports the store (only *Record types of store.base are allowed)")
            if any(_within(me, c) for c in CORE) or me in AUTHOR_CODE or _within(me, "demo"):
                for outer in ("edges", "daemon"):
                    if _within(it, outer):
                        add("core-to-outer", imp, f"{me or tree.top!r} imports {tree.top}.{outer}")
            for layer, banned in FORBIDDEN.items():
                if _within(me, layer):
                    for other in banned:
                        if _within(it, other):
                            add("layer", imp, f"{tree.top}.{layer} imports {tree.top}.{other}")

    config_fields = _store_config_fields(tree)
    for module, ast_tree in tree.trees.items():
        if not _within(tree.part(module), "edges"):
            continue
        path = tree.files[module].relative_to(tree.base)
        lines = tree.files[module].read_text(encoding="utf-8").splitlines()
        parents = {child: node for node in ast.walk(ast_tree) for child in ast.iter_child_nodes(node)}
        flagged: set[int] = set()
        for node in sorted(ast.walk(ast_tree), key=lambda n: getattr(n, "lineno", 0)):
            if not (isinstance(node, ast.Attribute) and node.attr == "store") or node.lineno in flagged:
                continue
            if _names_configuration(node.value):
                continue
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.attr in config_fields:
                continue
            flagged.add(node.lineno)
            violations.append(Violation(
                "edge-to-store",
                f"{module}: an edge reaches the store through an attribute: {path}:{node.lineno} "
                f"`{lines[node.lineno - 1].strip()}`",
            ))
    return violations


def _names_configuration(node: ast.expr) -> bool:
    """``config.store``, ``self.config.store``, ``args.store``: settings, not the Store."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "args" or name == "config" or name.endswith("_config")


def _store_config_fields(tree: Tree) -> set[str]:
    """The fields of ``StoreConfig`` in the tree's ``config.py``: ``x.store.path`` reads settings."""
    config = tree.trees.get(f"{tree.top}.config")
    for node in ast.walk(config) if config else ():
        if isinstance(node, ast.ClassDef) and node.name == "StoreConfig":
            return {
                s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    return set()


def check_layering(package_dir: Path) -> list[Violation]:
    """Every layering violation in the package at ``package_dir`` (a folder with ``__init__.py``)."""
    tree = Tree(package_dir)
    return _cycles(tree) + _rule_violations(tree)


def _report(violations: list[Violation]) -> str:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for v in violations:
        by_kind[v.kind].append(v.message)
    return "\n\n".join(
        f"== {kind} ({len(messages)}) ==\n" + "\n".join(messages) for kind, messages in sorted(by_kind.items())
    )


def test_the_package_is_layered() -> None:
    violations = check_layering(PACKAGE)
    if violations:
        pytest.fail(f"{len(violations)} layering violations:\n\n{_report(violations)}", pytrace=False)


def test_importing_errors_loads_nothing_else() -> None:
    code = (
        "import mailgate.errors, sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('mailgate')))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiosmtplib', 'dkim', 'markdown_it', 'aiohttp'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ours, foreign = out.splitlines()
    assert (ours, foreign) == ("['mailgate', 'mailgate.errors']", "[]"), f"import mailgate.errors loaded {ours} and {foreign}"


# -- the checker catches what it should --------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A synthetic ``mailgate`` package; every folder gets an ``__init__.py``."""
    package = tmp_path / "mailgate"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        for folder in [path.parent, *path.parent.parents]:
            if folder == tmp_path:
                break
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").touch()
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return package


def _kinds(violations: list[Violation]) -> list[str]:
    return sorted(v.kind for v in violations)


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "errors.py": "",
        "store/__init__.py": "from mailgate.store.base import Store\n",
        "store/base.py": "from mailgate.errors import X\n",
        "store/sqlite/backend.py": "from mailgate.store.base import Store\nfrom . import writer\n",
        "store/sqlite/writer.py": "",
        "core/runtime.py": "from mailgate.store import Store\nfrom .tasks import Task\n",
        "core/tasks.py": "from mailgate.core import events\n",
        "core/events.py": "",
        "edges/web/app.py": "import aiohttp\nfrom mailgate.core.runtime import R\nfrom mailgate.store.base import SessionRecord\n",
        "edges/cli/main.py": "from mailgate.daemon.lifecycle import Daemon\n",
        "edges/cli/doctor.py": "def f(config, args):\n    return config.store, args.store, self.demo.store.path\n",
        "daemon/lifecycle.py": "from mailgate.edges.web import app\n",
        "config.py": "class StoreConfig:\n    path: str = ''\n",
    })
    assert check_layering(package) == []


def test_checker_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "core/a.py": "from mailgate.core.b import f\n",
        "core/b.py": "def f():\n    from mailgate.core import a\n",
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["cycle"]
    assert "mailgate.core.a -> mailgate.core.b -> mailgate.core.a" in violations[0].message
    assert "core/b.py:2 `from mailgate.core import a` [lazy]" in violations[0].message


def test_checker_finds_a_cycle_through_type_checking(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "core/a.py": "from mailgate.core.b import f\n",
        "core/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..core.a import A\n",
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["cycle"]
    assert "[TYPE_CHECKING]" in violations[0].message


def test_checker_finds_a_cycle_through_a_reexporting_package(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "__init__.py": "from mailgate.author.functions import f\n",
        "author/functions.py": "from mailgate.author.sending import g\n",
        "author/sending.py": "from mailgate import f\n",
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["cycle"]
    assert "mailgate -> mailgate.author.functions -> mailgate.author.sending -> mailgate" in violations[0].message


def test_checker_counts_the_package_init_an_import_executes(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "store/__init__.py": "from mailgate.config import C\n",
        "store/base.py": "",
        "config.py": "from mailgate.core.x import y\n",
        "core/x.py": "from mailgate.store.base import S\n",  # executes store/__init__.py
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["cycle"]
    assert "mailgate.core.x -> mailgate.store   " in violations[0].message


def test_checker_finds_an_edge_importing_another_edge(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "edges/smtp/server.py": "from mailgate.edges.web import app\n",
        "edges/web/app.py": "",
        "edges/scheduler/s.py": "from mailgate.daemon import lifecycle\n",
        "daemon/lifecycle.py": "",
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["edge-to-edge", "edge-to-edge"]
    assert "edge 'smtp' imports edge 'web'" in violations[0].message + violations[1].message
    assert "edge 'scheduler' imports the daemon" in violations[0].message + violations[1].message


def test_checker_finds_aiohttp_in_the_core_and_the_daemon(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "core/runtime.py": "def f():\n    from aiohttp import web\n",
        "daemon/lifecycle.py": "import aiosmtpd.controller\nimport apscheduler\n",
        "edges/web/app.py": "import aiohttp\n",
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["third-party"] * 3
    assert any("mailgate.core.runtime: aiohttp is imported outside" in v.message for v in violations)


def test_checker_finds_an_edge_calling_the_store_through_an_attribute(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "edges/web/api.py": "async def h(x):\n    return await x.store.get(1)\n",
    })
    violations = check_layering(package)
    assert _kinds(violations) == ["edge-to-store"]
    assert "edges/web/api.py:2 `return await x.store.get(1)`" in violations[0].message


def test_checker_finds_the_store_imported_in_an_edge(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "store/base.py": "",
        "edges/web/api.py": "from mailgate.store.base import Store, SessionRecord\n",
        "edges/cli/main.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mailgate import store\n",
    })
    assert _kinds(check_layering(package)) == ["edge-to-store", "edge-to-store"]


def test_checker_finds_the_core_importing_outward_and_layers_crossed(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "config.py": "from mailgate.daemon import lifecycle\n",
        "daemon/lifecycle.py": "",
        "mail/parse.py": "from mailgate.core.x import y\n",
        "core/x.py": "",
        "store/base.py": "from mailgate.outbound import message\n",
        "outbound/message.py": "",
    })
    assert _kinds(check_layering(package)) == ["core-to-outer", "layer", "layer"]
