"""The coordinators' security groups, as desired state reconciled on every converge.

- `mesh-<cluster>-coordinator` (every coordinator, both profiles): meshd's
  ports (mTLS API and join, adjacent: one range) from anywhere, and etcd's
  client and peer ports (TCP 2379-2380) from this group alone, so only a
  coordinator reaches a replica's etcd.
- `mesh-<cluster>-replica` (performance profile): a replica is *not* in the
  network's `mesh-<cluster>` group, which admits all traffic from every
  peered VPC (security groups only add: one "all traffic" rule would open
  etcd to every VM). It gets that group's rules with TCP 2379-2380 cut out
  instead: "all" from a CIDR becomes TCP 0-2378 and 2381-65535, UDP and
  ICMP. That is four rules per CIDR; past `MAX_RULES` (AWS's default
  inbound rules per group) they spill into `-replica-2`, `-replica-3`.

etcd also requires TLS with a client certificate from the cluster's store CA
(see meshcore.pki); the groups keep everything else from even connecting.
"""

from __future__ import annotations

from typing import Any

from infra.aws import Aws
from infra.desired import Rule
from meshcore.defaults import JOIN_PORT, MESHD_PORT
from meshcore.errors import FailedPrecondition

ETCD_PORTS = (2379, 2380)
MAX_RULES = 60
MAX_REPLICA_GROUPS = 3  # with the coordinator group, 4 of the 5 groups an instance may have


def coordinator_name(cluster: str) -> str:
    return f"mesh-{cluster}-coordinator"


def replica_names(cluster: str, n: int) -> list[str]:
    return [f"mesh-{cluster}-replica" + (f"-{i + 1}" if i else "") for i in range(n)]


def without_etcd(rules: set[Rule] | frozenset[Rule]) -> set[Rule]:
    """The same rules, except that nothing admits TCP `ETCD_PORTS`."""
    lo, hi = ETCD_PORTS
    out: set[Rule] = set()
    for r in rules:
        if r.protocol == "-1":
            out |= {Rule("tcp", 0, lo - 1, r.cidr), Rule("tcp", hi + 1, 65535, r.cidr),
                    Rule("udp", 0, 65535, r.cidr), Rule("icmp", -1, -1, r.cidr)}
        elif r.protocol in ("tcp", "6") and r.from_port is not None and r.from_port <= hi and r.to_port >= lo:
            if r.from_port < lo:
                out.add(Rule("tcp", r.from_port, lo - 1, r.cidr))
            if r.to_port > hi:
                out.add(Rule("tcp", hi + 1, r.to_port, r.cidr))
        else:
            out.add(r)
    return out


def replica_rules(mesh_group_rules: set[Rule] | frozenset[Rule]) -> list[list[Rule]]:
    """The replica groups' rules: the mesh group's without etcd, `MAX_RULES` per group."""
    rules = sorted(without_etcd(mesh_group_rules), key=lambda r: (r.protocol, r.cidr, r.from_port or 0))
    chunks = [rules[i:i + MAX_RULES] for i in range(0, len(rules), MAX_RULES)] or [[]]
    if len(chunks) > MAX_REPLICA_GROUPS:
        raise FailedPrecondition(f"the replicas' security groups would need {len(rules)} rules (more than "
                                 f"{MAX_RULES * MAX_REPLICA_GROUPS}): too many regions for the performance profile")
    return chunks


def coordinator_permissions(group_id: str) -> list[dict[str, Any]]:
    lo, hi = sorted((MESHD_PORT, JOIN_PORT))
    return [{"IpProtocol": "tcp", "FromPort": lo, "ToPort": hi, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "tcp", "FromPort": ETCD_PORTS[0], "ToPort": ETCD_PORTS[1],
             "UserIdGroupPairs": [{"GroupId": group_id}]}]


def _keys(permissions: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """One entry per (protocol, ports, source): what AWS counts as one rule."""
    out: dict[tuple, dict[str, Any]] = {}
    for p in permissions:
        proto = str(p.get("IpProtocol", "-1"))
        ports = (None, None) if proto == "-1" else (p.get("FromPort"), p.get("ToPort"))
        base = {"IpProtocol": proto, **({} if proto == "-1" else {"FromPort": ports[0], "ToPort": ports[1]})}
        for r in p.get("IpRanges", []):
            out[(proto, *ports, "cidr", r["CidrIp"])] = {**base, "IpRanges": [{"CidrIp": r["CidrIp"]}]}
        for g in p.get("UserIdGroupPairs", []):
            out[(proto, *ports, "group", g["GroupId"])] = {**base, "UserIdGroupPairs": [{"GroupId": g["GroupId"]}]}
    return out


def reconcile(aws: Aws, region: str, group: dict[str, Any], want: list[dict[str, Any]]) -> None:
    """Make the group's inbound rules exactly `want` (adds the missing, revokes the rest)."""
    have, need = _keys(group.get("IpPermissions", [])), _keys(want)
    extra = [p for k, p in have.items() if k not in need]
    missing = [p for k, p in need.items() if k not in have]
    if extra:
        aws.call("ec2", region, "RevokeSecurityGroupIngress", GroupId=group["GroupId"], IpPermissions=extra)
    if missing:
        aws.call("ec2", region, "AuthorizeSecurityGroupIngress", GroupId=group["GroupId"], IpPermissions=missing)


def rule_permissions(rules: list[Rule]) -> list[dict[str, Any]]:
    return [r.permission("mesh traffic except etcd") for r in rules]  # AWS allows no quote here
