"""Output for people (rich tables) and scripts (--output json), and one-line errors.

Every command ends through `emit` or `fail`: a table or JSON on stdout, or one
clear error line on stderr and a non-zero exit code. No tracebacks for user
mistakes: typed `MeshError`s are printed as their message.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Any, NoReturn

import typer


class Output(str, Enum):
    table = "table"
    json = "json"


OUTPUT_OPTION = typer.Option(Output.table, "--output", "-o", help="table for people, json for scripts")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: Output,
         title: str | None = None, raw: Any = None) -> None:
    """Rows as a table for people, or `raw` (default: rows) as JSON for scripts."""
    if output == Output.json:
        print(json.dumps(rows if raw is None else raw, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    Console().print(table)
