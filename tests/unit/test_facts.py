"""Facts discovery: each source's parser on bytes, the fetchers against local doubles, faults."""

from __future__ import annotations

import logging
import os
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshagent import facts as facts_mod
from meshagent.facts import FactsError, aws, azure, gcp, gpu, local
from meshagent.facts.base import http_fetcher
from testbed.doubles.cloudmeta import AzureImdsDouble, GcpMetadataDouble
from testbed.doubles.imds import ImdsDouble, aws_instance

META = aws_instance("10.4.1.20", "vpc-0abc", "10.4.0.0/16", region="us-east-1", zone="us-east-1b",
                    instance_type="g6.12xlarge", public="54.1.2.3")


def test_aws_imdsv2_gives_instance_vpc_and_addresses():
    with ImdsDouble(lifecycle="spot", meta=META) as imds:
        found = facts_mod.discover(imds.url, 0.5, gpus=False)
        aws_calls = [(m, path) for m, path, _ in imds.requests if path.startswith("/latest/")]
    assert (found.cloud, found.region, found.zone, found.instance_type) == ("aws", "us-east-1", "us-east-1b",
                                                                            "g6.12xlarge")
    assert (found.vpc_id, found.vpc_cidr, found.subnet_id) == ("vpc-0abc", "10.4.0.0/16", "subnet-0123abcd")
    assert (found.private_address, found.public_address, found.lifecycle) == ("10.4.1.20", "54.1.2.3", "spot")
    assert found.sources["vpc_id"] == "aws-imds" and aws_calls[0] == ("PUT", "/latest/api/token")
    assert found.labels()["node.kubernetes.io/instance-type"] == "g6.12xlarge"
    assert found.labels()["topology.kubernetes.io/zone"] == "us-east-1b"


def test_aws_without_public_address_has_none():
    meta = {k: v for k, v in META.items() if k != "public-ipv4"}
    with ImdsDouble(lifecycle="on-demand", meta=meta) as imds:
        found = facts_mod.discover(imds.url, 0.5, gpus=False)
    assert found.public_address == "" and found.private_address == "10.4.1.20" and found.lifecycle == "on-demand"


def test_imdsv1_only_still_answers():
    with ImdsDouble(meta=META, imdsv1_only=True) as imds:
        found = aws.fetch(http_fetcher(imds.url, 0.5))
    assert found["vpc_id"] == "vpc-0abc"


def test_token_refused_falls_through_to_the_next_source(caplog):
    with ImdsDouble(meta=META) as imds:
        imds.token_status = 401  # IMDS refuses this instance's token (e.g. a hop limit of 1 behind a proxy)
        with caplog.at_level(logging.INFO, logger="meshagent.facts"):
            found = facts_mod.discover(imds.url, 0.5, gpus=False)
    assert found.cloud == "" and found.sources.get("private_address") == "default-route"
    assert "facts from default-route" in caplog.text


def test_gcp_metadata():
    with GcpMetadataDouble(zone="europe-west4-a", ip="10.164.0.7", external_ip="34.90.1.2", spot=True) as md:
        found = facts_mod.discover(md.url, 0.5, gpus=False)
    assert (found.cloud, found.region, found.zone, found.instance_type) == ("gcp", "europe-west4", "europe-west4-a",
                                                                            "a2-highgpu-1g")
    assert (found.private_address, found.public_address, found.lifecycle, found.project) == (
        "10.164.0.7", "34.90.1.2", "spot", "ml-project")
    assert found.sources["public_address"] == "gcp-metadata"


def test_azure_imds():
    with AzureImdsDouble(private_ip="10.0.0.9", public_ip="20.1.2.3", spot=True) as md:
        found = facts_mod.discover(md.url, 0.5, gpus=False)
    assert (found.cloud, found.region, found.instance_type, found.lifecycle) == (
        "azure", "eastus", "Standard_NC24ads_A100_v4", "spot")
    assert (found.private_address, found.public_address, found.zone) == ("10.0.0.9", "20.1.2.3", "eastus-1")


@pytest.mark.parametrize("double", [GcpMetadataDouble, AzureImdsDouble])
def test_malformed_json_is_refused_and_discovery_goes_on(double):
    with double() as md:
        md.malformed = True
        found = facts_mod.discover(md.url, 0.5, gpus=False)
    assert found.cloud == ""
    with pytest.raises(FactsError, match="not JSON"):
        (gcp.parse if double is GcpMetadataDouble else azure.parse)(b"{not json")


def test_slow_metadata_is_bounded():
    with ImdsDouble(meta=META) as imds:
        imds.faults.latency_s = 1.5
        t0 = time.monotonic()
        found = facts_mod.discover(imds.url, 0.2, gpus=False)
        took = time.monotonic() - t0
        imds.faults.latency_s = 0
    assert found.cloud == "" and took < 1.5


def test_unreachable_metadata_endpoint():
    found = facts_mod.discover("http://127.0.0.1:9", 0.2, gpus=False)
    assert found.cloud == "" and found.private_address  # the default route still answers


def test_flags_override_facts_and_say_so():
    with ImdsDouble(meta=META) as imds:
        found = facts_mod.discover(imds.url, 0.5, gpus=False)
    over = found.with_overrides(public_address="203.0.113.9", region="", vpc_id="vpc-other")
    assert over.public_address == "203.0.113.9" and over.sources["public_address"] == "flag"
    assert over.region == "us-east-1" and over.sources["region"] == "aws-imds"
    assert over.vpc_id == "vpc-other"


@pytest.mark.parametrize("raw, why", [
    ({**{k: v.encode() for k, v in META.items()}, "local-ipv4": b"not-an-ip"}, "not an IPv4"),
    ({**{k: v.encode() for k, v in META.items()}, "vpc-ipv4-cidr-blocks": b"10.4.0.0/33"}, "not a CIDR"),
    ({**{k: v.encode() for k, v in META.items()}, "placement/availability-zone": b"eu-west-1a"}, "not in region"),
    ({**{k: v.encode() for k, v in META.items()}, "instance-type": b"\xff\xfe"}, "not ASCII"),
])
def test_aws_parser_refuses_bad_values(raw, why):
    raw = {k.rsplit("/", 1)[-1] if k.startswith("network/") else k: v for k, v in raw.items()}
    with pytest.raises(FactsError, match=why):
        aws.parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_refuse_garbage_only_with_facts_error(data):
    for parse in (gcp.parse, azure.parse, lambda b: aws.parse({"local-ipv4": b, "vpc-ipv4-cidr-blocks": b}),
                  lambda b: gpu.parse_nvidia_smi(b.decode("latin-1"))):
        try:
            parse(data)
        except FactsError:
            pass


def test_default_route_table():
    table = ("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
             "eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
             "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
             "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert local.default_route_interface(table) == "eth0"
    with pytest.raises(FactsError, match="no IPv4 default route"):
        local.default_route_interface(table.splitlines()[0] + "\n" + table.splitlines()[3])
    assert local.interface_address("lo") == "127.0.0.1"


def test_nvidia_smi_output():
    g = gpu.parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 550.54.15\nNVIDIA H100 80GB HBM3, 81559, 550.54.15\n")
    assert (g.model, g.count, g.memory_mib, g.driver) == ("NVIDIA H100 80GB HBM3", 2, 81559, "550.54.15")
    assert g.labels() == {"gpu.model": "NVIDIA-H100-80GB-HBM3", "gpu.count": "2", "gpu.memory_mib": "81559",
                          "gpu.driver": "550.54.15"}
    assert gpu.parse_nvidia_smi("") is None
    with pytest.raises(FactsError, match="not a number"):
        gpu.parse_nvidia_smi("NVIDIA L4, lots, 550\n")


def fake_smi(tmp_path, body: str, code: int = 0):
    p = tmp_path / "nvidia-smi"
    p.write_text(f"#!/bin/sh\ncat <<'OUT'\n{body}\nOUT\nexit {code}\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


class FailingNvml:
    """pynvml's interface, failing as it does on a VM with the library but no driver."""

    class NVMLError_DriverNotLoaded(Exception):
        pass

    def nvmlInit(self):
        raise self.NVMLError_DriverNotLoaded("Driver Not Loaded")

    def nvmlShutdown(self):
        pass


class FakeNvml:
    class _Mem:
        total = 24 * 1024 ** 3

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 4
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetName(self, h): return b"NVIDIA L4"
    def nvmlDeviceGetMemoryInfo(self, h): return self._Mem()
    def nvmlSystemGetDriverVersion(self): return "550.90.07"
    def nvmlSystemGetCudaDriverVersion(self): return 12040


def test_nvml_read():
    g = gpu.from_nvml(FakeNvml())
    assert (g.model, g.count, g.memory_mib, g.cuda) == ("NVIDIA L4", 4, 24576, "12.4")


def test_failing_nvml_falls_back_to_nvidia_smi_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FailingNvml())
    smi = fake_smi(tmp_path, "NVIDIA A10G, 23028, 535.104.05")
    with caplog.at_level(logging.WARNING, logger="meshagent.facts"):
        found, source = gpu.discover_gpus(nvidia_smi=smi)
    assert source == "nvidia-smi" and found.model == "NVIDIA A10G" and found.count == 1
    assert len([r for r in caplog.records if "NVML failed" in r.message]) == 1


def test_no_gpu_means_no_gpu_labels(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FailingNvml())
    monkeypatch.setenv("PATH", str(tmp_path))
    found = facts_mod.discover("", gpus=True, nvidia_smi="nvidia-smi")
    assert found.gpus is None and not any(k.startswith("gpu.") for k in found.labels())


def test_broken_nvidia_smi_gives_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FailingNvml())
    smi = fake_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", 9)
    assert gpu.discover_gpus(nvidia_smi=smi) == (None, "")


def test_meshd_observing_another_address_means_nat():
    f = facts_mod.Facts(private_address="192.168.77.10")
    behind = facts_mod.observed(f, "198.18.0.30:40522")
    assert (behind.nat, behind.observed_address, behind.sources["nat"]) == ("yes", "198.18.0.30:40522", "meshd")
    assert facts_mod.observed(f, "192.168.77.10:40522").nat == "no"
    assert facts_mod.observed(facts_mod.Facts(public_address="2001:db8::7"), "[2001:db8::7]:443").nat == "no"
    assert facts_mod.observed(f, "") == f and facts_mod.observed(f, "unix:/x") == f
