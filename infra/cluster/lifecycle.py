"""Create, edit and delete a cluster: one converge loop, re-runnable after any failure.

`create` records the cluster (the name is taken atomically), then converges;
`edit` stores the next spec version, then converges; both run `converge`:

0. before anything is built: the vCPU quotas every region needs
   (infra.cluster.capacity; a shortfall stops here, naming what to
   request) and the cost of the spec's profile and of the other one
   (infra.cluster.costs, when prices are given);
1. local secrets: the mesh CA certificate, a 30-day admin certificate for
   meshctl, and a bootstrap join string, kept in the context directory
   (fetched from the account when another machine created them); the CA key
   is on this machine only until step 4 has stored it for the coordinators;
2. the stable address (Elastic IP or load balancer), so it can be written
   into the join parameters and the instances' user data;
3. the network: `infra.apply` with the join parameters;
4. the coordinators' secrets in SSM (with the store CA, made here once, whose
   key exists only there: the CA etcd trusts, not the mesh CA every node has
   a certificate from), their security groups (infra.cluster.groups), the
   cluster's own instance roles (infra.cluster.roles);
5. instances: missing slots launched, extra or mismatched ones terminated,
   the address pointed at the coordinators. A profile change first moves
   the mesh to the new coordinators in place (infra.cluster.switch: new ones
   launched, the store copied, the address moved, then the old ones
   terminated); until the address moves, a failure leaves the old ones serving.

Each step reads what exists before acting, so a run that died anywhere
(throttling, a partial failure, Ctrl-C) is finished by running the same
command again. A failure is recorded in the cluster document (`last_error`),
which `meshctl clusters` shows; the next successful run clears it.

`delete` marks the document `deleting`, removes instances, address,
security group, instance roles, network and secrets, then sweeps every enabled region for
anything still tagged with the cluster and lists it; the document goes only
when nothing is left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from infra.apply import ApplyProgress, apply
from infra.aws import Aws, AwsError
from infra import catalog
from infra import quotas as quota_api
from infra.cluster import address, capacity, costs, instances, package, roles, switch
from infra.cluster import groups as sg
from infra.cluster.instances import Slot, cluster_filters, cluster_tags, tag_of
from infra.cluster.registry import Registry, secret_prefix
from infra.cluster.spec import ClusterDoc, ClusterSpec, check_edit, validate
from infra.destroy import destroy
from infra.regions import ENABLED, Selection, list_regions, select_regions
from infra.state import read_region, tag_filters
from meshcore import pki
from meshcore.defaults import MESHD_PORT
from meshcore.errors import AlreadyExists, ConfigError, FailedPrecondition, MeshError, Unavailable
from meshcore.names import check_cluster_name

TERMINATE_WAIT_S = 600.0
# Beside the spec, in the main region, for coordinators at boot and for other machines of the user.
SECRETS = ("ca-key", "join-token", "store-ca-key", "store-ca-cert")
POLL_S = 5.0


@dataclass
class Result:
    doc: ClusterDoc
    address: str = ""
    launched: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    estimates: list[Any] = field(default_factory=list)  # costs.Estimate: this profile, then the other
    quotas: list[Any] = field(default_factory=list)  # quotas.QuotaRow checked before launching
    calls: int = 0
    seconds: float = 0.0


@dataclass
class Ops:
    """What a lifecycle call needs besides the cluster: the account, where clusters are
    recorded, where local secrets live, and the injected clock."""

    aws: Aws
    registry: Registry
    secrets_dir: Callable[[str], Path]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    progress: ApplyProgress | None = None
    selections: dict = field(default_factory=dict)  # reused per spec within one process (benchmarks, tests)
    prices: Any = None  # infra.prices.Prices: estimates are made when set
    check_quotas: bool = True
    # Builds a wheel of the running mesh into a directory (a spec without `package`); the wheels
    # built in this process, by their s3:// URL, are kept until uploaded.
    wheel: Callable[[Path], Path] = package.build_running
    wheels: dict[str, Any] = field(default_factory=dict)


def new_doc(name: str, spec: ClusterSpec) -> ClusterDoc:
    return ClusterDoc(id="c" + secrets.token_hex(5), name=name, spec=spec,
                      created_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def create(ops: Ops, name: str, spec: ClusterSpec, known_id: str | None = None,
           on_recorded: Callable[[ClusterDoc], None] | None = None) -> Result:
    """Create cluster `name`, or finish creating it when `known_id` is the id this machine recorded.

    `on_recorded` is called once the name is taken (the CLI saves the context then, so an
    interrupted create can be resumed)."""
    check_cluster_name(name)
    doc = ops.registry.get(name)
    if not spec.package:  # the version this machine runs: the stored one on a re-run, else a new wheel
        spec = replace(spec, package=doc.spec.package if doc is not None and doc.id == known_id
                       else _wheel_url(ops, name))
    validate(spec)
    if doc is not None:
        if doc.id != known_id:
            raise AlreadyExists(f"cluster name {name!r} is taken by cluster {doc.id} in this account: "
                                "choose another name, or delete that cluster first")
        if doc.phase == "deleting":
            raise FailedPrecondition(f"cluster {name} is being deleted: finish with `meshctl cluster delete {name}`")
        if doc.spec != spec:
            raise FailedPrecondition(f"cluster {name} exists with another spec: change it with "
                                     f"`meshctl cluster edit {name}`")
    else:
        roles.check_name(name)
        _check_mesh_name_free(ops.aws, name, spec.main_region)
        doc = ops.registry.create(new_doc(name, spec))
    if on_recorded is not None:
        on_recorded(doc)
    return _recorded(ops, doc, lambda: converge(ops, doc))


def edit(ops: Ops, name: str, new: ClusterSpec, base_version: int | None = None) -> Result:
    """Store `new` as the next spec version and converge; nothing changes if it is invalid.
    A spec without `package` keeps the cluster's."""
    doc = _existing(ops, name)
    if not new.package:
        new = replace(new, package=doc.spec.package)
    validate(new)
    if base_version is not None and doc.version != base_version:
        raise FailedPrecondition(f"cluster {name} changed while it was being edited (version {base_version} → "
                                 f"{doc.version}): edit again")
    check_edit(doc.spec, new)
    if doc.spec != new:
        doc = ops.registry.update(replace(doc, spec=new))
    return _recorded(ops, doc, lambda: converge(ops, doc))


def _existing(ops: Ops, name: str) -> ClusterDoc:
    check_cluster_name(name)
    doc = ops.registry.get(name)
    if doc is None:
        raise FailedPrecondition(f"no cluster named {name!r} in this account (`meshctl clusters` lists them)")
    if doc.phase == "deleting":
        raise FailedPrecondition(f"cluster {name} is being deleted: finish with `meshctl cluster delete {name}`")
    return doc


def _check_mesh_name_free(aws: Aws, name: str, region: str) -> None:
    vpcs = aws.call("ec2", region, "DescribeVpcs", Filters=tag_filters(name)).get("Vpcs", [])
    if vpcs:
        raise AlreadyExists(f"cluster name {name!r} is taken by a mesh network built with `meshctl infra apply` "
                            f"({vpcs[0]['VpcId']} in {region}): choose another name")


def _recorded(ops: Ops, doc: ClusterDoc, body: Callable[[], Result]) -> Result:
    """Run `body`; record a failure in the document (best effort), clear it on success."""
    t0, calls0 = ops.clock(), ops.aws.calls
    try:
        result = body()
    except (MeshError, KeyboardInterrupt) as e:
        _note_failure(ops, doc, str(e) or "interrupted")
        raise
    current = ops.registry.get(doc.name)
    if current is not None and current.last_error:
        current = ops.registry.update(replace(current, last_error=""))
    result.doc = current or result.doc
    result.calls, result.seconds = ops.aws.calls - calls0, ops.clock() - t0
    return result


def _note_failure(ops: Ops, doc: ClusterDoc, why: str) -> None:
    """Keep `why` with the cluster for `meshctl clusters` (best effort: the original error is the one to report)."""
    try:
        current = ops.registry.get(doc.name)
        if current is not None and current.id == doc.id:
            ops.registry.update(replace(current, last_error=why[:1000]))
    except MeshError:
        pass


# -- converge -------------------------------------------------------------------

@dataclass(frozen=True)
class Secrets:
    directory: Path
    ca: pki.CertificateAuthority
    token_file: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"


#: the context directory's admin certificate: it may issue others (`meshctl admin cert`), and it is
#: re-issued by any converge or `cluster use` once a third of its life is left
ADMIN_CERT_DAYS = 30


def local_secrets(ops: Ops, doc: ClusterDoc) -> Secrets:
    """The CA, admin certificate and bootstrap join string in the context directory.

    The CA is made here on the first create, and its key stays on this machine only
    until the coordinators' copy is in SSM (`converge` then removes `ca.key`); after
    that it is read from the account into memory when an admin certificate is due,
    never written to disk (the CA must never be made twice: a new one would lock out
    every node). The admin certificate lives ADMIN_CERT_DAYS."""
    d = ops.secrets_dir(doc.name)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    region, prefix = doc.spec.main_region, secret_prefix(doc.name)
    if (d / "ca.key").exists():
        ca = pki.CertificateAuthority.load_or_create(d, name=f"mesh CA {doc.name}")
    else:
        stored = {k: _param(ops.aws, region, n) for k, n in (("ca.key", prefix + "ca-key"),
                                                              ("join-token", prefix + "join-token"))}
        if stored["ca.key"] is not None:
            crt = _param(ops.aws, region, f"/mesh/{doc.name}/ca-cert")
            if crt is None or stored["join-token"] is None:
                raise FailedPrecondition(f"cluster {doc.name}: the CA key is stored but its certificate or join "
                                         "token is missing in SSM; restore them or delete the cluster")
            ca = pki.CertificateAuthority(pki.load_key(stored["ca.key"].encode(), prefix + "ca-key"),
                                          pki.load_cert(crt.encode(), f"/mesh/{doc.name}/ca-cert"))
            pki.write_file(d / "ca.crt", crt.encode())
            if not (d / "join-token").exists():
                pki.write_file(d / "join-token", stored["join-token"].encode(), private=True)
        else:
            ca = pki.CertificateAuthority.load_or_create(d, name=f"mesh CA {doc.name}")
    token = d / "join-token"
    if not token.exists():
        from meshcore.jointoken import new_join_string

        pki.write_file(token, new_join_string(pki.pin(ca.pem)).encode(), private=True)
    if _admin_cert_due(d / "admin.crt"):
        key = pki.new_key()
        pki.write_file(d / "admin.key", pki.key_pem(key), private=True)
        pki.write_file(d / "admin.crt", ca.sign_csr(pki.make_csr(key, "meshctl"), "meshctl", pki.KIND_ADMIN_ISSUER,
                                                    days=ADMIN_CERT_DAYS))
    return Secrets(d, ca, token)


def store_ca(aws: Aws, doc: ClusterDoc) -> None:
    """The CA the replicas' etcd trusts for clients and peers, made once and kept in SSM only (the
    coordinators' path): a node certificate from the mesh CA is worth nothing to etcd."""
    region, prefix = doc.spec.main_region, secret_prefix(doc.name)
    if _described(aws, region, prefix + "store-ca-key") and _described(aws, region, prefix + "store-ca-cert"):
        return
    ca = pki.CertificateAuthority.new(f"mesh store CA {doc.name}")
    _put_secret(aws, region, prefix + "store-ca-key", pki.key_pem(ca.key).decode())
    _put_secret(aws, region, prefix + "store-ca-cert", ca.pem.decode())


def _admin_cert_due(path: Path) -> bool:
    try:
        cert = pki.load_cert(path.read_bytes(), str(path))
    except (OSError, MeshError):
        return True
    return pki.renew_due(cert)


def _param(aws: Aws, region: str, name: str) -> str | None:
    try:
        return aws.call("ssm", region, "GetParameter", Name=name, WithDecryption=True)["Parameter"]["Value"]
    except AwsError as e:
        if e.aws_code == "ParameterNotFound":
            return None
        raise


def _described(aws: Aws, region: str, name: str) -> dict[str, Any] | None:
    """A parameter's metadata (no value, so no decryption), or None."""
    found = aws.call("ssm", region, "DescribeParameters",
                     ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [name]}]).get("Parameters", [])
    return found[0] if found else None


def _put_secret(aws: Aws, region: str, name: str, value: str) -> None:
    digest = "managed by meshctl; sha256:" + hashlib.sha256(value.encode()).hexdigest()[:32]
    if (_described(aws, region, name) or {}).get("Description") == digest:
        return
    aws.call("ssm", region, "PutParameter", Name=name, Type="SecureString", Value=value, Description=digest,
             Overwrite=True)


def selection_key(spec: ClusterSpec) -> tuple:
    return (spec.main_region, tuple(t.name for t in spec.instance_types), spec.regions)


def selection(ops: Ops, doc: ClusterDoc, aws_cfg: Any) -> Selection:
    key = selection_key(doc.spec)
    if key not in ops.selections:
        ops.selections[key] = select_regions(aws_cfg, ops.aws)
    return ops.selections[key]


def _progress(ops: Ops) -> ApplyProgress:
    return ops.progress or ApplyProgress()


@dataclass
class Preview:
    estimates: list[Any]  # costs.Estimate, the spec's profile first
    quotas: list[Any]  # quotas.QuotaRow
    warm_regions: dict[str, str]
    selection: Selection

    @property
    def short(self) -> list[Any]:
        return [r for r in self.quotas if r.short]


def preview(ops: Ops, doc: ClusterDoc, price: bool = True) -> Preview:
    """Which quotas the spec needs and (`price`) what it will cost; read-only (offerings, quotas, prices)."""
    sel = selection(ops, doc, doc.spec.to_infra(doc.name))
    offered = {r.name: r.offered for r in sel.regions if r.selected}
    vcpus = dict(sel.vcpus)
    coord = doc.spec.coordinator_instance_type
    if coord not in vcpus:
        try:
            found = catalog.describe(ops.aws, doc.spec.main_region, [coord])
        except AwsError as e:
            if not e.aws_code.startswith("InvalidInstanceType"):
                raise
            found = {}
        if coord not in found:
            raise ConfigError(f"coordinator_instance_type {coord} is not offered in {doc.spec.main_region}")
        vcpus[coord] = found[coord].vcpus
    warm = instances.warm_slots(doc, offered)
    rows = []
    if ops.check_quotas:
        there = {instances.tag_of(i, "mesh:slot") for r in {doc.spec.main_region, *(s.region for s in warm)}
                 for i in instances.find(ops.aws, doc.name, r)} if doc.version else set()
        rows = quota_api.check_needs(ops.aws, capacity.needs(doc, offered, vcpus, there), count_used=True)
    warm_regions = {s.instance_type: s.region for s in warm}
    out = Preview([], rows, warm_regions, sel)
    if price:
        out.estimates = estimate(ops, doc, out)
    return out


def estimate(ops: Ops, doc: ClusterDoc, pre: Preview) -> list[Any]:
    return costs.both(doc.spec, ops.prices, pre.warm_regions) if ops.prices is not None else []


def converge(ops: Ops, doc: ClusterDoc) -> Result:
    aws, spec, region = ops.aws, doc.spec, doc.spec.main_region
    result = Result(doc)
    before = preview(ops, doc, price=False)
    result.quotas = before.quotas
    if before.short:  # before any network, secret or instance: nothing to undo
        raise FailedPrecondition(capacity.shortfall_message(doc.name, before.quotas))
    result.estimates = estimate(ops, doc, before)
    progress = _progress(ops)
    if result.estimates:  # said before anything is built, so Ctrl-C still costs nothing
        progress.fact(f"{doc.name} costs " + "; ".join(
            f"{e.profile}{' (this spec)' if i == 0 else ' if switched'} {costs.money(e.hour)}/h, {costs.money(e.day)}/day"
            for i, e in enumerate(result.estimates)))
    progress.phase("local secrets")
    sec = local_secrets(ops, doc)
    sel = before.selection
    main = read_region(aws, doc.name, region)
    if not main.subnets:  # the network first: the load balancer needs its subnets
        progress.phase("network")
        _apply(ops, spec.to_infra(doc.name, ca_cert_file=str(sec.ca_file), join_token_file=str(sec.token_file)), sel)
        main = read_region(aws, doc.name, region)
    progress.phase("stable address")
    host = address.ensure(aws, doc, main)
    result.address = f"{host}:{MESHD_PORT}"
    cfg = spec.to_infra(doc.name, meshd_address=result.address, ca_cert_file=str(sec.ca_file),
                        join_token_file=str(sec.token_file))
    progress.phase("network with the join parameters")
    if _apply(ops, cfg, sel):
        main = read_region(aws, doc.name, region)
    progress.phase("coordinator secrets and security group")
    _put_secret(aws, region, secret_prefix(doc.name) + "ca-key", pki.key_pem(sec.ca.key).decode())
    (sec.directory / "ca.key").unlink(missing_ok=True)  # the coordinators' copy is the one from now on
    _put_secret(aws, region, secret_prefix(doc.name) + "join-token", sec.token_file.read_text().strip())
    store_ca(aws, doc)
    group = coordinator_group(aws, doc, main.vpc_id())
    progress.phase("instance roles")
    roles.ensure(aws, doc.name)  # before the package: its bucket policy names them
    if _ours(ops, doc):
        progress.phase("the package, for this cluster's instances only")
        _publish(ops, doc)
    offered = {r.name: r.offered for r in sel.regions if r.selected}
    coordinators = instances.coordinator_slots(doc, main)
    replica = replica_groups(aws, doc, main) if any(s.role == "replica" for s in coordinators) else []
    slots = coordinators + instances.warm_slots(doc, offered)
    etcd = instances.etcd_members(coordinators)
    states = {region: main}
    old = switch.old_side(instances.find(aws, doc.name, region), coordinators[0].role)
    if old is not None:
        _switch(ops, doc, main, coordinators, old, group, etcd, result)
    found: dict[str, dict[str, Any]] = {}
    stopping: dict[str, list[str]] = {}
    progress.phase("instances")
    for r in sorted({s.region for s in slots} | {region}):
        for inst in instances.find(aws, doc.name, r):
            slot_name = tag_of(inst, "mesh:slot")
            want = next((s for s in slots if s.name == slot_name and s.region == r), None)
            if want is None or not instances.matches(inst, want) or slot_name in found:
                instances.terminate(aws, r, [inst["InstanceId"]])
                progress.note(r, f"terminating {inst['InstanceId']} ({slot_name or 'no slot'})")
                stopping.setdefault(r, []).append(inst["InstanceId"])
                result.terminated.append(f"{r}/{inst['InstanceId']} ({slot_name or 'no slot'})")
            else:
                found[slot_name] = inst
    _wait_terminated(ops, stopping)  # a replacement may need the fixed address the old one holds
    images: dict[str, str] = {}
    for s in slots:
        if s.name in found:
            continue
        st = states.get(s.region) or states.setdefault(s.region, read_region(aws, doc.name, s.region))
        subnet = _subnet_for(st, s)
        # a replica's etcd must not be in reach of the mesh group's "all traffic from the peered VPCs"
        groups = list(replica) if s.role == "replica" else [g.id for g in st.groups if g.name == f"mesh-{doc.name}"]
        if s.role in instances.COORDINATOR_ROLES:
            groups.append(group)
        if s.region not in images:
            images[s.region] = instances.image(aws, doc, s.region)
        data = instances.user_data(doc, s, result.address, etcd)
        iid = instances.launch(aws, doc, s, subnet, groups, images[s.region], data)
        found[s.name] = {"InstanceId": iid, "PrivateIpAddress": s.private_ip}
        result.launched.append(f"{s.region}/{iid} ({s.name})")
        progress.note(s.region, f"launched {iid} ({s.name})")
    progress.phase("pointing the address at the coordinators")
    address.attach(aws, doc, main, {s.name: found[s.name] for s in coordinators if s.name in found})
    return result


def _caller(ops: Ops) -> tuple[str, str]:
    """(account, the caller's IAM principal), asked once per Ops."""
    if "caller" not in ops.wheels:
        from infra.cluster.access import caller_principal

        me = ops.aws.call("sts", "us-east-1", "GetCallerIdentity")
        ops.wheels["caller"] = (me["Account"], caller_principal(me["Arn"]))
    return ops.wheels["caller"]


def _wheel_url(ops: Ops, name: str) -> str:
    """Build a wheel of the running mesh (kept in `ops.wheels` until uploaded); its s3:// URL."""
    wheel, tmp = package.build_in_temp(ops.wheel)
    url = package.plan_url(_caller(ops)[0], name, wheel)
    ops.wheels[url] = (wheel, tmp)
    return url


def _ours(ops: Ops, doc: ClusterDoc) -> bool:
    """Whether the spec's package is the wheel `create` keeps in this cluster's bucket."""
    if not doc.spec.package.startswith(package.SCHEME):
        return False
    return package.parse_url(doc.spec.package)[0] == package.bucket_name(_caller(ops)[0], doc.name)


def _publish(ops: Ops, doc: ClusterDoc) -> None:
    """The cluster's bucket as package.py describes it, with the wheel of the spec's URL in it."""
    url = doc.spec.package
    account = _caller(ops)[0]

    def wheel() -> Path:  # only when the bucket lacks it: this machine must run the very same build
        if url not in ops.wheels:
            built, tmp = package.build_in_temp(ops.wheel)
            if package.plan_url(account, doc.name, built) != url:
                raise FailedPrecondition(f"cluster {doc.name}'s package {url} is not in its bucket and this machine "
                                         f"runs another build ({built.name}): run the command where the cluster "
                                         "was created, or set another package with `meshctl cluster edit`")
            ops.wheels[url] = (built, tmp)
        return ops.wheels[url][0]
    readers = [f"arn:aws:iam::{account}:role/{instances.profile_name(doc, role)}" for role in ("agent", "replica")]
    package.publish(ops.aws, doc.name, doc.spec.main_region, url, wheel, readers)


def _switch(ops: Ops, doc: ClusterDoc, main: Any, coordinators: list[Slot], old: switch.Side, group: str,
            etcd: str, result: Result) -> None:
    """Move the mesh from the other profile's coordinators to this one's (infra.cluster.switch)."""
    aws, region, progress = ops.aws, doc.spec.main_region, _progress(ops)
    if address.legacy(aws, doc):
        raise FailedPrecondition(f"cluster {doc.name}: its address is a load balancer's DNS name (made before "
                                 "profiles shared the Elastic IP); switching would change every node's "
                                 "coordinator address: recreate the cluster to switch profiles")
    progress.phase(f"profile switch: launching the {doc.spec.profile} coordinators (the old ones keep serving)")
    have = {tag_of(i, "mesh:slot"): i for i in instances.find(aws, doc.name, region)}
    new: dict[str, dict[str, Any]] = {}
    image = ""
    for s in coordinators:
        inst = have.get(s.name)
        if inst is not None and instances.matches(inst, s):
            new[s.name] = inst
            continue
        if inst is not None:
            raise FailedPrecondition(f"{s.name} ({inst['InstanceId']}) does not match its slot while the profile "
                                     "switch is under way: terminate it and run the edit again")
        image = image or instances.image(aws, doc, region)
        # as in converge: a replica's etcd must not be in reach of the mesh group's rules
        groups = (replica_groups(aws, doc, main) if s.role == "replica"
                  else [g.id for g in main.groups if g.name == f"mesh-{doc.name}"]) + [group]
        iid = instances.launch(aws, doc, s, _subnet_for(main, s), groups, image,
                               instances.user_data(doc, s, result.address, etcd, await_import=True))
        new[s.name] = {"InstanceId": iid, "PrivateIpAddress": s.private_ip}
        result.launched.append(f"{region}/{iid} ({s.name})")
        progress.note(region, f"launched {iid} ({s.name})")
    cmd = switch.Commands(aws, region, ops.sleep, ops.clock, lambda m: progress.note(region, m))
    progress.phase("profile switch: stopping writes on the old coordinators and copying the store")
    switch.move_store(cmd, aws, doc.name, old, switch.Side(coordinators[0].role, new), ops.sleep, ops.clock)
    progress.phase("profile switch: moving the address")
    try:
        address.attach(aws, doc, main, new)
    except (MeshError, KeyboardInterrupt):
        switch.restart_old(cmd, old)
        raise
    progress.phase("profile switch: terminating the old coordinators")
    instances.terminate(aws, region, old.ids)
    for slot_name, inst in sorted(old.instances.items()):
        result.terminated.append(f"{region}/{inst['InstanceId']} ({slot_name})")
        progress.note(region, f"terminating {inst['InstanceId']} ({slot_name})")
    _wait_terminated(ops, {region: old.ids})


def _apply(ops: Ops, cfg: Any, sel: Selection) -> bool:
    """Apply the network; True if anything changed."""
    res = apply(cfg, aws=ops.aws, selection=sel, sleep=ops.sleep, clock=ops.clock, progress=ops.progress)
    if res.failed:
        region, why = sorted(res.failed.items())[0]
        more = f" (and {len(res.failed) - 1} more regions)" if len(res.failed) > 1 else ""
        raise Unavailable(f"network not complete: {region}: {why}{more}; run the command again to finish")
    return bool(res.done)


def _subnet_for(st: Any, slot: Slot) -> str:
    subnets = sorted(st.subnets, key=lambda s: s.zone)
    if not subnets:
        raise FailedPrecondition(f"region {slot.region} has no mesh subnets: the network is not complete")
    if slot.zone:
        return next(s.id for s in subnets if s.zone == slot.zone)
    return subnets[0].id


def _groups(aws: Aws, name: str, region: str) -> list[dict[str, Any]]:
    """The cluster's own security groups in `region` (the network's are the infra builder's)."""
    return [g for g in aws.call("ec2", region, "DescribeSecurityGroups",
                                Filters=cluster_filters(name)).get("SecurityGroups", [])
            if tag_of(g, "mesh:cluster") == name]


def _group(aws: Aws, doc: ClusterDoc, vpc: str | None, name: str, role: str, description: str) -> dict[str, Any]:
    """The cluster's security group called `name` in the main region's VPC, created if missing."""
    region = doc.spec.main_region
    found = [g for g in _groups(aws, doc.name, region) if g.get("VpcId") == vpc and g.get("GroupName") == name]
    if found:
        return found[0]
    gid = aws.call("ec2", region, "CreateSecurityGroup", GroupName=name, VpcId=vpc, Description=description,
                   TagSpecifications=[{"ResourceType": "security-group",
                                       "Tags": cluster_tags(doc.name, role=role)}])["GroupId"]
    return {"GroupId": gid, "IpPermissions": []}


def coordinator_group(aws: Aws, doc: ClusterDoc, vpc: str | None) -> str:
    """The group that opens meshd's ports to the world and etcd's to the coordinators alone (infra.cluster.groups)."""
    g = _group(aws, doc, vpc, sg.coordinator_name(doc.name), "coordinator",
               "meshd: mTLS API and join (TLS, token-gated); etcd from coordinators only")
    sg.reconcile(aws, doc.spec.main_region, g, sg.coordinator_permissions(g["GroupId"]))
    return g["GroupId"]


def replica_groups(aws: Aws, doc: ClusterDoc, main: Any) -> list[str]:
    """The groups a replica has instead of the network's `mesh-<cluster>`: its rules without etcd's ports."""
    mesh = next((g for g in main.groups if g.name == f"mesh-{doc.name}"), None)
    if mesh is None:
        raise FailedPrecondition(f"the main region has no security group mesh-{doc.name}: the network is not complete")
    chunks = sg.replica_rules(mesh.rules)
    ids = []
    for i, name in enumerate(sg.replica_names(doc.name, sg.MAX_REPLICA_GROUPS)):
        existing = [g for g in _groups(aws, doc.name, doc.spec.main_region) if g.get("GroupName") == name]
        if i >= len(chunks):
            for g in existing:  # fewer rules than before: an emptied group stays harmless
                sg.reconcile(aws, doc.spec.main_region, g, [])
            continue
        g = _group(aws, doc, main.vpc_id(), name, "replica", "mesh replica: mesh traffic except etcd")
        sg.reconcile(aws, doc.spec.main_region, g, sg.rule_permissions(chunks[i]))
        ids.append(g["GroupId"])
    return ids


# -- delete ---------------------------------------------------------------------

def delete(ops: Ops, name: str) -> Result:
    check_cluster_name(name)
    doc = ops.registry.get(name)
    if doc is None:
        raise FailedPrecondition(f"no cluster named {name!r} in this account (`meshctl clusters` lists them)")
    if doc.phase != "deleting":
        doc = ops.registry.update(replace(doc, phase="deleting"))
    t0, calls0 = ops.clock(), ops.aws.calls
    try:
        result = _delete(ops, doc)
    except (MeshError, KeyboardInterrupt) as e:
        _note_failure(ops, doc, str(e) or "interrupted")
        raise
    if result.leftovers:
        _note_failure(ops, doc, f"{len(result.leftovers)} resources left: " + "; ".join(result.leftovers)[:900])
    else:
        ops.registry.delete(name)
    result.calls, result.seconds = ops.aws.calls - calls0, ops.clock() - t0
    return result


def _delete(ops: Ops, doc: ClusterDoc) -> Result:
    aws, region = ops.aws, doc.spec.main_region
    result = Result(doc)
    progress = _progress(ops)
    progress.phase("terminating instances")
    regions = sorted(r for r, s in list_regions(aws).items() if s in ENABLED)
    pending: dict[str, list[str]] = {}
    for r in regions:
        ids = [i["InstanceId"] for i in instances.find(aws, doc.name, r)]
        instances.terminate(aws, r, ids)
        result.terminated += [f"{r}/{i}" for i in ids]
        for i in ids:
            progress.note(r, f"terminating {i}")
        if ids:
            pending[r] = ids
    _wait_terminated(ops, pending)
    progress.phase("address and coordinator security group")
    address.remove(aws, doc)
    for g in _groups(aws, doc.name, region):
        aws.call("ec2", region, "DeleteSecurityGroup", GroupId=g["GroupId"])
    progress.phase("instance roles")
    roles.remove(aws, doc.name)
    progress.phase("network")
    net = destroy(doc.spec.to_infra(doc.name), aws, progress=progress.note, clock=ops.clock)
    progress.phase("secrets, then a sweep for anything left")
    for key in SECRETS:
        try:
            aws.call("ssm", region, "DeleteParameter", Name=secret_prefix(doc.name) + key)
        except AwsError as e:
            if e.aws_code != "ParameterNotFound":
                raise
    if _ours(ops, doc):
        progress.phase("the package bucket")
        package.remove(aws, _caller(ops)[0], doc.name, region)
    result.leftovers = [f"{x.region}: {x.resource} ({x.reason})" for x in net.leftovers]
    result.leftovers += sweep(aws, doc, regions)
    if _ours(ops, doc) and package.exists(aws, package.bucket_name(_caller(ops)[0], doc.name), region):
        result.leftovers.append(f"{region}: bucket {package.bucket_name(_caller(ops)[0], doc.name)}")
    return result


def _wait_terminated(ops: Ops, pending: dict[str, list[str]]) -> None:
    """Until every instance is terminated (a VPC cannot go while one is shutting down); bounded."""
    deadline = ops.clock() + TERMINATE_WAIT_S
    while pending:
        for r in list(pending):
            out = ops.aws.paginate("ec2", r, "DescribeInstances", "Reservations", InstanceIds=pending[r])
            left = [i["InstanceId"] for res in out for i in res.get("Instances", [])
                    if i.get("State", {}).get("Name") != "terminated"]
            if left:
                pending[r] = left
            else:
                del pending[r]
        if not pending:
            return
        _progress(ops).waiting(", ".join(sorted(pending)), f"{sum(map(len, pending.values()))} instance(s) "
                               "to finish terminating")
        if ops.clock() > deadline:
            raise Unavailable(f"instances still shutting down after {TERMINATE_WAIT_S:.0f} s: "
                              + ", ".join(f"{r}/{i}" for r, ids in pending.items() for i in ids)
                              + "; run the delete again")
        ops.sleep(POLL_S)


def sweep(aws: Aws, doc: ClusterDoc, regions: list[str]) -> list[str]:
    """Everything still tagged with the cluster, in every region given."""
    out: list[str] = []
    for r in regions:
        out += [f"{r}: instance {i['InstanceId']} ({tag_of(i, 'mesh:slot')})" for i in instances.find(aws, doc.name, r)]
        out += [f"{r}: security group {g['GroupId']}" for g in _groups(aws, doc.name, r)]
        out += [f"{r}: elastic IP {a.get('PublicIp')}" for a in address.eips(aws, doc.name, r)]
    out += address.leftovers(aws, doc)
    out += roles.leftovers(aws, doc.name)
    for key in SECRETS:
        if _described(aws, doc.spec.main_region, secret_prefix(doc.name) + key) is not None:
            out.append(f"{doc.spec.main_region}: parameter {secret_prefix(doc.name) + key}")
    return out
