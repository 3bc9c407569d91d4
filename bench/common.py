"""Writing benchmark records (format in ../shared/BENCH.md)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


def record(bench: str, metric: str, value: float, unit: str, better: str = "lower",
           goal: float | None = None, anchor: dict[str, Any] | None = None,
           **params: Any) -> dict[str, Any]:
    """One result. `anchor` is {"name": ..., "value": ...} or None."""
    return {"bench": bench, "metric": metric, "value": round(float(value), 4), "unit": unit,
            "better": better, "goal": goal, "anchor": anchor, "params": params}


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; samples must not be empty."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def write(name: str, records: list[dict[str, Any]]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(records, indent=2) + "\n")
    return path


def show(records: list[dict[str, Any]]) -> None:
    for r in records:
        extra = []
        if r.get("goal") is not None:
            extra.append(f"goal {r['goal']}")
        if r.get("anchor"):
            extra.append(f"anchor {r['anchor']['name']}: {r['anchor']['value']}")
        tail = f"  ({', '.join(extra)})" if extra else ""
        print(f"{r['metric']:<40} {r['value']:>12} {r['unit']}{tail}")
