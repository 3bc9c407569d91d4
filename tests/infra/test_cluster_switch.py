"""A profile switch in place on moto (infra/cluster/switch.py): the order of its steps, the store copy sent
to the right instances, the Elastic IP kept through both directions, and a failure before the address
moves leaving the old coordinator serving. moto records Run Command without running it; what the
commands do on the instances (`meshd store copy`, `--await-import`) is tested with real processes in
tests/e2e/test_store_switch.py and tests/integration/test_store_snapshot.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import boto3
import pytest

from infra.cluster.lifecycle import create, edit
from infra.cluster.registry import Registry
from infra.cluster.spec import InstanceTypeSpec
from meshcore.errors import MeshError
from tests.infra.helpers import FEW
from tests.infra.test_cluster import _Http, ec2, live, spec


class Calls:
    """Every operation with its parameters, in order; optionally the n-th call of one fails."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []
        self.fail_at: dict[str, tuple[int, str]] = {}
        self._count: dict[str, int] = {}

    def __call__(self, client: Any) -> None:
        def record(params: dict, model: Any, **_: Any) -> None:
            self.seen.append((model.name, dict(params)))

        def before_call(model: Any, **_: Any) -> Any:
            n = self._count[model.name] = self._count.get(model.name, 0) + 1
            if model.name in self.fail_at and self.fail_at[model.name][0] == n:
                code = self.fail_at[model.name][1]
                return _Http(400), {"Error": {"Code": code, "Message": "injected"},
                                    "ResponseMetadata": {"HTTPStatusCode": 400}}
            return None
        client.meta.events.register("before-parameter-build", record)
        client.meta.events.register("before-call", before_call)

    def since(self, mark: int) -> list[tuple[str, dict]]:
        return self.seen[mark:]


def first(calls: list[tuple[str, dict]], name: str, pred=lambda p: True) -> int:
    return next(i for i, (n, p) in enumerate(calls) if n == name and pred(p))


def commands(calls: list[tuple[str, dict]]) -> list[tuple[list[str], str]]:
    return [(p["InstanceIds"], p["Parameters"]["commands"][-1]) for n, p in calls if n == "SendCommand"]


def the_eip(moto: str, name: str) -> dict:
    eips = ec2(moto).describe_addresses(Filters=[{"Name": "tag:mesh:cluster", "Values": [name]}])["Addresses"]
    assert len(eips) == 1
    return eips[0]


def lbs(moto: str, doc_id: str) -> list[dict]:
    out = boto3.client("elbv2", region_name="us-east-1", endpoint_url=moto).describe_load_balancers()
    return [lb for lb in out["LoadBalancers"] if doc_id in lb["LoadBalancerName"]]


def test_to_performance_copies_the_store_in_order_and_keeps_the_address(cluster_ops, moto, mesh):
    calls = Calls()
    ops = cluster_ops(on_client=calls)
    cheap = spec(profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0]),))
    res = create(ops, mesh, cheap)
    eip = the_eip(moto, mesh)
    old = live(moto, mesh)["coordinator-0"]
    assert eip["InstanceId"] == old["InstanceId"] and res.address == f"{eip['PublicIp']}:7443"

    # cost-savings → performance
    mark = len(calls.seen)
    out = edit(ops, mesh, dataclasses.replace(cheap, profile="performance"))
    seq = calls.since(mark)
    slots = live(moto, mesh)
    assert sorted(slots) == ["replica-0", "replica-1", "replica-2"]
    replicas = sorted(slots[f"replica-{i}"]["InstanceId"] for i in range(3))
    etcd = "etcds://" + ",".join(f"{slots[f'replica-{i}']['PrivateIpAddress']}:2379" for i in range(3))
    sent = commands(seq)
    assert [ids for ids, _ in sent] == [replicas, [old["InstanceId"]], [old["InstanceId"]], replicas]
    assert sent[0][1] == "cloud-init status --wait >/dev/null && systemctl is-active --quiet etcd"
    assert sent[1][1] == "systemctl stop meshd"
    # the copy: a client certificate from the store CA in the coordinators' SSM path, then meshd store copy
    assert f"/mesh-clusters/{mesh}/coordinator/" in sent[2][1] and "meshctl install store-certs" in sent[2][1]
    assert sent[2][1].splitlines()[-1].endswith(f"copy --from sqlite --to {etcd}")
    import subprocess
    for _, script in sent:  # as AWS-RunShellScript runs them: valid bash
        assert subprocess.run(["bash", "-n"], input="set -eu\n" + script, text=True).returncode == 0
    assert commands(seq)[3][1].startswith("systemctl restart meshd")
    launched = first(seq, "RunInstances")
    copied = first(seq, "SendCommand", lambda p: "copy --from" in p["Parameters"]["commands"][-1])
    served = first(seq, "SendCommand", lambda p: "restart meshd" in p["Parameters"]["commands"][-1])
    moved = first(seq, "DisassociateAddress")
    lb = first(seq, "CreateLoadBalancer")
    gone = first(seq, "TerminateInstances")
    assert launched < copied < served < moved < lb < gone
    assert seq[gone][1]["InstanceIds"] == [old["InstanceId"]]
    assert {"SubnetId": seq[lb][1]["SubnetMappings"][0]["SubnetId"], "AllocationId": eip["AllocationId"]} \
        == seq[lb][1]["SubnetMappings"][0]
    assert the_eip(moto, mesh)["PublicIp"] == eip["PublicIp"] and out.address == res.address
    assert len(lbs(moto, out.doc.id)) == 1 and out.doc.last_error == ""
    data = ec2(moto).describe_instance_attribute(InstanceId=replicas[0], Attribute="userData")
    import base64
    assert "AWAIT_IMPORT='1'" in base64.b64decode(data["UserData"]["Value"]).decode()



def test_to_cost_savings_copies_from_etcd_on_the_new_coordinator_and_keeps_the_address(cluster_ops, moto, mesh):
    """The way back (on a cluster made in performance: moto keeps a terminated instance's private address,
    which AWS releases, so coordinator-0 could not come back to its old one here)."""
    calls = Calls()
    ops = cluster_ops(on_client=calls)
    fast = spec(profile="performance", instance_types=(InstanceTypeSpec(FEW[0]),))
    res = create(ops, mesh, fast)
    eip = the_eip(moto, mesh)
    slots = live(moto, mesh)
    replicas = sorted(slots[f"replica-{i}"]["InstanceId"] for i in range(3))
    etcd = "etcds://" + ",".join(f"{slots[f'replica-{i}']['PrivateIpAddress']}:2379" for i in range(3))
    assert not eip.get("InstanceId") and len(lbs(moto, res.doc.id)) == 1
    mark = len(calls.seen)
    back = edit(ops, mesh, dataclasses.replace(fast, profile="cost-savings"))
    seq = calls.since(mark)
    new = live(moto, mesh)
    assert sorted(new) == ["coordinator-0"]
    c0 = new["coordinator-0"]["InstanceId"]
    # the copy runs where the SQLite file will live: the new coordinator-0, from the old replicas' etcd
    sent = commands(seq)
    assert sent[:2] == [([c0], "cloud-init status --wait >/dev/null"), (replicas, "systemctl stop meshd")]
    assert sent[2][0] == [c0] and sent[2][1].splitlines()[-1].endswith(f"copy --from {etcd} --to sqlite")
    assert commands(seq)[3][0] == [c0] and commands(seq)[3][1].startswith("systemctl restart meshd")
    assert first(seq, "RunInstances") < first(seq, "SendCommand") < first(seq, "DeleteLoadBalancer") \
        < first(seq, "AssociateAddress") < first(seq, "TerminateInstances")
    assert sorted(seq[first(seq, "TerminateInstances")][1]["InstanceIds"]) == replicas
    assert the_eip(moto, mesh)["InstanceId"] == c0 and back.address == res.address
    assert not lbs(moto, res.doc.id)


def test_a_failure_before_the_address_moves_leaves_the_old_coordinator_serving(cluster_ops, moto, mesh):
    calls = Calls()
    ops = cluster_ops(on_client=calls)
    cheap = spec(profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0]),))
    create(ops, mesh, cheap)
    old = live(moto, mesh)["coordinator-0"]["InstanceId"]
    before = sum(1 for n, _ in calls.seen if n == "SendCommand")
    # the new replicas' SSM agents are not registered yet: AWS refuses the 4th command (serve the copy)
    calls.fail_at["SendCommand"] = (before + 4, "InvalidInstanceId")
    mark = len(calls.seen)
    with pytest.raises(MeshError, match="InvalidInstanceId"):
        edit(ops, mesh, dataclasses.replace(cheap, profile="performance"))
    seq = calls.since(mark)
    # the old coordinator: stopped for the copy, started again, never terminated, still holding the address
    assert commands(seq)[1] == ([old], "systemctl stop meshd")
    assert commands(seq)[-1] == ([old], "systemctl start meshd")
    assert all(n not in ("DisassociateAddress", "CreateLoadBalancer") for n, _ in seq)
    assert not [p for n, p in seq if n == "TerminateInstances" and old in p["InstanceIds"]]
    assert live(moto, mesh)["coordinator-0"]["InstanceId"] == old and the_eip(moto, mesh)["InstanceId"] == old
    doc = Registry(ops.aws).get(mesh)
    assert "InvalidInstanceId" in doc.last_error and not lbs(moto, doc.id)
    # running the edit again finishes the switch (the import is re-run safe), on the replicas already launched
    replicas = sorted(i["InstanceId"] for s, i in live(moto, mesh).items() if s.startswith("replica-"))
    done = edit(ops, mesh, dataclasses.replace(cheap, profile="performance"))
    assert not done.launched and sorted(live(moto, mesh)) == ["replica-0", "replica-1", "replica-2"]
    assert sorted(i["InstanceId"] for i in live(moto, mesh).values()) == replicas
    assert done.doc.last_error == "" and the_eip(moto, mesh).get("InstanceId") in (None, "")
