"""The library's shape: modules import each other in one direction only."""

import ast
from pathlib import Path

CRACK = Path(__file__).resolve().parents[1] / "crack"


def _imports(path: Path) -> set[str]:
    """The crack modules a file imports at run time (TYPE_CHECKING imports aside)."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for stmt in ast.walk(tree)
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crack."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("crack.")}
    return found


def test_no_import_cycle_in_crack():
    graph = {p.stem: _imports(p) for p in CRACK.glob("*.py") if p.stem != "__init__"}
    visiting, done = [], set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join([*visiting, module])
        visiting.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert "store" in graph and not graph["store"] & {"cache", "data", "model", "callbacks"}
