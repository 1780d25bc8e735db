"""The import rule of docs/architecture.md: imports point down the layers, never up.

Walks every module under src/skyfed with `ast` (imports inside functions included) and
fails naming the importing file, its line and both layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "skyfed"

# Higher ranks may import lower ranks. Equal ranks only within the same package.
RANK = {
    "errors": 0, "home": 0,
    "spec": 1,
    "catalog": 2,
    "connectors": 3,
    "contracts": 4,
    "governance": 5,  # governance -> contracts: classifications live on contract columns
    "ingest": 6,
    "stream": 7,      # the streaming runner reuses batch ingestion's harmonize and stores
    "query": 8,
    "pipelines": 9,   # pipelines -> query: models run through the planner
    "cli": 10, "service": 10, "__init__": 10,
    "__main__": 11,
}
# Tooling beside the stack: what it may import, and who may import it.
TOOLING = {"localenv", "demo"}
# demo checks the curated stores against its ground truth, so it reads them through ingest.
TOOLING_MAY_IMPORT = {"errors", "home", "spec", "catalog", "connectors", "contracts", "ingest", "localenv", "demo"}
TOOLING_USERS = {"cli", "__main__", "__init__", "localenv", "demo"}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("skyfed.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("skyfed."):
                found.append((node.lineno, node.module.split(".")[1]))
            elif node.module == "skyfed":
                found += [(node.lineno, a.name) for a in node.names]
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        here = _package_of(path)
        for line, there in _imported_packages(ast.parse(path.read_text(), str(path))):
            if there == here:
                continue
            where = f"{path.relative_to(SRC.parent)}:{line}: {here} imports {there}"
            if here in TOOLING:
                if there not in TOOLING_MAY_IMPORT:
                    bad.append(f"{where} (tooling may import only {sorted(TOOLING_MAY_IMPORT)})")
            elif there in TOOLING:
                if here not in TOOLING_USERS:
                    bad.append(f"{where} (only the CLI and tests use tooling)")
            elif there not in RANK or here not in RANK:
                bad.append(f"{where} (unknown package: add it to RANK in this test and to docs/architecture.md)")
            elif RANK[there] >= RANK[here]:
                bad.append(f"{where} (an upward or sideways import: {there} is not below {here})")
    return bad


def test_imports_point_down_the_layers():
    bad = _violations()
    assert not bad, "imports that break the layer rule:\n" + "\n".join(bad)


def test_the_rule_catches_an_upward_import():
    tree = ast.parse("from skyfed.query.engine import connect\nimport skyfed.pipelines.runner\n")
    assert [p for _, p in _imported_packages(tree)] == ["query", "pipelines"]
    assert RANK["query"] > RANK["ingest"] and RANK["pipelines"] > RANK["query"]
