"""The README's arrows as a test: every import in glm_agent/ (function-level ones too) is read from the source.

Three rules:

- **Rooms import downwards only.** Each room (a subpackage, or a top-level module) has a rank; a
  module may import its own room and rooms ranked lower. Nothing imports the package root
  (``glm_agent/__init__.py`` re-exports the top rooms).
- **No import circles between modules** (a module's own package ``__init__`` included; imports under
  ``if TYPE_CHECKING:`` never run, so they make no circle, but they must still point downwards).
- **No private name across packages**: ``pkg._module`` and ``pkg._name`` are for ``pkg``'s own
  modules; a helper two packages share lives in a neutral module at the root (``glm_agent._x``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests._data import REPO

PACKAGE = REPO / "glm_agent"

#: a room may import rooms of a lower rank (and itself). Neutral helpers sit at the bottom.
RANKS = {
    # the basement: neutral helpers shared by several rooms, and the CPU kernels
    "errors": 0,
    "_version": 0,
    "_cpu": 0,
    "_net": 0,
    "_host_files": 0,
    "_shutdown": 0,
    "_thread_stream": 0,
    "_background_server": 0,
    "_sizes": 0,
    "telemetry": 1,  # spans, propagation, counters: below every room that reports
    "engine": 3,  # the local engine: runner, decoding, KV store, prompt cache
    "messages": 1,
    "events": 3,
    "quantization": 2,
    "chatglm3": 3,
    "tools": 4,
    "interpreter": 4,
    "models": 4,
    "mcp": 5,
    "_steps": 5,  # the agent's step core, below the drivers in agent.py
    "agent": 6,
    "render": 6,  # showing events (the CLI's and examples' printer)
    "jupyter": 8,
    "_transcript": 2,  # runs, outputs and conversations as inert HTML (read by name: below events and results)
    "_html": 0,
    "web": 8,
    "server": 9,
    "cli": 10,
}
ROOT_RANK = 7  # glm_agent/__init__.py: nobody inside may import it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_only(tree: ast.AST) -> set[int]:
    """The import statements under ``if TYPE_CHECKING:`` (they never run)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            guarded |= {id(inner) for inner in ast.walk(node)}
    return guarded


def imports_of(name: str, *, runtime_only: bool = False) -> list[tuple[str, int]]:
    """(module imported, line) for every import in a module: ``from pkg import submodule`` names the submodule.

    ``runtime_only``: leave out imports under ``if TYPE_CHECKING:``.
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_only(tree) if runtime_only else set()
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("glm_agent")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("glm_agent"):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule if submodule in MODULES else source, node.lineno))
    return found


def imported_names(name: str) -> list[tuple[str, str, int]]:
    """(source module, imported name, line) for every ``from glm_agent... import name``."""
    path = MODULES[name]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("glm_agent"):
            found += [(node.module or "", alias.name, node.lineno) for alias in node.names]
    return found


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "glm_agent"


def rank(name: str) -> int:
    return ROOT_RANK if room(name) == "glm_agent" else RANKS[room(name)]


def test_every_room_has_a_rank():
    assert sorted({room(m) for m in MODULES} - set(RANKS) - {"glm_agent"}) == []


def test_rooms_import_only_downwards():
    wrong = []
    for name in MODULES:
        for target, line in imports_of(name):
            if room(target) == room(name) and room(name) != "glm_agent":
                continue
            if target == "glm_agent" and name != "glm_agent" and not name.startswith("glm_agent.__main__"):
                wrong.append(f"{name}:{line} imports the package root (take what it needs from its own module)")
            elif target != "glm_agent" and rank(target) >= rank(name) and name != "glm_agent":
                wrong.append(f"{name}:{line} imports {target} ({room(name)} may not import {room(target)})")
    assert wrong == [], "\n".join(wrong)


def test_no_import_circles_between_modules():
    graph: dict[str, set[str]] = defaultdict(set)
    for name in MODULES:
        for target, _line in imports_of(name, runtime_only=True):  # a type-only import never runs
            if target in MODULES and target != name:
                graph[name].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(MODULES):
        if name not in index:
            visit(name)
    assert circles == [], "\n".join(" <-> ".join(c) for c in circles)


def test_no_private_name_is_imported_from_another_package():
    wrong = []
    for name in MODULES:
        importer_package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        for source, imported, line in imported_names(name):
            parts = [*source.split("."), imported] if f"{source}.{imported}" in MODULES else source.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")]
            if private:
                owner = ".".join(parts[: private[0]])  # the package the private module belongs to
                if not (importer_package == owner or importer_package.startswith(owner + ".")):
                    wrong.append(f"{name}:{line} imports {'.'.join(parts)} (private to {owner})")
            if imported.startswith("_") and not imported.startswith("__") and f"{source}.{imported}" not in MODULES:
                is_package = MODULES.get(source, Path()).name == "__init__.py"
                owner = source if is_package else source.rsplit(".", 1)[0]  # a module's private names: its package's
                if not (importer_package == owner or importer_package.startswith(owner + ".")):
                    wrong.append(f"{name}:{line} imports the private name {imported} from {source}")
    assert wrong == [], "\n".join(wrong)
