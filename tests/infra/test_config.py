"""The config file: strict keys, typed values, rules named in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import DEFAULT_INSTANCE_TYPES, InfraConfig, config_from_dict, load_config
from meshcore.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mesh-infra.yaml"
    p.write_text(text)
    return p


def test_defaults_are_lmruns() -> None:
    cfg = InfraConfig()
    assert cfg.instance_types == DEFAULT_INSTANCE_TYPES == ("g6.xlarge", "g6.2xlarge", "g6.12xlarge")
    assert cfg.excluded_regions == ("ap-southeast-5",)
    assert cfg.ssh_cidrs == ()  # SSH closed to the world unless asked


def test_loads_a_full_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("secret\n")
    p = write(tmp_path, "name: lmrun\nmain_region: eu-west-2\ninstance_types: [g6.xlarge]\n"
                        "ssh_cidrs: [203.0.113.0/24]\njoin_token_file: token\n")
    cfg = load_config(p)
    assert cfg.name == "lmrun" and cfg.main_region == "eu-west-2"
    assert cfg.instance_types == ("g6.xlarge",) and cfg.ssh_cidrs == ("203.0.113.0/24",)
    assert cfg.join_token_file == str(tmp_path / "token")  # relative to the config file


def test_typod_key_is_refused_naming_it_and_the_valid_ones(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ninstance_type: [g6.xlarge]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "unknown config key 'instance_type'" in msg
    assert "instance_types" in msg and "main_region" in msg


@pytest.mark.parametrize("raw, words", [
    ({"name": "Bad_Name"}, "mesh name"),
    ({"main_region": "useast1"}, "invalid region 'useast1'"),
    ({"main_region": "ap-southeast-5"}, "is excluded"),
    ({"instance_types": []}, "at least one"),
    ({"instance_types": ["g6"]}, "invalid instance type 'g6'"),
    ({"ssh_cidrs": ["10.0.0.1/8"]}, "invalid CIDR '10.0.0.1/8' in ssh_cidrs"),
    ({"wireguard_port": 70000}, "wireguard_port"),
    ({"wireguard_port": "51820"}, "must be an integer"),
    ({"ssh_cidrs": [22]}, "list of strings"),
    ({"max_parallel_regions": 0}, "max_parallel_regions"),
    ({"public_ips": "yes"}, "must be true or false"),
    ({"quota_request_interval_s": -1}, "must not be negative"),
])
def test_rules_are_named(raw: dict, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert words in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_config(write(tmp_path, "name: x\n  bad: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == InfraConfig()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from infra.config import FIELDS  # noqa: E402

values = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                   st.text(max_size=20), st.lists(st.text(max_size=20), max_size=3))
keys = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_fuzz_any_mapping_gives_a_config_or_a_config_error(raw: dict) -> None:
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(cfg, InfraConfig)
