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


def _save(plt, fig, name: str) -> Path:
    """Lay out, write bench/out/<name>.png and let the figure go."""
    fig.tight_layout()
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    idle = [(recs[f"meshd_rpc_p99_ms_{n}_agents"].get("anchor") or {}).get("value") for n in counts]
    a.plot(counts, [v if v is not None else float("nan") for v in p99], "o-", label="meshd RPC p99")
    a.plot(counts, [v if v is not None else float("nan") for v in idle], "s:", color="tab:green",
           label="idle gRPC server p99, same machine and window")
    a.axhline(50, color="grey", ls="--", label="goal at 1,000 agents (50 ms)")
    a.set(xlabel="simulated agents", ylabel="ms", yscale="log", title="meshd RPC p99 vs agents")
    a.legend()
    b.plot(counts, [v if v is not None else float("nan") for v in rss], "o-", color="tab:orange", label="meshd RSS")
    b.axhline(300, color="grey", ls="--", label="goal at 1,000 agents (300 MB)")
    b.set(xlabel="simulated agents", ylabel="MB", title="meshd RSS vs agents")
    b.legend()
    return [_save(plt, fig, "control_meshd_scale")]


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
    return [_save(plt, fig, "gossip_crash_vs_serf")] + _convergence(recs)


def _convergence(recs: dict[str, dict]) -> list[Path]:
    """The share of 1,000 simulated members holding a new record over time, with Serf's published
    point (its simulator: 99.99% at 2.2 s) beside it: Serf publishes the point, not a curve."""
    r = recs.get("convergence_9999_s_n1000")
    curve = (r or {}).get("params", {}).get("curve") or []
    if not curve:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t for t, _ in curve], [f * 100 for _, f in curve], "-", label="mesh gossip (simulator, 1,000 members)")
    anchor = r.get("anchor") or {}
    if anchor.get("value") is not None:
        ax.plot([anchor["value"]], [99.99], "s", color="tab:red", label=f"Serf, published: 99.99% at {anchor['value']} s")
    ax.set(xlabel="seconds after the record is published", ylabel="% of members holding it",
           title="Gossip convergence, 1,000 members")
    ax.legend(fontsize=8, loc="lower right")
    return [_save(plt, fig, "gossip_convergence")]


def dataplane() -> list[Path]:
    """Tunnel throughput next to the bare link, raw wireguard-go and Nebula, measured in the same rounds."""
    recs = _records("dataplane")
    peers = [("bare veth", "veth_mbps"), ("raw wireguard-go", "raw_wireguard_go_mbps"),
             ("mesh tunnel", "tunnel_mbps"), ("Nebula", "nebula_mbps")]
    peers = [(label, recs[m]) for label, m in peers if m in recs and recs[m].get("value") is not None]
    if not peers:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    vals = [r["value"] for _, r in peers]
    samples = [r.get("params", {}).get("samples") or [r["value"]] for _, r in peers]
    lo = [v - min(s) for v, s in zip(vals, samples)]
    hi = [max(s) - v for v, s in zip(vals, samples)]
    ax.bar(range(len(peers)), vals, yerr=[lo, hi], capsize=3,
           color=["grey", "tab:blue", "tab:green", "tab:purple"][:len(peers)])
    ax.set_xticks(range(len(peers)), [label for label, _ in peers])
    ax.set(ylabel="Mbit/s (median, min-max bars)", yscale="log", title="TCP throughput, same rounds")
    return [_save(plt, fig, "dataplane_throughput")]


PLOTS = {"control": control, "gossip": gossip, "dataplane": dataplane}


def draw(name: str) -> list[Path]:
    """Plots for bench `name` (none if matplotlib is missing: the JSON is the result)."""
    fn = PLOTS.get(name)
    if fn is None:
        return []
    try:
        return fn()
    except ImportError:
        return []
