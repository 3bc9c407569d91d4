"""Cluster names (Grid's rule) and the cluster spec: strict reading, round trips, diffs."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from infra.cluster.spec import (ClusterDoc, ClusterSpec, InstanceTypeSpec, check_edit, diff, from_dict, from_yaml)
from meshcore.errors import ConfigError, InvalidArgument
from meshcore.names import check_cluster_name

PKG = "git+https://git.example.com/mesh@v0.1"
BASE = {**ClusterSpec(package=PKG).to_dict()}


@pytest.mark.parametrize("name", ["a", "ml-prod", "ml.prod.eu", "0", "a" * 63, "x1.y-2"])
def test_valid_cluster_names(name: str) -> None:
    assert check_cluster_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("", "''"), ("Prod", "uppercase"), ("ml_prod", "'_'"), ("-ml", "start and end"), ("ml.", "start and end"),
    (".ml", "start and end"), ("a" * 64, "longer than 63"), ("ml prod", "' '"), ("mł", "'ł'"),
])
def test_invalid_cluster_names_name_the_rule(name: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_cluster_name(name)
    assert why in str(e.value) and "'-' or '.'" in str(e.value)


@pytest.mark.parametrize("raw,match", [
    ({"warm": 1}, "unknown key 'warm'.*valid keys are main_region"),
    ({"profile": "fast"}, "invalid profile 'fast'"),
    ({"instance_types": []}, "at least one"),
    ({"instance_types": ["G6.xlarge"]}, "invalid instance type 'G6.xlarge'"),
    ({"instance_types": ["g6.xlarge", "g6.xlarge"]}, "listed twice"),
    ({"instance_types": [{"name": "g6.xlarge", "overprovisioned_ondemand_count": -1}]}, "between 0 and 64"),
    ({"instance_types": [{"name": "g6.xlarge", "overprovisioned_ondemand_count": "3"}]}, "whole number"),
    ({"instance_types": [{"name": "g6.xlarge", "count": 3}]}, "unknown key 'count'"),
    ({"instance_types": [3]}, "type name or a mapping"),
    ({"regions": "us-east-1"}, "list of strings"),
    ({"regions": ["mars-1"]}, "invalid region 'mars-1'"),
    ({"main_region": 5}, "must be a string"),
    ({"ssh_cidrs": ["10.0.0.1/8"]}, "invalid CIDR"),
    ({"image_owner": "debian"}, "invalid image_owner"),
    ({"package": "mesh extra"}, "one pip requirement"),
    ({"coordinator_instance_type": "big"}, "invalid coordinator_instance_type"),
])
def test_invalid_specs_are_refused_with_the_rule(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict({**BASE, **raw})


def test_yaml_errors_and_non_mappings() -> None:
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        from_yaml("profile: a\n  - b: [\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_yaml("- a\n- b\n")
    assert from_yaml(f"package: {PKG}") == ClusterSpec(package=PKG)  # everything else defaulted
    assert from_yaml("") == ClusterSpec()  # no package: `create` uploads a wheel of the mesh it runs


@given(profile=st.sampled_from(["performance", "cost-savings"]),
       warm=st.lists(st.integers(0, 64), min_size=1, max_size=4),
       regions=st.lists(st.sampled_from(["us-west-2", "eu-west-1", "ap-northeast-1"]), unique=True, max_size=3))
def test_yaml_round_trip(profile: str, warm: list[int], regions: list[str]) -> None:
    types = tuple(InstanceTypeSpec(f"g6.{i}xlarge", n) for i, n in enumerate(warm, start=1))
    spec = ClusterSpec(profile=profile, instance_types=types, regions=tuple(regions), package=PKG)
    assert from_yaml(spec.to_yaml()) == spec
    doc = ClusterDoc("c0123456789", "ml.prod", spec, created_at="2026-11-23T00:00:00Z")
    assert ClusterDoc.from_json(doc.to_json(), 3) == ClusterDoc("c0123456789", "ml.prod", spec, version=3,
                                                               created_at="2026-11-23T00:00:00Z")


def test_diff_and_what_cannot_change_in_place() -> None:
    a = ClusterSpec(package=PKG)
    b = from_dict({**a.to_dict(), "profile": "cost-savings"})
    d = diff(a, b, "v1", "edited")
    assert "-profile: performance" in d and "+profile: cost-savings" in d and diff(a, a, "x", "y") == ""
    with pytest.raises(ConfigError, match="main_region cannot change in place"):
        check_edit(a, from_dict({**a.to_dict(), "main_region": "eu-west-1"}))


def test_a_damaged_document_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="stored cluster document is damaged"):
        ClusterDoc.from_json('{"id": "c1", "name": "Bad_Name", "spec": {"package": "x"}}')
    with pytest.raises(ConfigError, match="damaged"):
        ClusterDoc.from_json("not json")
