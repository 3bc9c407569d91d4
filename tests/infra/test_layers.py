"""infra is a library under meshctl: it imports no command-line toolkit and no other part of the mesh."""

from __future__ import annotations

import ast
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra"
FORBIDDEN = {"typer", "rich", "click", "meshctl", "meshd", "meshagent"}


def imported(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in a file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_infra_imports_no_cli_toolkit_and_no_other_part_of_the_mesh() -> None:
    files = sorted(INFRA.rglob("*.py"))
    assert files
    bad = [f"{f.relative_to(INFRA.parent)}:{line}: {name}" for f in files for line, name in imported(f)
           if name.split(".")[0] in FORBIDDEN]
    assert bad == []
