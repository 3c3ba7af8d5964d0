"""The package picture in docs/architecture.md is the one the imports draw (issue 12).

The imports of ``src/qanat`` are parsed with :mod:`ast` (every ``import``,
also those under ``if TYPE_CHECKING:`` and inside functions): between the
units (a package such as ``gateway/``, or a top-level module such as
``up.py``) there is no cycle, each unit imports exactly what the picture's
block in the docs says, and each foreign library is imported only where the
docs say.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "qanat"
DOC = ROOT / "docs" / "architecture.md"

#: Modules every unit may import; they import only each other (checked below).
BASE = {"errors", "logs", "runtime", "tls", "explain", "qanat"}


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "qanat":
        raise ValueError(module)
    if len(parts) == 1:
        return "qanat"
    name = parts[1]
    return name if (SRC / name).is_dir() or (SRC / f"{name}.py").exists() else "qanat"


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "qanat":
                found += [f"qanat.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        src = _unit(_module_of(path))
        graph.setdefault(src, set())
        for name in _imports(path):
            if name == "qanat" or name.startswith("qanat."):
                dst = _unit(name)
                if dst != src:
                    graph[src].add(dst)
    return graph


def library_importers() -> dict[str, set[str]]:
    """Foreign top-level library -> the files (relative to src/qanat) importing it."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            out[top].add(str(path.relative_to(SRC)))
    return out


def documented() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The ``imports`` and ``libraries`` blocks of docs/architecture.md."""
    text = DOC.read_text()
    blocks = {}
    for name in ("imports", "libraries"):
        match = re.search(rf"<!-- {name} -->\n```text\n(.*?)```", text, re.S)
        assert match, f"docs/architecture.md has no <!-- {name} --> block"
        table: dict[str, set[str]] = {}
        for line in match.group(1).splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, rest = line.partition("->")
            table[key.strip().rstrip("/").removesuffix(".py")] = {
                w.strip().rstrip("/").removesuffix(".py") for w in rest.split() if w.strip() != "-"
            }
        blocks[name] = table
    return blocks["imports"], blocks["libraries"]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_cycle_between_packages() -> None:
    assert _cycle(unit_graph()) is None, _cycle(unit_graph())


def test_the_base_modules_import_only_each_other() -> None:
    graph = unit_graph()
    for base in BASE:
        assert graph.get(base, set()) <= BASE, (base, graph.get(base))


def test_the_package_picture_in_the_docs_is_the_imports() -> None:
    graph = unit_graph()
    doc, _ = documented()
    actual = {u: deps - BASE for u, deps in graph.items() if u not in BASE}
    assert set(doc) == set(actual), sorted(set(doc) ^ set(actual))
    for unit in sorted(actual):
        assert doc[unit] == actual[unit], (
            f"{unit}: docs say {sorted(doc[unit])}, code {sorted(actual[unit])}"
        )


def _within(path: str, allowed: str) -> bool:
    return path == allowed or path.startswith((allowed + "/", allowed + "."))


def test_each_foreign_library_has_the_importers_the_docs_name() -> None:
    _, doc = documented()
    importers = library_importers()
    for library, allowed in doc.items():
        files = importers.get(library, set())
        assert files, f"{library} is not imported at all; drop it from the docs"
        outside = {
            f
            for f in files
            if not any(f == a or f.startswith(a + "/") or f.startswith(a + ".") for a in allowed)
        }
        assert not outside, f"{library} imported outside {sorted(allowed)}: {sorted(outside)}"
