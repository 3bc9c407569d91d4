"""Writing benchmark records (format in ../shared/BENCH.md)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


def record(bench: str, metric: str, value: float | None, unit: str, better: str = "lower",
           goal: float | None = None, anchor: dict[str, Any] | None = None,
           **params: Any) -> dict[str, Any]:
    """One result. `anchor` is {"name": ..., "value": ...} (plus `"measured": False` and a
    `source` when it could not run here) or None. A value that is None, NaN or infinite (nothing
    measured) is written as null; say why in params (`failures`, ...)."""
    v = None if value is None or not math.isfinite(float(value)) else round(float(value), 4)
    return {"bench": bench, "metric": metric, "value": v, "unit": unit,
            "better": better, "goal": goal, "anchor": anchor, "params": params}


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


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
    path.write_text(json.dumps(finite(records), indent=2, allow_nan=False) + "\n")
    return path


def discard(name: str) -> None:
    """Remove a previous run's results, so a failed run leaves nothing that looks current."""
    (OUT / f"{name}.json").unlink(missing_ok=True)
    for png in OUT.glob(f"{name}_*.png"):
        png.unlink()


def show(records: list[dict[str, Any]]) -> None:
    for r in records:
        extra = []
        if r.get("goal") is not None:
            extra.append(f"goal {r['goal']}")
        if r.get("anchor"):
            extra.append(f"anchor {r['anchor']['name']}: {r['anchor']['value']}")
        tail = f"  ({', '.join(extra)})" if extra else ""
        value = "null" if r["value"] is None else r["value"]
        print(f"{r['metric']:<40} {value:>12} {r['unit']}{tail}")
