"""PNG plots next to the JSON (matplotlib, headless): drawn from bench/out/*.json."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import OUT


def _records(name: str) -> dict[str, dict]:
    path = OUT / f"{name}.json"
    if not path.exists():
        return {}
    return {r["metric"]: r for r in json.loads(path.read_text())}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def control() -> list[Path]:
    recs = _records("control")
    counts = sorted({int(m.split("_")[-2]) for m in recs if m.startswith("meshd_rpc_p99_ms_") and
                     m.endswith("_agents") and m.split("_")[-2].isdigit()})
    if not counts:
        return []
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    p99 = [recs[f"meshd_rpc_p99_ms_{n}_agents"]["value"] for n in counts]
    rss = [recs.get(f"meshd_rss_mb_{n}_agents", {}).get("value") for n in counts]
    a.plot(counts, [v if v is not None else float("nan") for v in p99], "o-", label="meshd RPC p99")
    a.axhline(50, color="grey", ls="--", label="goal at 1,000 agents (50 ms)")
    a.set(xlabel="simulated agents", ylabel="ms", yscale="log", title="meshd RPC p99 vs agents")
    a.legend()
    b.plot(counts, [v if v is not None else float("nan") for v in rss], "o-", color="tab:orange", label="meshd RSS")
    b.axhline(300, color="grey", ls="--", label="goal at 1,000 agents (300 MB)")
    b.set(xlabel="simulated agents", ylabel="MB", title="meshd RSS vs agents")
    b.legend()
    fig.tight_layout()
    path = OUT / "control_meshd_scale.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def gossip() -> list[Path]:
    recs = _records("gossip")
    ns = [n for n in (20, 50) if f"crash_to_dns_removal_s_n{n}" in recs]
    if not ns:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.35
    xs = range(len(ns))
    for k, (label, metric) in enumerate((("mesh: crash -> name gone from every DNS", "crash_to_dns_removal_s_n{}"),
                                         ("serf: crash -> every agent lists it failed", "serf_crash_to_failed_s_n{}"))):
        vals, errs = [], []
        for n in ns:
            r = recs.get(metric.format(n), {})
            v = r.get("value")
            samples = r.get("params", {}).get("samples") or []
            vals.append(v if v is not None else float("nan"))
            errs.append([[v - min(samples)] if samples and v is not None else [0],
                         [max(samples) - v] if samples and v is not None else [0]])
        lo = [e[0][0] for e in errs]
        hi = [e[1][0] for e in errs]
        ax.bar([x + k * width for x in xs], vals, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks([x + width / 2 for x in xs], [f"n={n}" for n in ns])
    ax.set(ylabel="seconds (median, min-max bars)", title="Crash detection, same run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = OUT / "gossip_crash_vs_serf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


PLOTS = {"control": control, "gossip": gossip}


def draw(name: str) -> list[Path]:
    """Plots for bench `name` (none if matplotlib is missing: the JSON is the result)."""
    fn = PLOTS.get(name)
    if fn is None:
        return []
    try:
        return fn()
    except ImportError:
        return []
