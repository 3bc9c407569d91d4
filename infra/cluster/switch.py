"""A profile switch in place: cost-savings ↔ performance without any node joining again.

The mesh's whole state (node identities, tokens, address leases, catalog,
gossip and signing keys, the admin deny list) moves from the old
coordinators' store to the new ones' with `meshd store copy`
(meshd/store/snapshot.py), and the stable address (the cluster's Elastic IP,
infra.cluster.address) moves with it, so every agent keeps its certificate,
name, mesh address and `--coordinator`. The order:

1. launch the new coordinators; their meshd starts with `--await-import`, so
   it serves nothing and makes no mesh of its own until the copy arrives;
   the old ones keep serving;
2. wait until the new ones are running and their first boot is done
   (`cloud-init status --wait`; etcd active on replicas);
3. stop meshd on the old coordinators (writes stop; agents keep their data
   plane and names, and reconnect later);
4. `meshd store copy` on the instance that holds the SQLite file (the old
   coordinator-0 towards etcd, the new coordinator-0 from etcd), over the VPC
   to the replicas' etcd (TLS; a client certificate made there for the copy
   from the store CA in the coordinators' SSM path, removed afterwards);
5. restart meshd on the new coordinators: they serve the imported store;
6. move the address (infra.cluster.address.attach);
7. terminate the old coordinators.

A failure in 1-5 starts meshd on the old coordinators again (they were only
stopped) and raises, so `last_error` records it and the old coordinators go
on serving behind the address they still hold; running `meshctl cluster edit`
again repeats the copy (the import is re-run safe: same store id). From 6 on
a re-run finishes the move.

Commands reach the instances through SSM Run Command (AWS-RunShellScript):
the coordinators run the SSM agent (installed by their user data) with the
managed-instance permissions in the mesh-coordinator role (infra.policy).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Callable

from infra.aws import Aws
from infra.cluster.instances import COORDINATOR_ROLES, tag_of
from meshcore.errors import MeshError, Unavailable

#: how long the new coordinators may take to boot (packages, pip install, etcd)
BOOT_WAIT_S = 1200.0
#: how long one command may run on the instances
COMMAND_WAIT_S = 900.0
POLL_S = 5.0
DONE = ("Success", "Failed", "Cancelled", "TimedOut", "Cancelling")


@dataclass(frozen=True)
class Side:
    """The coordinators of one profile: instances (slot → instance) and the store they serve."""

    role: str  # coordinator (SQLite) | replica (etcd)
    instances: dict[str, dict[str, Any]]

    @property
    def ids(self) -> list[str]:
        return sorted(i["InstanceId"] for i in self.instances.values())

    @property
    def store(self) -> str:
        if self.role == "coordinator":
            return "sqlite"
        return "etcds://" + ",".join(f"{i['PrivateIpAddress']}:2379" for _, i in sorted(self.instances.items()))

    def holder(self) -> str | None:
        """The instance holding the SQLite file (None for an etcd side)."""
        return self.ids[0] if self.role == "coordinator" else None


def old_side(found: list[dict[str, Any]], new_role: str) -> Side | None:
    """The live coordinators of the other profile, if any (a switch is under way)."""
    old = {tag_of(i, "mesh:slot"): i for i in found
           if tag_of(i, "mesh:role") in COORDINATOR_ROLES and tag_of(i, "mesh:role") != new_role}
    if not old:
        return None
    return Side(tag_of(next(iter(old.values())), "mesh:role"), old)


class Commands:
    """SSM Run Command: a shell script on instances, waited for (bounded)."""

    def __init__(self, aws: Aws, region: str, sleep: Callable[[float], None], clock: Callable[[], float],
                 note: Callable[[str], None]) -> None:
        self.aws, self.region, self.sleep, self.clock, self.note = aws, region, sleep, clock, note
        self.sent: list[tuple[list[str], str]] = []

    def run(self, ids: list[str], what: str, script: str, timeout: float = COMMAND_WAIT_S) -> None:
        self.note(f"{what} on {', '.join(ids)}")
        cid = self.aws.call("ssm", self.region, "SendCommand", InstanceIds=ids, DocumentName="AWS-RunShellScript",
                            Comment=f"mesh: {what}"[:100], TimeoutSeconds=max(30, int(timeout)),
                            Parameters={"commands": ["set -eu", script]})["Command"]["CommandId"]
        self.sent.append((ids, script))
        deadline = self.clock() + timeout
        pending = set(ids)
        while pending:
            for iid in sorted(pending):
                try:
                    inv = self.aws.call("ssm", self.region, "GetCommandInvocation", CommandId=cid, InstanceId=iid)
                except MeshError as e:  # InvocationDoesNotExist for a moment after SendCommand
                    if "InvocationDoesNotExist" not in str(getattr(e, "aws_code", "")):
                        raise
                    continue
                if inv.get("Status") in DONE:
                    if inv["Status"] != "Success":
                        err = (inv.get("StandardErrorContent") or inv.get("StatusDetails") or "").strip()
                        raise Unavailable(f"{what} failed on {iid}: {inv['Status']}: {err[-300:]}")
                    pending.discard(iid)
            if not pending:
                return
            if self.clock() > deadline:
                raise Unavailable(f"{what} did not finish on {', '.join(sorted(pending))} within {timeout:.0f} s")
            self.sleep(POLL_S)


BOOTED = "cloud-init status --wait >/dev/null"
ETCD_UP = "systemctl is-active --quiet etcd"
STOP = "systemctl stop meshd"
START = "systemctl start meshd"
# Type=notify: active once meshd has printed its ready line, i.e. serves the imported store.
RESTART = "systemctl restart meshd && for i in $(seq 120); do systemctl is-active --quiet meshd && exit 0; " \
          "sleep 1; done; systemctl status meshd --no-pager | tail -5 >&2; exit 1"


def copy_script(cluster: str, main_region: str, source: str, target: str) -> str:
    """`meshd store copy`, with a client certificate for the replicas' etcd made from the store CA (read from
    the coordinators' SSM path with the instance role, used once, removed with the certificate)."""
    q = shlex.quote
    return "\n".join([
        'd=$(mktemp -d /run/mesh-switch.XXXXXX); trap \'rm -rf "$d"\' EXIT',
        f"/opt/mesh/bin/python - {q(main_region)} {q('/mesh-clusters/' + cluster + '/coordinator/')} \"$d\" <<'PY'",
        "import sys, boto3",
        "region, prefix, d = sys.argv[1:4]",
        "ssm = boto3.client('ssm', region_name=region)",
        "for name, file in (('store-ca-key', 'ca.key'), ('store-ca-cert', 'ca.crt')):",
        "    value = ssm.get_parameter(Name=prefix + name, WithDecryption=True)['Parameter']['Value']",
        "    open(f'{d}/{file}', 'w').write(value)",
        "PY",
        'meshctl install store-certs --ca-key "$d/ca.key" --ca-cert "$d/ca.crt" --name switch --address 127.0.0.1 '
        '--etcd-dir "$d/etcd" --meshd-dir "$d/meshd" >/dev/null',
        'meshd store --etcd-ca "$d/meshd/ca.crt" --etcd-cert "$d/meshd/client.crt" --etcd-key "$d/meshd/client.key" '
        f"copy --from {q(source)} --to {q(target)}",
    ])


def wait_running(aws: Aws, region: str, ids: list[str], sleep: Callable[[float], None],
                 clock: Callable[[], float], timeout: float = BOOT_WAIT_S) -> None:
    deadline = clock() + timeout
    while True:
        out = aws.paginate("ec2", region, "DescribeInstances", "Reservations", InstanceIds=ids)
        states = {i["InstanceId"]: i.get("State", {}).get("Name") for r in out for i in r.get("Instances", [])}
        bad = {i: s for i, s in states.items() if s in ("shutting-down", "terminated", "stopping", "stopped")}
        if bad:
            raise Unavailable("new coordinators are not running: " + ", ".join(f"{i} {s}" for i, s in bad.items()))
        if all(states.get(i) == "running" for i in ids):
            return
        if clock() > deadline:
            raise Unavailable(f"new coordinators not running after {timeout:.0f} s: {', '.join(ids)}")
        sleep(POLL_S)


def move_store(cmd: Commands, aws: Aws, cluster: str, old: Side, new: Side, sleep: Callable[[float], None],
               clock: Callable[[], float]) -> None:
    """Steps 2-5 of the module docstring; on failure the old coordinators serve again, then it raises."""
    wait_running(aws, cmd.region, new.ids, sleep, clock)
    cmd.run(new.ids, "waiting for the first boot", BOOTED + (f" && {ETCD_UP}" if new.role == "replica" else ""),
            timeout=BOOT_WAIT_S)
    stopped = False
    try:
        cmd.run(old.ids, "stopping meshd (writes stop)", STOP)
        stopped = True
        holder = old.holder() or new.holder()
        assert holder is not None  # one side is SQLite: a switch is between the two profiles
        cmd.run([holder], "copying the store", copy_script(cluster, cmd.region, old.store, new.store))
        cmd.run(new.ids, "serving the copied store", RESTART)
    except (MeshError, KeyboardInterrupt):
        if stopped:
            restart_old(cmd, old)
        raise


def restart_old(cmd: Commands, old: Side) -> None:
    """Best effort: the old coordinators serve again (the error that brought us here is the one to report)."""
    try:
        cmd.run(old.ids, "starting meshd again on the old coordinators", START, timeout=120)
    except MeshError as e:
        cmd.note(f"could not start meshd again on {', '.join(old.ids)}: {e}")
