"""Output for people and scripts, and one-line errors.

Every command ends through `emit` or `fail`: a table, JSON, YAML or names on
stdout, or one clear error line on stderr and a non-zero exit code. No
tracebacks for user mistakes: typed `MeshError`s are printed as their message.

`--output` (`-o`):
- `table` (default): on a terminal a rich table; otherwise (a pipe, a file)
  plain columns aligned with spaces, a header line, no title, no box drawing
  and nothing cut, so `grep`, `awk` and `cut` work. Empty cells print as `-`.
- `wide`: the table with every column the command knows.
- `json`, `yaml`: the full API object. Numbers are numbers (protobuf's JSON
  mapping writes 64-bit integers as strings; we do not), times are RFC 3339
  strings in UTC (`null` when unset), enums are their names.
- `name`: one name per line (the NAME column, else the first column).

Exit codes: 0 success; 1 a failure reported as `error: ...` (bad input, a
refused or failed call, a daemon not answering); 2 a usage error (unknown
option, missing argument: click's own code); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Any, NoReturn

import typer


class Output(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"


OUTPUT_OPTION = typer.Option(Output.table, "--output", "-o",
                             help="table (plain columns when piped), wide, json, yaml or name")

#: int64 fields that hold epoch seconds: shown as RFC 3339 times
TIME_FIELDS = frozenset({"joined_at", "last_seen", "expires_at", "created_at", "last_contact", "latest_handshake"})
#: exit codes, documented in docs/troubleshooting.md
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def rfc3339(epoch_s: float) -> str | None:
    if not epoch_s:
        return None
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def proto_dict(msg) -> dict[str, Any]:
    """A protobuf message as plain data: field names as in the .proto, every field without
    presence included (as json_format's always_print_fields_with_no_presence), 64-bit
    integers as numbers, epoch-second fields as RFC 3339, enums by name, bytes in base64."""
    from google.protobuf.descriptor import FieldDescriptor as F

    def scalar(fd, value):
        if fd.type == F.TYPE_MESSAGE:
            return proto_dict(value)
        if fd.type == F.TYPE_ENUM:
            ev = fd.enum_type.values_by_number.get(value)
            return ev.name if ev else value
        if fd.type == F.TYPE_BYTES:
            return base64.b64encode(value).decode()
        if fd.name in TIME_FIELDS:
            return rfc3339(value)
        return value

    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: scalar(vfd, v) for k, v in sorted(value.items())}
        elif fd.is_repeated:
            out[fd.name] = [scalar(fd, v) for v in value]
        elif fd.has_presence:
            if msg.HasField(fd.name):
                out[fd.name] = scalar(fd, value)
        else:
            out[fd.name] = scalar(fd, value)
    return out


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def plain_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Columns aligned with spaces, no truncation; the last column is not padded."""
    cells = [list(columns)] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        lines.append("   ".join(v.ljust(w) for v, w in zip(line[:-1], widths)) + ("   " if len(line) > 1 else "")
                     + line[-1])
    return "\n".join(lines)


def is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def wide_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str], wide: Sequence[str] | None) -> list[str]:
    """The table's columns plus `wide` (default: every other key the rows have, in order)."""
    extra = list(wide) if wide is not None else [k for r in rows for k in r]
    out = list(columns)
    for c in extra:
        if c not in out:
            out.append(c)
    return out


def row_name(row: dict[str, Any], columns: Sequence[str]) -> str:
    for key in ("NAME", "ID", "name", "id"):
        if row.get(key):
            return str(row[key])
    return _cell(row.get(columns[0])) if columns else ""


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: Output,
         title: str | None = None, raw: Any = None, wide: Sequence[str] | None = None) -> None:
    """Rows as a table for people, or `raw` (default: rows) as JSON or YAML for scripts."""
    data = rows if raw is None else raw
    if output == Output.json:
        print(json.dumps(data, indent=2, default=str))
        return
    if output == Output.yaml:
        import yaml
        print(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False, allow_unicode=True), end="")
        return
    if output == Output.name:
        for r in rows:
            print(row_name(r, columns))
        return
    cols = wide_columns(rows, columns, wide) if output == Output.wide else list(columns)
    print_table(rows, cols, title)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None,
                header: bool = True) -> None:
    if not is_terminal():
        text = plain_table(rows, columns)
        print(text if header else "\n".join(text.splitlines()[1:]), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold", show_header=header)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    Console().print(table)
