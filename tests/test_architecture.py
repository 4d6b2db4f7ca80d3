"""The layers in docs/ARCHITECTURE.md hold: imports only go down, and no file imports itself back.

Every import counts, including those inside functions (they run too, only later); type-only
imports under `if TYPE_CHECKING:` do not, since they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "crmops"


def layers() -> dict[str, int]:
    """Package (or root module) name -> its line in the layer block, 0 at the bottom."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- layers -->\s*```\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no <!-- layers --> block"
    lines = [line.split() for line in block.group(1).strip().splitlines()]
    return {name: len(lines) - 1 - i for i, names in enumerate(lines) for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The crmops modules this file imports when it runs."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "crmops")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "crmops":
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "crmops"


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_every_package_has_a_layer() -> None:
    order = layers()
    missing = sorted({layer_of(m) for m in modules()} - set(order))
    assert not missing, f"add these to the layer block of docs/ARCHITECTURE.md: {missing}"


def test_imports_only_go_down() -> None:
    order = layers()
    wrong = []
    for module, deps in graph().items():
        here = layer_of(module)
        for dep in deps:
            there = layer_of(dep)
            if there != here and order[there] >= order[here]:
                wrong.append(f"{module} imports {dep} ({there} is not below {here})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles_between_files() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan, iterative enough for this tree's depth
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself works: an engines module importing a workflow is named."""
    known = {"crmops.engines.x": tmp_path / "x.py", "crmops.services.backup": tmp_path / "b.py"}
    (tmp_path / "x.py").write_text("def f():\n    from crmops.services.backup import run\n")
    deps = imports(known["crmops.engines.x"], "crmops.engines.x", known)
    assert deps == {"crmops.services.backup"}
    order = layers()
    assert order[layer_of("crmops.services.backup")] > order[layer_of("crmops.engines.x")]


def test_type_only_imports_are_not_counted(tmp_path: Path) -> None:
    known = {"crmops.repository.writer": tmp_path / "w.py", "crmops.repository.repo": tmp_path / "r.py"}
    (tmp_path / "w.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from crmops.repository.repo import Repository\n")
    assert imports(known["crmops.repository.writer"], "crmops.repository.writer", known) == set()
