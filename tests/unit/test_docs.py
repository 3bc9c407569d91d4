"""The operator docs follow the code: the configuration reference is generated and
must match; every metric the code defines is in the metrics reference; the README
links the pages."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_configuration_reference_matches_the_code():
    sys.path.insert(0, str(DOCS))
    try:
        import generate
    finally:
        sys.path.remove(str(DOCS))
    assert (DOCS / "configuration.md").read_text() == generate.render(), \
        "docs/configuration.md is stale: run `python docs/generate.py`"


def test_every_metric_is_in_the_metrics_reference():
    reference = (DOCS / "metrics.md").read_text()
    sources = ["meshd/metrics.py", "meshagent/metrics.py", "meshagent/dns/metrics.py", "meshcore/metrics.py"]
    names = set()
    for src in sources:
        for name in re.findall(r'"(mesh_[a-z0-9_]+)"', (ROOT / src).read_text()):
            names.add(name)
    assert len(names) > 30
    documented = set(re.findall(r"`(mesh_[a-z0-9_]+)`", reference))
    # counters are declared without _total, which prometheus_client appends
    missing = {n for n in names if n not in documented and f"{n}_total" not in documented}
    assert not missing, f"metrics missing from docs/metrics.md: {sorted(missing)}"


def test_dashboard_uses_only_documented_metrics():
    documented = set(re.findall(r"`(mesh_[a-z0-9_]+)`", (DOCS / "metrics.md").read_text()))
    used = set(re.findall(r"\b(mesh_[a-z0-9_]+?)(?:_bucket|_count|_sum)?\b", (ROOT / "dashboards/mesh.json").read_text()))
    used = {u for u in used if not u.startswith(("mesh_component", "mesh_node", "mesh_overview"))}
    assert used <= documented, sorted(used - documented)


def test_readme_links_the_operator_docs():
    readme = (ROOT / "README.md").read_text()
    for page in ("install", "ports", "troubleshooting", "metrics", "configuration"):
        assert f"docs/{page}.md" in readme


def test_every_fail_message_prefix_of_install_is_in_troubleshooting():
    text = (DOCS / "troubleshooting.md").read_text()
    for prefix in ("meshagent executable not found", "ProtectHome=yes hides", "did not start",
                   "no meshagent socket", "permission denied on", "the watch stream ended"):
        assert prefix in text, prefix

